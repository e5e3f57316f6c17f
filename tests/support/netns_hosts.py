"""Throwaway SSH "production hosts" (one network namespace + sshd each) for tests, the demo and benchmarks.

Library: ``with netns_ssh_hosts(3, workdir) as hosts: ...`` builds, yields a ``HostSet`` and always
tears down. CLI: ``python -m tests.support.netns_hosts up N --dir DIR`` / ``down --dir DIR``.
Each prefix is claimed in /run/ferry-netns/<prefix>.json, so concurrent runs never share or tear
down each other's hosts; ``cleanup_stale(prefix)`` removes what a dead owner left behind.
Recipe and pitfalls: /work/shared/TESTHOSTS.md sections 2, 3 and 9.5. Needs root and iproute2.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
OWNERS = Path("/run/ferry-netns")  # <prefix>.json: who owns a prefix (tmpfs, gone on reboot)
# No trailing digit, so that prefix "ab" never matches the hosts of prefix "ab1".
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}[a-z]$")
HOST_OFFSET = 10  # host i (1-based) gets subnet address .(10 + i); the bridge gets .1
MAX_HOSTS = 200
STOP_TIMEOUT = 3.0
START_TIMEOUT = 10.0

# Bash sources ~/.bashrc for ssh commands only when it is a top-level shell (SHLVL < 2 after its
# own increment); root's .bashrc here runs `pyenv init` (~130 ms per command), so sshd hands every
# session SHLVL=1. This touches no file and needs no ForceCommand.
QUIET_SHELL_ENV = "SHLVL=1"


class HostsError(RuntimeError):
    """Building, changing or tearing down the test hosts failed."""


class PrefixInUse(HostsError):
    """A live process (or a detached CLI set) owns the hosts of this prefix."""


@dataclass
class NetnsHost:
    """One fake production host: a network namespace with its own sshd."""

    name: str
    ip: str
    namespace: str
    veth: str
    dir: Path
    deploy_root: Path
    sshd_pid: int | None = None

    @property
    def sshd_config(self) -> Path:
        """Path of this host's sshd_config (its path also tags the sshd command line)."""
        return self.dir / "sshd_config"

    @property
    def host_key(self) -> Path:
        """Path of this host's private ed25519 host key."""
        return self.dir / "ssh_host_ed25519_key"


@dataclass
class HostSet:
    """The hosts of one set plus the client key, known_hosts and everything teardown needs."""

    prefix: str
    workdir: Path
    subnet: str
    bridge: str
    key: Path
    known_hosts: Path
    quiet_shell: bool = True
    detached: bool = False
    hosts: list[NetnsHost] = field(default_factory=list)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def host(self, name: str) -> NetnsHost:
        """Return the host called ``name``."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def ssh_options(self) -> list[str]:
        """Return ssh client options: our key and known_hosts only, strict host key checking, no prompts."""
        return [
            "-F", "/dev/null",
            "-i", str(self.key),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5",
        ]  # fmt: skip

    def ssh_argv(self, name: str, *command: str) -> list[str]:
        """Return the argv that runs ``command`` as root on host ``name``."""
        return ["ssh", *self.ssh_options(), f"root@{self.host(name).ip}", *command]

    def rsh(self) -> str:
        """Return the remote shell string for ``rsync -e``."""
        return " ".join(["ssh", *self.ssh_options()])

    def inventory_ini(self, group: str = "prod", extra_vars: dict[str, object] | None = None) -> str:
        """Return an Ansible INI inventory of all hosts in ``group`` with strict host key checking."""
        common = f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes -o BatchMode=yes"
        lines = [f"[{group}]"]
        lines += [f"{h.name} ansible_host={h.ip} deploy_root={h.deploy_root}" for h in self.hosts]
        lines += [
            "",
            f"[{group}:vars]",
            "ansible_user=root",
            f"ansible_ssh_private_key_file={self.key}",
            f"ansible_ssh_common_args='{common}'",
            "ansible_python_interpreter=/usr/bin/python3",
        ]
        for name, value in (extra_vars or {}).items():
            lines.append(f"{name}={value if isinstance(value, str) else repr(value)}")
        return "\n".join(lines) + "\n"

    def start_sshd(self, name: str) -> None:
        """Start host ``name``'s sshd and wait until it listens."""
        host = self.host(name)
        if host.sshd_pid is not None and _is_our_sshd(host.sshd_pid, host):
            raise HostsError(f"{name}: sshd already running (pid {host.sshd_pid})")
        if proc := _spawn_sshd(host, self.detached):
            self._procs[name] = proc
        _wait_listening([host])

    def stop_sshd(self, name: str) -> None:
        """Stop host ``name``'s sshd and its open sessions, so new connections are refused."""
        host = self.host(name)
        _stop_listener(host, self._procs.pop(name, None))
        _kill_netns_pids(host.namespace)

    def rotate_host_key(self, name: str) -> None:
        """Give host ``name`` a new host key that known_hosts does not list, and restart its sshd."""
        host = self.host(name)
        saved = host.host_key.with_suffix(".orig")
        if not saved.exists():
            host.host_key.rename(saved)
            host.host_key.with_suffix(".pub").rename(saved.with_suffix(".orig.pub"))
        else:
            host.host_key.unlink(missing_ok=True)
            host.host_key.with_suffix(".pub").unlink(missing_ok=True)
        _keygen([host.host_key])
        self.stop_sshd(name)
        self.start_sshd(name)

    def restore_host_key(self, name: str) -> None:
        """Put back the host key known_hosts lists after ``rotate_host_key`` and restart sshd."""
        host = self.host(name)
        saved = host.host_key.with_suffix(".orig")
        if not saved.exists():
            return
        saved.replace(host.host_key)
        saved.with_suffix(".orig.pub").replace(host.host_key.with_suffix(".pub"))
        self.stop_sshd(name)
        self.start_sshd(name)

    def teardown(self) -> list[str]:
        """Remove everything this set made, in the order that leaves nothing behind; return problems."""
        problems: list[str] = []
        # 1. listeners, 2. per-connection sshd children (they outlive the listener and keep client
        # ControlPersist masters alive if the veth vanishes first), 3. veths, namespaces, bridge.
        for host in self.hosts:
            _collect(problems, _stop_listener, host, self._procs.pop(host.name, None))
        for host in self.hosts:
            _collect(problems, _kill_netns_pids, host.namespace)
        links = _link_names()
        for host in self.hosts:
            if host.veth in links:
                _collect(problems, _ip, "link", "del", host.veth)
        namespaces = _netns_names()
        for host in self.hosts:
            if host.namespace in namespaces:
                _collect(problems, _ip, "netns", "del", host.namespace)
        if self.bridge in links:
            _collect(problems, _ip, "link", "del", self.bridge)
        if (read_owner(self.prefix) or {}).get("workdir") == str(self.workdir):
            _owner_file(self.prefix).unlink(missing_ok=True)
        return problems

    def to_json(self) -> str:
        """Serialise the set (for the CLI's hosts.json)."""
        data = asdict(self)
        data.pop("_procs")
        return json.dumps(data, indent=2, default=str)

    @classmethod
    def from_json(cls, text: str) -> HostSet:
        """Rebuild a set from ``to_json`` output (sshd processes are then known by PID only)."""
        data = json.loads(text)
        hosts = [
            NetnsHost(**{**h, "dir": Path(h["dir"]), "deploy_root": Path(h["deploy_root"])}) for h in data.pop("hosts")
        ]
        paths = {k: Path(data[k]) for k in ("workdir", "key", "known_hosts")}
        return cls(**{**data, **paths, "detached": True}, hosts=hosts)

    def describe(self) -> str:
        """Return a human-readable summary of the set."""
        lines = [f"bridge {self.bridge} {self.subnet} (prefix {self.prefix}, workdir {self.workdir})"]
        for h in self.hosts:
            lines.append(
                f"  {h.name}: {h.ip} netns={h.namespace} veth={h.veth} "
                f"sshd_pid={h.sshd_pid} deploy_root={h.deploy_root}"
            )
        lines.append(f"  key={self.key} known_hosts={self.known_hosts}")
        return "\n".join(lines)


@contextlib.contextmanager
def netns_ssh_hosts(
    n: int,
    workdir: Path,
    prefix: str = "ferryh",
    subnet: str | None = None,
    quiet_shell: bool = True,
    detach: bool = False,
) -> Iterator[HostSet]:
    """Build ``n`` SSH hosts under ``workdir``, yield their HostSet and tear them down on exit, even on error."""
    hosts = build_hosts(n, workdir, prefix, subnet, quiet_shell, detach)
    try:
        yield hosts
    except BaseException as exc:
        if problems := hosts.teardown():
            exc.add_note(f"netns hosts teardown problems: {problems}")
        raise
    if problems := hosts.teardown():
        raise HostsError(f"netns hosts teardown problems: {problems}")


def build_hosts(
    n: int,
    workdir: Path,
    prefix: str = "ferryh",
    subnet: str | None = None,
    quiet_shell: bool = True,
    detach: bool = False,
) -> HostSet:
    """Build ``n`` SSH hosts and return their HostSet; the caller must call ``teardown()``."""
    _check_args(n, workdir, prefix)
    net = ipaddress.IPv4Network(subnet) if subnet else free_subnet(prefix)
    if net.num_addresses < HOST_OFFSET + n + 2:
        raise ValueError(f"subnet {net} too small for {n} hosts")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _claim(prefix, workdir, detach)
    try:
        _refuse_existing(prefix)
    except HostsError:
        _owner_file(prefix).unlink(missing_ok=True)
        raise
    hostset = HostSet(
        prefix=prefix,
        workdir=workdir,
        subnet=str(net),
        bridge=f"{prefix}br",
        key=workdir / "id_ed25519",
        known_hosts=workdir / "known_hosts",
        quiet_shell=quiet_shell,
        detached=detach,
    )
    for i in range(1, n + 1):
        name = f"{prefix}{i}"
        hostset.hosts.append(
            NetnsHost(
                name=name,
                ip=str(net[HOST_OFFSET + i]),
                namespace=name,
                veth=f"{name}v",
                dir=workdir / name,
                deploy_root=workdir / name / "www",
            )
        )
    try:
        _build(hostset, net, detach)
    except BaseException:
        hostset.teardown()
        raise
    return hostset


def _build(hostset: HostSet, net: ipaddress.IPv4Network, detach: bool) -> None:
    """Create keys, configs, links, namespaces and sshds for every host of ``hostset``."""
    for host in hostset.hosts:
        host.deploy_root.mkdir(parents=True, exist_ok=True)
    for path in [hostset.key, *(h.host_key for h in hostset.hosts)]:
        path.unlink(missing_ok=True)
        path.with_suffix(".pub").unlink(missing_ok=True)
    _keygen([hostset.key, *(h.host_key for h in hostset.hosts)])
    authorized = hostset.workdir / "authorized_keys"
    authorized.write_text(hostset.key.with_suffix(".pub").read_text())
    known = [f"{h.ip} {' '.join(h.host_key.with_suffix('.pub').read_text().split()[:2])}" for h in hostset.hosts]
    hostset.known_hosts.write_text("\n".join(known) + "\n")
    for host in hostset.hosts:
        host.sshd_config.write_text(_sshd_config(host, authorized, hostset.quiet_shell))

    batch = [
        f"link add {hostset.bridge} type bridge",
        f"addr add {net[1]}/{net.prefixlen} dev {hostset.bridge}",
        f"link set {hostset.bridge} up",
    ]
    for host in hostset.hosts:
        batch += [
            f"netns add {host.namespace}",
            f"link add {host.veth} type veth peer name eth0 netns {host.namespace}",
            f"link set {host.veth} master {hostset.bridge} up",
        ]
    _ip("-batch", "-", input="\n".join(batch) + "\n")
    for host in hostset.hosts:
        inside = [
            f"addr add {host.ip}/{net.prefixlen} dev eth0",
            "link set eth0 up",
            "link set lo up",
        ]
        _ip("-n", host.namespace, "-batch", "-", input="\n".join(inside) + "\n")

    for host in hostset.hosts:
        if proc := _spawn_sshd(host, detach):
            hostset._procs[host.name] = proc
    _wait_listening(hostset.hosts)


def _sshd_config(host: NetnsHost, authorized: Path, quiet_shell: bool) -> str:
    """Return the sshd_config text for ``host``."""
    lines = [
        "Port 22",
        f"ListenAddress {host.ip}",
        f"HostKey {host.host_key}",
        f"PidFile {host.dir / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",  # the workdir lives under a world-writable /tmp
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "X11Forwarding no",
        "MaxStartups 100:30:200",
        "MaxSessions 50",
        "Subsystem sftp internal-sftp",
    ]
    if quiet_shell:
        lines.append(f"SetEnv {QUIET_SHELL_ENV}")
    return "\n".join(lines) + "\n"


def _spawn_sshd(host: NetnsHost, detach: bool) -> subprocess.Popen[bytes] | None:
    """Start sshd in ``host``'s namespace on a private /run tmpfs and record its PID."""
    # `ip netns exec` unshares a mount namespace and execs (no fork), `unshare --uts` (own hostname)
    # and `sh` exec too: so the spawned PID is the listener. /run/sshd is sshd's privsep dir.
    script = (
        f'hostname "$1" && mount -t tmpfs -o mode=755 tmpfs /run && mkdir -m 755 /run/sshd && exec {SSHD} -D -e -f "$2"'
    )
    argv = [
        "ip",
        "netns",
        "exec",
        host.namespace,
        "unshare",
        "--uts",
        "sh",
        "-c",
        script,
    ]
    argv += ["sh", host.name, str(host.sshd_config)]
    log = host.dir / "sshd.log"
    (host.dir / "sshd.pid").unlink(missing_ok=True)
    if detach:
        # A bare PID (no Popen object to warn about) in its own session: the CLI can exit.
        host.sshd_pid = os.posix_spawnp(
            argv[0],
            argv,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (
                    os.POSIX_SPAWN_OPEN,
                    1,
                    str(log),
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                    0o644,
                ),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
        return None
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    host.sshd_pid = proc.pid
    return proc


def _wait_listening(hosts: list[NetnsHost]) -> None:
    """Wait until every host's sshd listens on port 22 in its namespace, without connecting."""
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(hosts)
    while pending:
        for host in list(pending):
            assert host.sshd_pid is not None
            if not _alive(host.sshd_pid):
                log = (host.dir / "sshd.log").read_text(errors="replace")[-2000:]
                raise HostsError(f"{host.name}: sshd exited:\n{log}")
            if _listens_on_22(host.sshd_pid):
                pending.remove(host)
        if pending and time.monotonic() > deadline:
            names = [h.name for h in pending]
            raise HostsError(f"sshd not listening after {START_TIMEOUT}s: {names}")
        if pending:
            time.sleep(0.01)


def _listens_on_22(pid: int) -> bool:
    """Return whether process ``pid``'s network namespace has a TCP listener on port 22."""
    try:
        rows = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(r.split()[1].endswith(":0016") and r.split()[3] == "0A" for r in rows)


def _stop_listener(host: NetnsHost, proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate ``host``'s sshd listener (only if that PID is still our sshd) and reap it."""
    pid, host.sshd_pid = host.sshd_pid, None
    if proc is not None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    if pid is not None and _is_our_sshd(pid, host):
        _terminate_pids([pid])


def _is_our_sshd(pid: int, host: NetnsHost) -> bool:
    """Return whether ``pid`` is a live process started with ``host``'s sshd_config (guards PID reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return str(host.sshd_config) in cmdline and _alive(pid)


def _alive(pid: int) -> bool:
    """Return whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _terminate_pids(pids: list[int]) -> None:
    """SIGTERM ``pids``, wait up to STOP_TIMEOUT, then SIGKILL what is left; reap our own."""
    left = list(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(_alive(p) for p in left) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not (left := [p for p in left if _alive(p)]):
            break
    for pid in pids:  # zombies of our own children (detached sshds) are ours to reap
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    if left:
        raise HostsError(f"processes survived SIGKILL: {left}")


def _kill_netns_pids(namespace: str) -> None:
    """Kill every process inside ``namespace`` (per-connection sshd children outlive the listener)."""
    if namespace not in _netns_names():
        return
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False).stdout
    pids = [int(p) for p in out.split() if p.isdigit() and _alive(int(p))]
    if pids:
        _terminate_pids(pids)


def _keygen(paths: list[Path]) -> None:
    """Generate passphrase-less ed25519 keys at ``paths`` in parallel."""
    procs = [
        subprocess.Popen(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", p.name, "-f", str(p)],
            stdin=subprocess.DEVNULL,
        )
        for p in paths
    ]
    if any(p.wait() for p in procs):
        raise HostsError("ssh-keygen failed")


def _ip(*args: str, input: str | None = None) -> str:
    """Run ``ip`` with ``args`` and return its stdout; raise HostsError with its stderr on failure."""
    proc = subprocess.run(["ip", *args], input=input, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise HostsError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _link_names() -> set[str]:
    """Return the names of all links in the root namespace."""
    return {link["ifname"] for link in json.loads(_ip("-j", "link", "show") or "[]")}


def _netns_names() -> set[str]:
    """Return the names of all named network namespaces."""
    return {line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()}


def _collect(problems: list[str], func: object, *args: object) -> None:
    """Call ``func(*args)`` and record its error in ``problems`` instead of raising."""
    try:
        func(*args)  # type: ignore[operator]
    except (
        HostsError,
        OSError,
        subprocess.SubprocessError,
    ) as exc:  # go on with the rest
        problems.append(f"{getattr(func, '__name__', func)}{args}: {exc}")


def _check_args(n: int, workdir: Path, prefix: str) -> None:
    """Reject arguments that would give clashing names or unquotable inventory values."""
    if not PREFIX_RE.match(prefix):
        raise ValueError(f"prefix {prefix!r}: 2-9 chars [a-z0-9], starting and ending with a letter")
    if not 1 <= n <= MAX_HOSTS:
        raise ValueError(f"n={n}: between 1 and {MAX_HOSTS}")
    if re.search(r"\s|'", str(workdir)):
        raise ValueError(f"workdir {workdir} must not contain whitespace or quotes (inventory values)")


def _refuse_existing(prefix: str) -> None:
    """Refuse to build when names with ``prefix`` exist: a live set or a crashed run's leftovers."""
    pattern = re.compile(rf"^{prefix}(\d+v?|br)$")
    taken = sorted(x for x in _netns_names() | _link_names() if pattern.match(x))
    if taken:
        raise HostsError(
            f"{taken} already exist; if no other run uses prefix {prefix!r}, remove them with "
            f"cleanup_stale({prefix!r}) or `python -m tests.support.netns_hosts cleanup --prefix {prefix}`"
        )


def free_subnet(prefix: str) -> ipaddress.IPv4Network:
    """Return a 10.250.X.0/24 derived from ``prefix`` that no root-namespace address overlaps."""
    used = [
        ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
        for link in json.loads(_ip("-j", "-4", "addr", "show") or "[]")
        for a in link.get("addr_info", [])
    ]
    start = zlib.crc32(prefix.encode()) % 254
    for step in range(254):
        net = ipaddress.IPv4Network(f"10.250.{1 + (start + step) % 254}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise HostsError("no free /24 in 10.250.0.0/16")


def _listeners(prefix: str) -> list[int]:
    """Return the PIDs of live sshd listeners started for hosts named ``prefix<i>``."""
    # Our listeners carry "<workdir>/<prefix><i>/sshd_config" on their command line.
    cfg_re = re.compile(rf"{SSHD} -D -e -f \S*/{prefix}\d+/sshd_config")
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if entry.name.isdigit() and cfg_re.search(cmdline) and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def _owner_file(prefix: str) -> Path:
    """Return the path of ``prefix``'s owner record."""
    return OWNERS / f"{prefix}.json"


def read_owner(prefix: str) -> dict[str, object] | None:
    """Return ``prefix``'s owner record ({pid, detached, workdir}), or None."""
    try:
        return json.loads(_owner_file(prefix).read_text())
    except (OSError, ValueError):
        return None


def live_owner(prefix: str) -> int | None:
    """Return the PID owning ``prefix`` if it is alive (0 for a detached CLI set), else None."""
    owner = read_owner(prefix)
    if owner is None:
        return None
    pid = int(owner["pid"])  # type: ignore[call-overload]
    if owner.get("detached"):
        return 0  # a CLI `up` set lives until `down`
    return pid if _alive(pid) else None


def _claim(prefix: str, workdir: Path, detach: bool) -> None:
    """Atomically record this process as ``prefix``'s owner; raise if someone else holds it."""
    OWNERS.mkdir(mode=0o700, exist_ok=True)
    record = json.dumps({"pid": os.getpid(), "detached": detach, "workdir": str(workdir)})
    try:
        with open(_owner_file(prefix), "x") as f:  # O_EXCL: two runs cannot both win
            f.write(record)
    except FileExistsError:
        owner = live_owner(prefix)
        if owner is not None:
            who = "a detached CLI set" if owner == 0 else f"live process {owner}"
            raise PrefixInUse(f"prefix {prefix!r} is in use by {who}") from None
        raise HostsError(
            f"prefix {prefix!r}: leftovers of a dead run ({_owner_file(prefix)}); "
            f"run cleanup_stale({prefix!r}) or `python -m tests.support.netns_hosts "
            f"cleanup --prefix {prefix}`"
        ) from None


def cleanup_stale(prefix: str, force: bool = False) -> list[str]:
    """Remove a dead run's sshds, sessions, veths, namespaces and bridge for ``prefix``; return what went."""
    if not PREFIX_RE.match(prefix):
        raise ValueError(f"bad prefix {prefix!r}")
    if not force and (owner := live_owner(prefix)) is not None:
        who = "a detached CLI set (use force)" if owner == 0 else f"live process {owner}"
        raise PrefixInUse(f"prefix {prefix!r} is in use by {who}")
    removed: list[str] = []
    if pids := _listeners(prefix):
        _terminate_pids(pids)
        removed += [f"sshd pid {p}" for p in pids]
    namespaces = sorted(ns for ns in _netns_names() if re.match(rf"^{prefix}\d+$", ns))
    for ns in namespaces:
        _kill_netns_pids(ns)
    links = _link_names()
    for link in sorted(x for x in links if re.match(rf"^{prefix}\d+v$", x)):
        _ip("link", "del", link)
        removed.append(f"veth {link}")
    for ns in namespaces:
        _ip("netns", "del", ns)
        removed.append(f"netns {ns}")
    if f"{prefix}br" in links:
        _ip("link", "del", f"{prefix}br")
        removed.append(f"bridge {prefix}br")
    if _owner_file(prefix).exists():
        _owner_file(prefix).unlink()
        removed.append(f"owner record {_owner_file(prefix)}")
    return removed


def measure_ssh_latency(hostset: HostSet, name: str, runs: int = 10) -> float:
    """Return the median wall time in seconds of ``ssh host true`` (a fresh connection each time)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(hostset.ssh_argv(name, "true"), check=True, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cmd_up(args: argparse.Namespace) -> int:
    """Build hosts, write inventory.ini and hosts.json, leave them running."""
    workdir = Path(args.dir).resolve()
    hostset = build_hosts(args.n, workdir, args.prefix, args.subnet, not args.no_quiet_shell, detach=True)
    (workdir / "hosts.json").write_text(hostset.to_json())
    (workdir / "inventory.ini").write_text(hostset.inventory_ini())
    print(hostset.describe())
    print(f"wrote {workdir / 'inventory.ini'} and {workdir / 'hosts.json'}; stop with: down --dir {workdir}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    """Tear down the hosts recorded in DIR/hosts.json."""
    state = Path(args.dir).resolve() / "hosts.json"
    hostset = HostSet.from_json(state.read_text())
    problems = hostset.teardown()
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"removed {len(hostset.hosts)} hosts, bridge {hostset.bridge} (prefix {hostset.prefix})")
    state.rename(state.with_suffix(".json.down"))
    return 1 if problems else 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove leftovers of a crashed run."""
    removed = cleanup_stale(args.prefix, args.force)
    print("\n".join(removed) if removed else f"nothing left with prefix {args.prefix}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """Time setup/teardown for each N and the per-command ssh latency with and without the bashrc fix."""
    workdir = Path(args.dir).resolve()
    for n in args.sizes:
        for quiet in (True, False):
            t0 = time.perf_counter()
            hostset = build_hosts(n, workdir / f"n{n}-{quiet}", args.prefix, quiet_shell=quiet)
            setup = time.perf_counter() - t0
            try:
                latency = measure_ssh_latency(hostset, hostset.hosts[0].name, args.runs)
            finally:
                t0 = time.perf_counter()
                hostset.teardown()
                down = time.perf_counter() - t0
            print(
                f"n={n:3d} quiet_shell={quiet!s:5}: setup {setup:.2f}s teardown {down:.2f}s "
                f"ssh true median {latency * 1000:.0f} ms"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.netns_hosts", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build N hosts and leave them running")
    up.add_argument("n", type=int)
    up.add_argument("--dir", required=True)
    up.add_argument("--prefix", default="ferryh")
    up.add_argument("--subnet", help="e.g. 10.250.7.0/24 (default: derived from prefix)")
    up.add_argument(
        "--no-quiet-shell",
        action="store_true",
        help="let ssh commands source ~/.bashrc",
    )
    up.set_defaults(func=_cmd_up)
    down = sub.add_parser("down", help="tear down the hosts in DIR/hosts.json")
    down.add_argument("--dir", required=True)
    down.set_defaults(func=_cmd_down)
    cleanup = sub.add_parser("cleanup", help="remove leftovers of a crashed run with PREFIX")
    cleanup.add_argument("--prefix", default="ferryh")
    cleanup.add_argument("--force", action="store_true", help="even if a live process owns it")
    cleanup.set_defaults(func=_cmd_cleanup)
    bench = sub.add_parser("bench", help="time setup and ssh latency")
    bench.add_argument("--dir", required=True)
    bench.add_argument("--prefix", default="ferryb")
    bench.add_argument("--sizes", type=int, nargs="+", default=[3, 10])
    bench.add_argument("--runs", type=int, default=10)
    bench.set_defaults(func=_cmd_bench)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (HostsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
