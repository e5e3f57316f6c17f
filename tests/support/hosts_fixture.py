"""Pytest plugin: the session-scoped ``ssh_hosts`` fixture (3 netns SSH hosts) and the ssh/integration markers."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.netns_hosts import (
    HostSet,
    PrefixInUse,
    cleanup_stale,
    live_owner,
    netns_ssh_hosts,
)

SESSION_PREFIX = "ferryt"
SSH_FIXTURES = {"ssh_hosts"}
_skipped_because: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers that tests needing the SSH hosts carry."""
    config.addinivalue_line("markers", "ssh: needs the netns SSH test hosts (root, ip netns, sshd)")
    config.addinivalue_line("markers", "integration: talks to real services or processes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses ``ssh_hosts`` as ``ssh`` and ``integration`` (for ``-m``)."""
    for item in items:
        if SSH_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ssh)
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print a banner when SSH tests were skipped, so a skip never goes unnoticed."""
    if _skipped_because:
        terminalreporter.write_sep(
            "!",
            f"SSH TESTS SKIPPED ({_skipped_because[0]}): run as root with `ip netns`",
            red=True,
            bold=True,
        )


def in_ci() -> bool:
    """Return whether we run under CI (env ``CI`` set to anything but empty/0/false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def netns_unavailable_reason() -> str | None:
    """Return why the netns SSH hosts cannot be built here, or None when they can."""
    if os.geteuid() != 0:
        return "not root"
    missing = [t for t in ("ip", "ssh", "ssh-keygen", "rsync", "unshare") if not shutil.which(t)]
    if not os.path.exists("/usr/sbin/sshd"):
        missing.append("/usr/sbin/sshd (apt-get install openssh-server)")
    if missing:
        return f"missing: {', '.join(missing)}"
    probe = f"ferryprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], check=False, capture_output=True, text=True)
    if made.returncode:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True)
    return None


def require_netns_hosts() -> None:
    """Skip loudly when the SSH hosts cannot be built, but fail under CI so it never skips silently."""
    reason = netns_unavailable_reason()
    if reason is None:
        return
    message = f"SSH TEST HOSTS UNAVAILABLE ({reason}): these tests need root and `ip netns`"
    if in_ci():
        pytest.fail(f"{message}; CI must run them", pytrace=False)
    _skipped_because.append(reason)
    pytest.skip(message)


def claim_prefix(base: str) -> str:
    """Return ``base`` or ``base`` + a letter that no live run owns, with a dead run's leftovers removed."""
    # Engineers share this machine: never tear down another live session's hosts.
    for prefix in [base, *(base + c for c in "abcdefgh")]:
        if live_owner(prefix) is None:
            with contextlib.suppress(PrefixInUse):  # lost a race: try the next one
                cleanup_stale(prefix)
                return prefix
    raise PrefixInUse(f"all prefixes {base}[a-h] are in use by live runs")


@pytest.fixture(scope="session")
def ssh_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostSet]:
    """Yield 3 SSH hosts (netns + sshd) for the whole session, clearing a crashed run's leftovers first."""
    require_netns_hosts()
    workdir = tmp_path_factory.mktemp("ssh_hosts")
    with contextlib.ExitStack() as stack:
        for _ in range(3):
            prefix = claim_prefix(SESSION_PREFIX)
            try:
                hosts = stack.enter_context(netns_ssh_hosts(3, workdir, prefix=prefix))
                break
            except PrefixInUse:  # another session claimed it between check and build
                continue
        else:
            raise PrefixInUse(f"could not claim a {SESSION_PREFIX}* prefix")
        yield hosts
