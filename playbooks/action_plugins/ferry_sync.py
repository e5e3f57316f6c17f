"""Ansible action plugin: stage / switch / prune one release on one host, pushing with rsync from the controller."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.action import ActionBase

MAX_MSG = 2048
MAX_SAMPLE = 50
EXCLUDES = ["--exclude=.git", "--exclude=.svn"]
# rsync exits 255 when ssh fails, but 12 ("error in rsync protocol data stream") when ssh dies under it.
UNREACHABLE_RC = {255, 12, 10}
UNREACHABLE_ERR = re.compile(
    r"ssh: |connection unexpectedly closed|Connection (refused|timed out|reset|closed)|"
    r"No route to host|Could not resolve|Host key verification failed|Permission denied \(publickey",
)


class SyncError(Exception):
    """A step failed on this host; unreachable says whether the host could not be reached at all."""

    def __init__(self, msg: str, unreachable: bool = False) -> None:
        """Keep the message and the kind of failure."""
        super().__init__(msg)
        self.unreachable = unreachable


def _q(path: str) -> str:
    """Quote a path for the remote POSIX shell."""
    return shlex.quote(path)


class Host:
    """How to reach one inventory host: shell commands through the connection, rsync with a matching ssh."""

    def __init__(self, action: ActionBase, task_vars: dict) -> None:
        """Read the connection's settings."""
        self.action = action
        conn = action._connection
        self.local = "local" in (getattr(conn, "transport", "") or "") or getattr(conn, "_load_name", "").endswith(
            "local"
        )
        self.name = task_vars.get("inventory_hostname", "?")
        self.rsh = None if self.local else self._build_rsh(task_vars)

    def _opt(self, name: str):
        """Return a connection option, or None when the plugin has no such option."""
        try:
            return self.action._connection.get_option(name)
        except KeyError:
            return None

    def _build_rsh(self, task_vars: dict) -> str:
        """Build rsync's --rsh from the same ssh options Ansible uses, so masters and host keys are shared."""
        host = self._opt("host") or task_vars.get("ansible_host") or self.name
        args = [self._opt("ssh_executable") or "ssh", "-o", "BatchMode=yes"]
        for name in ("ssh_args", "ssh_common_args", "ssh_extra_args"):
            args += shlex.split(self._opt(name) or "")
        if self._opt("host_key_checking") is False:
            args += ["-o", "StrictHostKeyChecking=no"]
        if self._opt("port"):
            args += ["-o", f"Port={self._opt('port')}"]
        if self._opt("private_key_file"):
            args += [
                "-o",
                f"IdentityFile={os.path.expanduser(self._opt('private_key_file'))}",
            ]
        if self._opt("remote_user"):
            args += ["-o", f"User={self._opt('remote_user')}"]
        args += ["-o", f"ConnectTimeout={self._opt('timeout') or 10}"]
        if not any(a.startswith("ControlPath=") for a in args) and any("ControlPersist" in a for a in args):
            # Same socket as Ansible's own ssh, built the way its ssh plugin builds it: control_path, or by
            # default a 10-hex hash of host-port-user (short, so a long control_path_dir still fits the
            # 108-byte unix socket limit, which %C's 40 hex characters overflowed).
            cpdir = os.path.expanduser(self._opt("control_path_dir") or "~/.ansible/cp")
            os.makedirs(cpdir, mode=0o700, exist_ok=True)
            cp = self._opt("control_path")
            make = getattr(type(self.action._connection), "_create_control_path", None)
            if not cp:
                cp = make(host, self._opt("port"), self._opt("remote_user")) if make else "%(directory)s/%%C"
            args += ["-o", "ControlPath=" + cp % {"directory": cpdir}]
        self.host = host
        return shlex.join(args)

    def dest(self, path: str) -> str:
        """Return an rsync destination for a path on this host."""
        return path if self.local else f"{self.host}:{path}"

    def sh(self, script: str) -> str:
        """Run a shell script on the host; return stdout or raise SyncError with its stderr."""
        try:
            res = self.action._low_level_execute_command(script, sudoable=False)
        except AnsibleConnectionFailure as exc:
            raise SyncError(str(exc)[:MAX_MSG], unreachable=True) from exc
        if res.get("rc") != 0:
            if not self.local and res.get("rc") == 255:
                raise SyncError((res.get("stderr") or "ssh failed")[:MAX_MSG], unreachable=True)
            msg = (res.get("stderr") or res.get("stdout") or f"rc {res.get('rc')}").strip()
            raise SyncError(msg[-MAX_MSG:])
        return res.get("stdout") or ""

    def rsync(self, args: list[str]) -> list[str]:
        """Run rsync on the controller; return its itemized change lines."""
        argv = ["rsync", "-a", "--out-format=%i %n%L", *args]
        if self.rsh:
            argv[1:1] = ["--rsh", self.rsh]
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            err = (proc.stderr.strip() or proc.stdout.strip())[-MAX_MSG:]
            unreachable = not self.local and proc.returncode in UNREACHABLE_RC and bool(UNREACHABLE_ERR.search(err))
            raise SyncError(f"rsync failed (rc {proc.returncode}): {err}", unreachable=unreachable)
        return [ln for ln in proc.stdout.splitlines() if ln]


ITEM_FILE = re.compile(r"^(\*deleting |[<>ch.][fLDS])")


def _count_changes(lines: list[str]) -> int:
    """Count changed or deleted files; directory updates and rsync's notices do not count."""
    return sum(1 for ln in lines if ITEM_FILE.match(ln) and not ln.endswith("/"))


class ActionModule(ActionBase):
    """Run one release step (op=stage|switch|prune) for the current host."""

    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        """Dispatch on op and turn SyncError into failed / unreachable results."""
        result = super().run(tmp, task_vars)
        args = self._task.args
        op = args.get("op")
        try:
            host = Host(self, task_vars or {})
            root = str(args["deploy_root"]).rstrip("/") or "/"
            version = int(args["version"]) if op != "prune" or args.get("version") else 0
            only = [str(h) for h in args.get("stage_hosts") or []]
            if op == "stage" and only and host.name not in only:
                # A retry re-stages only the hosts that failed; this one already holds releases/N.
                out = {
                    "version": version,
                    "skipped": True,
                    "msg": "already staged by the failed run",
                    "changed_files": 0,
                }
            elif op == "stage":
                out = self._stage(host, root, version, args)
            elif op == "switch":
                out = self._switch(host, root, version)
            elif op == "prune":
                out = self._prune(host, root, args)
            else:
                return {
                    **result,
                    "failed": True,
                    "msg": f"ferry_sync: unknown op {op!r}",
                }
        except SyncError as exc:
            if exc.unreachable:
                # No rc key: an rc would make Ansible count the host as failed, not unreachable.
                return {**result, "unreachable": True, "msg": str(exc)}
            return {**result, "failed": True, "msg": str(exc)}
        except (KeyError, ValueError, TypeError) as exc:
            return {
                **result,
                "failed": True,
                "msg": f"ferry_sync: bad arguments: {exc!r}",
            }
        n = out.get("changed_files", 0)
        result.update(
            changed=bool(out.pop("changed", False) or n),
            msg=out.pop("msg", ""),
            ferry_changed_files=n,
            ferry={"sync": {host.name: {op: out}}},
        )
        return result

    def _stage(self, host: Host, root: str, version: int, args: dict) -> dict:
        """Rsync release_dir to releases/N (atomic, hard-linked to the live release) or straight into root."""
        src = str(args["release_dir"]).rstrip("/") + "/"
        if not os.path.isdir(src):
            raise SyncError(f"release_dir {src} does not exist on the controller")
        mode = args.get("mode", "atomic")
        if mode == "inplace":
            host.sh(f"mkdir -p {_q(root)}")
            lines = host.rsync(["--delete", *EXCLUDES, src, host.dest(root + "/")])
            return self._stage_result(version, None, lines, f"{root}/")
        if mode != "atomic":
            raise SyncError(f"unknown mode {mode!r}")
        shared = [p.strip("/") for p in args.get("shared_paths") or [] if p.strip("/")]
        rel = f"{root}/releases/{version}"
        # One round trip: create the layout, report the live release and which shared paths are missing.
        probe = [f"mkdir -p {_q(root + '/releases')} {_q(root + '/shared')} || exit 1"]
        probe.append(f"echo live=$(readlink {_q(root + '/current')} 2>/dev/null)")
        for p in shared:
            probe.append(f"mkdir -p {_q(os.path.dirname(f'{root}/shared/{p}'))} || exit 1")
            probe.append(f"[ -e {_q(f'{root}/shared/{p}')} ] || [ -L {_q(f'{root}/shared/{p}')} ] || echo missing={p}")
        out = host.sh("\n".join(probe))
        m = re.search(r"^live=(?:.*/)?(\d+)/?$", out, re.MULTILINE)
        live = int(m.group(1)) if m else None
        missing = re.findall(r"^missing=(.+)$", out, re.MULTILINE)
        rsync_args = ["--delete", *EXCLUDES, *[f"--exclude=/{p}" for p in shared]]
        if live is not None and live != version:
            rsync_args.append(f"--link-dest={root}/releases/{live}")
        lines = host.rsync([*rsync_args, src, host.dest(rel + "/")])
        linked = self._link_shared(host, root, rel, shared, missing, src) if shared else False
        res = self._stage_result(version, live, lines, rel)
        res["changed"] = linked
        return res

    def _link_shared(
        self,
        host: Host,
        root: str,
        rel: str,
        shared: list[str],
        missing: list[str],
        src: str,
    ) -> bool:
        """Seed missing shared paths from the release once, then symlink each into the release."""
        for p in missing:
            if os.path.lexists(src + p):
                # Seed from the release tree (e.g. a default config); never overwritten afterwards.
                host.rsync(
                    [
                        *EXCLUDES,
                        src + p,
                        host.dest(os.path.dirname(f"{root}/shared/{p}") + "/"),
                    ]
                )
        script = []
        for p in shared:
            target, link = f"{root}/shared/{p}", f"{rel}/{p}"
            script.append(f"[ -e {_q(target)} ] || mkdir -p {_q(target)} || exit 1")
            script.append(
                f"[ -L {_q(link)} ] || {{ rm -rf {_q(link)} && mkdir -p {_q(os.path.dirname(link))} && "
                f"ln -s {_q(target)} {_q(link)} && echo linked; }} || exit 1"
            )
        return "linked" in host.sh("\n".join(script))

    @staticmethod
    def _stage_result(version: int, live: int | None, lines: list[str], dest: str) -> dict:
        """Summarise an rsync run for the event / DB."""
        n = _count_changes(lines)
        return {
            "version": version,
            "live_before": live,
            "dest": dest,
            "changed_files": n,
            "sample": lines[:MAX_SAMPLE],
            "msg": f"staged v{version} to {dest}: {n} changed file(s)",
        }

    def _switch(self, host: Host, root: str, version: int) -> dict:
        """Point current at releases/N with ln -s + mv -T (an atomic rename, never rm + ln)."""
        tmp, cur = f"{root}/.current.tmp-{version}", f"{root}/current"
        script = f"""
[ -d {_q(f"{root}/releases/{version}")} ] || {{ echo "releases/{version} is not staged" >&2; exit 1; }}
if [ -e {_q(cur)} ] && [ ! -L {_q(cur)} ]; then echo "{cur} exists and is not a symlink" >&2; exit 1; fi
echo old=$(readlink {_q(cur)} 2>/dev/null)
rm -f {_q(tmp)} && ln -s releases/{version} {_q(tmp)} && mv -T {_q(tmp)} {_q(cur)} || exit 1
"""
        # strip(): Ansible appends "&& sleep 0" to the command, which must not start a line.
        out = host.sh(script.strip())
        m = re.search(r"^old=(.*)$", out, re.MULTILINE)
        old = (m.group(1).strip() if m else "") or None
        return {
            "version": version,
            "previous": old,
            "changed": old != f"releases/{version}",
            "msg": f"current -> releases/{version} (was {old or 'none'})",
        }

    def _prune(self, host: Host, root: str, args: dict) -> dict:
        """Remove old releases beyond the newest `keep`, never the live or a protected one."""
        keep = max(int(args.get("keep") or 5), 1)
        protect = {int(v) for v in args.get("protect_versions") or []}
        out = host.sh(f"echo live=$(readlink {_q(root + '/current')} 2>/dev/null); ls -1 {_q(root + '/releases')}")
        m = re.search(r"^live=(?:.*/)?(\d+)/?$", out, re.MULTILINE)
        live = int(m.group(1)) if m else None
        versions = sorted((int(x) for x in out.splitlines() if x.isdigit()), reverse=True)
        drop = [v for v in versions[keep:] if v != live and v not in protect]
        if drop:
            host.sh("rm -rf -- " + " ".join(_q(f"{root}/releases/{v}") for v in drop))
        return {
            "removed": drop,
            "kept": [v for v in versions if v not in drop],
            "changed": bool(drop),
            "msg": f"pruned {drop or 'nothing'}",
        }
