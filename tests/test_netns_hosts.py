"""Tests for the netns SSH test hosts: real sshd, real ssh/rsync, no mocks."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.hosts_fixture import claim_prefix, require_netns_hosts
from tests.support.netns_hosts import (
    HostSet,
    NetnsHost,
    build_hosts,
    cleanup_stale,
    netns_ssh_hosts,
)

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def ssh(hosts: HostSet, name: str, *command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` on host ``name`` with strict host key checking and return the result."""
    argv = hosts.ssh_argv(name, *command)
    assert "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    return subprocess.run(
        argv,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def leftovers(prefix: str) -> list[str]:
    """Return namespaces, links and live processes that still carry ``prefix``."""
    name = re.compile(rf"^{prefix}(\d+v?|br)$")
    namespaces = subprocess.check_output(["ip", "netns", "list"], text=True).split()
    found = [f"netns {ns}" for ns in namespaces if name.match(ns)]
    links = json.loads(subprocess.check_output(["ip", "-j", "link", "show"], text=True))
    found += [f"link {x['ifname']}" for x in links if name.match(x["ifname"])]
    ps = subprocess.check_output(["ps", "-ww", "-eo", "pid=,stat=,args="], text=True)
    # Zombies (stat Z) are dead; PID 1 on this machine reaps them late (TESTHOSTS pitfall 6).
    in_dir = re.compile(rf"/{prefix}\d+/")
    found += [f"process {line}" for line in ps.splitlines() if in_dir.search(line) and line.split()[1][0] != "Z"]
    return found


def alive(pid: int) -> bool:
    """Return whether ``pid`` runs and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def netns_pids(namespace: str) -> list[int]:
    """Return the PIDs inside ``namespace``."""
    return [int(p) for p in subprocess.check_output(["ip", "netns", "pids", namespace], text=True).split()]


def test_inventory_ini_lists_hosts_with_strict_ssh_settings(tmp_path: Path) -> None:
    """The INI inventory has one line per host and pins key, known_hosts and strict checking."""
    hosts = HostSet(
        prefix="ferryx",
        workdir=tmp_path,
        subnet="10.250.9.0/24",
        bridge="ferryxbr",
        key=tmp_path / "id_ed25519",
        known_hosts=tmp_path / "known_hosts",
        hosts=[
            NetnsHost("ferryx1", "10.250.9.11", "ferryx1", "ferryx1v", tmp_path / "ferryx1", tmp_path / "ferryx1/www")
        ],
    )
    ini = hosts.inventory_ini("web", {"release_tag": "7", "keep": 5})
    assert f"[web]\nferryx1 ansible_host=10.250.9.11 deploy_root={tmp_path}/ferryx1/www\n" in ini
    assert f"ansible_ssh_private_key_file={tmp_path}/id_ed25519\n" in ini
    assert (
        f"ansible_ssh_common_args='-o UserKnownHostsFile={tmp_path}/known_hosts "
        "-o StrictHostKeyChecking=yes -o BatchMode=yes'" in ini
    )
    assert "ansible_user=root\n" in ini and "ansible_python_interpreter=/usr/bin/python3\n" in ini
    assert "[web:vars]" in ini and "release_tag=7\n" in ini and "keep=5\n" in ini


def test_each_host_answers_over_ssh_with_its_own_name(ssh_hosts: HostSet) -> None:
    """ssh with the generated key and known_hosts reaches every host, and each is its own host."""
    assert len(ssh_hosts.hosts) == 3
    for host in ssh_hosts.hosts:
        result = ssh(ssh_hosts, host.name, "hostname; echo ok")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [host.name, "ok"]


def test_ssh_commands_do_not_source_roots_bashrc(ssh_hosts: HostSet) -> None:
    """The quiet-shell setting keeps root's ~/.bashrc (pyenv init) out of ssh commands."""
    result = ssh(ssh_hosts, ssh_hosts.hosts[0].name, "echo $PATH")
    assert result.returncode == 0, result.stderr
    assert "pyenv" not in result.stdout


def test_rsync_over_ssh_writes_into_each_deploy_root(ssh_hosts: HostSet, tmp_path: Path) -> None:
    """rsync -e ssh (strict host keys) puts a file into every host's deploy_root."""
    src = tmp_path / "release"
    src.mkdir()
    (src / "index.html").write_text("release 1\n")
    for host in ssh_hosts.hosts:
        dest = f"root@{host.ip}:{host.deploy_root}/"
        result = subprocess.run(
            ["rsync", "-a", "-e", ssh_hosts.rsh(), f"{src}/", dest],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert (host.deploy_root / "index.html").read_text() == "release 1\n"


def test_stopped_sshd_refuses_connections_until_started(ssh_hosts: HostSet) -> None:
    """stop_sshd makes a host refuse connections; start_sshd brings it back."""
    name = ssh_hosts.hosts[1].name
    ssh_hosts.stop_sshd(name)
    try:
        down = ssh(ssh_hosts, name, "true")
        assert down.returncode == 255
        assert "Connection refused" in down.stderr
    finally:
        ssh_hosts.start_sshd(name)
    assert ssh(ssh_hosts, name, "echo ok").stdout == "ok\n"


def test_changed_host_key_is_refused_until_restored(ssh_hosts: HostSet) -> None:
    """A host key that known_hosts does not list is refused; restoring the old key works again."""
    name = ssh_hosts.hosts[2].name
    ssh_hosts.rotate_host_key(name)
    try:
        refused = ssh(ssh_hosts, name, "true")
        assert refused.returncode == 255
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr
        assert "Host key verification failed" in refused.stderr
    finally:
        ssh_hosts.restore_host_key(name)
    assert ssh(ssh_hosts, name, "echo ok").stdout == "ok\n"


def test_inventory_works_with_ansible(ssh_hosts: HostSet, tmp_path: Path) -> None:
    """Ansible reaches all hosts through inventory_ini() with strict host key checking."""
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(ssh_hosts.inventory_ini())
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "ANSIBLE_HOME": str(tmp_path / "ansible"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible/tmp"),
        "ANSIBLE_REMOTE_TMP": str(tmp_path / "ansible/remote"),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
    }
    result = subprocess.run(
        [
            str(VENV_BIN / "ansible"),
            "prod",
            "-i",
            str(inventory),
            "-m",
            "ansible.builtin.command",
            "-a",
            "cat /etc/hostname",
            "-o",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for host in ssh_hosts.hosts:
        assert f"{host.name} | CHANGED" in result.stdout


@pytest.mark.ssh
@pytest.mark.integration
@pytest.mark.parametrize("body_raises", [False, True])
def test_context_exit_leaves_nothing_behind(tmp_path: Path, body_raises: bool) -> None:
    """After the context exits (even by an exception) no namespace, link, sshd or session remains."""
    require_netns_hosts()
    prefix = claim_prefix("ferryz")
    control = tmp_path / "cm"
    expect_error = pytest.raises(RuntimeError) if body_raises else contextlib.nullcontext()
    with expect_error, netns_ssh_hosts(2, tmp_path / "hosts", prefix=prefix) as hosts:
        # A ControlPersist master keeps a session sshd alive after the listener dies (pitfall 5).
        argv = hosts.ssh_argv(hosts.hosts[0].name, "true")
        opts = [
            "-o",
            "ControlMaster=yes",
            "-o",
            f"ControlPath={control}",
            "-o",
            "ControlPersist=60",
        ]
        subprocess.run(
            [argv[0], *opts, *argv[1:]],
            check=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        inside = netns_pids(hosts.hosts[0].namespace)
        listeners = [h.sshd_pid for h in hosts.hosts]
        assert len(inside) >= 2
        if body_raises:
            raise RuntimeError("body failed")
    assert leftovers(prefix) == []
    assert not [p for p in [*inside, *listeners] if p is not None and alive(p)]
    assert not control.exists()  # the client's mux master saw its connection close and exited


@pytest.mark.ssh
@pytest.mark.integration
def test_cleanup_stale_removes_a_crashed_runs_leftovers(tmp_path: Path) -> None:
    """cleanup_stale removes a SIGKILLed run's sshds, namespaces and links, never a live run's."""
    require_netns_hosts()
    prefix = claim_prefix("ferrys")
    crash = (
        "import os, sys; from pathlib import Path; "
        "from tests.support.netns_hosts import build_hosts; "
        "build_hosts(2, Path(sys.argv[1]), prefix=sys.argv[2]); os.kill(os.getpid(), 9)"
    )
    argv = [sys.executable, "-c", crash, str(tmp_path / "crashed"), prefix]
    killed = subprocess.run(argv, cwd=REPO, check=False, timeout=60)
    assert killed.returncode == -9
    assert len(leftovers(prefix)) >= 7  # 2 netns, 2 veths, bridge, 2 sshd listeners
    with pytest.raises(RuntimeError, match="leftovers of a dead run"):
        build_hosts(1, tmp_path / "again", prefix=prefix)
    removed = cleanup_stale(prefix)
    assert f"bridge {prefix}br" in removed and len(removed) >= 7
    assert leftovers(prefix) == []


@pytest.mark.ssh
@pytest.mark.integration
def test_cleanup_stale_refuses_a_live_runs_hosts(tmp_path: Path) -> None:
    """cleanup_stale leaves hosts alone while the process that built them is alive."""
    require_netns_hosts()
    prefix = claim_prefix("ferryo")
    with netns_ssh_hosts(1, tmp_path, prefix=prefix) as hosts:
        with pytest.raises(RuntimeError, match=f"in use by live process {os.getpid()}"):
            cleanup_stale(prefix)
        assert ssh(hosts, hosts.hosts[0].name, "echo ok").stdout == "ok\n"
    assert leftovers(prefix) == []


@pytest.mark.ssh
@pytest.mark.integration
def test_cli_up_then_down_round_trip(tmp_path: Path) -> None:
    """`up` builds detached hosts and exits, `down` removes everything it recorded."""
    require_netns_hosts()
    cli = [sys.executable, "-m", "tests.support.netns_hosts"]
    run = {"cwd": REPO, "check": False, "capture_output": True, "text": True, "timeout": 60}
    for _ in range(3):  # another session may claim the same prefix between check and `up`
        prefix = claim_prefix("ferryc")
        # capture_output: the CLI's pipes must close although the sshds keep running (detach).
        up = subprocess.run([*cli, "up", "2", "--dir", str(tmp_path), "--prefix", prefix], **run)
        if "is in use by" not in up.stderr:
            break
    assert up.returncode == 0, up.stderr
    try:
        assert f"{prefix}1: " in up.stdout and f"{prefix}2: " in up.stdout
        hosts = HostSet.from_json((tmp_path / "hosts.json").read_text())
        assert (tmp_path / "inventory.ini").read_text() == hosts.inventory_ini()
        for host in hosts.hosts:
            assert ssh(hosts, host.name, "hostname").stdout == f"{host.name}\n"
    finally:
        down = subprocess.run([*cli, "down", "--dir", str(tmp_path)], **run)
    assert down.returncode == 0, down.stderr
    assert leftovers(prefix) == []
