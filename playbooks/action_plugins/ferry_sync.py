"""Ansible action plugin: stage / switch / prune one release on one host, pushing with rsync from the controller."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
import ferry_listing  # noqa: E402  (playbooks/lib: shared by the plugins, copied into every run dir)

MAX_MSG = 2048
MAX_SAMPLE = 50
EXCLUDES = ["--exclude=.git", "--exclude=.svn"]
# rsync exits 255 when ssh fails, but 12 ("error in rsync protocol data stream") when ssh dies under it.
UNREACHABLE_RC = {255, 12, 10}
UNREACHABLE_ERR = re.compile(
    r"ssh: |connection unexpectedly closed|Connection (refused|timed out|reset|closed)|"
    r"No route to host|Could not resolve|Host key verification failed|Permission denied \(publickey",
)
# Printed to stderr by the remote preparation that runs before rsync's server (see Host.rsync's prepare).
PREPARE_FAILED = "ferry: preparing the destination failed"
LIVE_MARK = "ferry-live="


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

    def run(self, script: str) -> str:
        """Run a shell script on the host through the same ssh as rsync (one session); return its stdout."""
        if self.local:
            return self.sh(script)
        proc = subprocess.run(
            [*shlex.split(self.rsh), self.host, script],
            capture_output=True,
            text=True,
            errors="surrogateescape",
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if proc.returncode:
            err = (proc.stderr.strip() or f"rc {proc.returncode}")[-MAX_MSG:]
            if proc.returncode == 255:
                raise SyncError(err, unreachable=True)
            if PREPARE_FAILED in proc.stderr:
                raise SyncError(err)
        return proc.stdout

    def rsync(self, args: list[str], prepare: str | None = None, stop_mark: str = "") -> tuple[list[str], str]:
        """Run rsync on the controller; return its itemized change lines and its stderr.

        `prepare` is a remote shell snippet run in the same ssh session just before rsync's server
        (via --rsync-path), which saves a round trip per host; it must print PREPARE_FAILED to stderr
        and exit when it fails. Local hosts ignore it (the caller prepares with sh()). A prepare that
        prints `stop_mark` to stderr and exits on purpose (nothing to compare) is not a failure.
        """
        argv = ["rsync", "-a", "--out-format=%i %n%L", *args]
        if self.rsh:
            argv[1:1] = ["--rsh", self.rsh]
            if prepare:
                argv[1:1] = [f"--rsync-path={prepare}; exec rsync"]
        # stderr goes to a file, not a pipe: when rsync's ssh starts the ControlPersist master, the
        # backgrounded master keeps stderr open, and reading a pipe to EOF would wait for it to exit.
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as err_file:
            proc = subprocess.run(
                argv, stdout=subprocess.PIPE, stderr=err_file, text=True, stdin=subprocess.DEVNULL, check=False
            )
            err_file.seek(0)
            stderr = err_file.read()
        if proc.returncode != 0:
            if stop_mark and stop_mark in stderr:
                return [], stderr
            if PREPARE_FAILED in stderr:  # the host answered: the destination is the problem
                why = [ln for ln in stderr.splitlines() if ln and not ln.startswith(("rsync", PREPARE_FAILED))]
                raise SyncError(f"{PREPARE_FAILED}: {' '.join(why)[-MAX_MSG:]}")
            err = (stderr.strip() or proc.stdout.strip())[-MAX_MSG:]
            unreachable = not self.local and proc.returncode in UNREACHABLE_RC and bool(UNREACHABLE_ERR.search(err))
            raise SyncError(f"rsync failed (rc {proc.returncode}): {err}", unreachable=unreachable)
        return [ln for ln in proc.stdout.splitlines() if ln], stderr


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
            version = int(args["version"]) if op not in ("prune", "check") or args.get("version") else 0
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
                checked, out = None, None
                if args.get("barrier"):
                    # In place, staging is going live: every host is checked, and waits for every other host's
                    # check, before any host writes (a barrier on the controller instead of a play of its own).
                    checked = self._check_all_first(host, root, version, args, task_vars or {})
                    if checked["state"] == "drifted" or checked.get("held"):
                        return self._check_result(result, host, checked)
                    if checked.get("delta"):
                        out = self._stage(host, root, version, {**args, "delta": checked["delta"]})
                elif _flag(args.get("check_first")) and args.get("live_version") not in (None, ""):
                    # Atomic mode checks for drift in the same task (staging releases/N changes nothing live, and
                    # any_errors_fatal stops every host before the switch): one fork and round of events fewer.
                    # On an ssh host the check first rides in the stage's own session (a guard before rsync);
                    # only a host that does not match at a glance gets the full check.
                    out = self._stage(host, root, version, args, guarded=True)
                    if out is not None:
                        checked = {"state": "in_sync", "version": int(args["live_version"]), "guarded": True}
                    else:
                        started = time.monotonic()
                        checked = self._check(host, root, version, args)
                        checked["seconds"] = {"check": round(time.monotonic() - started, 3)}
                        if checked["state"] == "drifted":
                            return self._check_result(result, host, checked)
                if out is None:
                    out = self._stage(host, root, version, args)
                if checked is not None:
                    out["check"] = {
                        k: checked[k] for k in ("state", "version", "seconds", "guarded", "fast") if k in checked
                    }
            elif op == "switch":
                out = self._switch(host, root, version, args)
            elif op == "prune":
                out = self._prune(host, root, args)
            elif op == "revert":
                out = self._revert(host, root, version, args)
            elif op == "check":
                checked = self._check(host, root, version, args)
                if _flag(args.get("first_release")) and checked["state"] == "drifted":
                    checked = _first_release_check(checked)
                return self._check_result(result, host, checked)
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
        pruned = out.pop("prune", None)  # switch with keep= also pruned, in the same round trip
        result.update(
            changed=bool(out.pop("changed", False) or n or (pruned and pruned["changed"])),
            msg=out.pop("msg", "") + (f"; {pruned['msg']}" if pruned else ""),
            ferry_changed_files=n,
            ferry={"sync": {host.name: {op: out, **({"prune": pruned} if pruned else {})}}},
        )
        return result

    def _stage(self, host: Host, root: str, version: int, args: dict, guarded: bool = False) -> dict | None:
        """Rsync release_dir to releases/N (atomic, hard-linked to the live release) or straight into root.

        A remote host needs one ssh session (the layout is made by rsync's --rsync-path prefix, which
        also reports the live release); a local host gets a shell probe first. `guarded` (atomic, remote):
        the prefix also checks that `current` is the live version and that its listing digest is the live
        tree's; when not, nothing is staged and None is returned (the caller runs the full drift check).
        """
        src = str(args["release_dir"]).rstrip("/") + "/"
        if not os.path.isdir(src):
            raise SyncError(f"release_dir {src} does not exist on the controller")
        mode = args.get("mode", "atomic")
        if mode not in ("atomic", "inplace"):
            raise SyncError(f"unknown mode {mode!r}")
        # Shared paths belong to the hosts in both modes: never deleted, never overwritten by a release.
        shared = ferry_listing.shared_paths(args)
        if mode == "inplace" and args.get("delta"):
            # The host was found holding exactly the live tree: send only what differs from it to N.
            dest, dirs = f"{root}/", [root]
            rsync_args = ferry_listing.delta_rsync_args(args["delta"], EXCLUDES, shared)
        elif mode == "inplace":
            dest, dirs = f"{root}/", [root]
            rsync_args = ["--delete", *EXCLUDES, *[f"--exclude=/{p}" for p in shared]]
        else:
            dest, dirs = f"{root}/releases/{version}", [f"{root}/releases", f"{root}/shared"]
            # Relative to the destination: current's target (the live release) when there is one; rsync
            # only warns when it does not exist yet. Unchanged files become hard links, only changes travel.
            rsync_args = ["--delete", *EXCLUDES, *[f"--exclude=/{p}" for p in shared], "--link-dest=../../current"]
        if _flag(args.get("overwrite_drift")):
            # The hosts drifted: compare content, not size+mtime, so a hand-edited live file is neither kept
            # (in place) nor hard-linked into the new release (--link-dest) because its size and time match.
            rsync_args.append("--checksum")
        mkdir = f"mkdir -p {' '.join(_q(d) for d in dirs)}"
        live_echo = f"echo {LIVE_MARK}$(readlink {_q(root + '/current')} 2>/dev/null)"
        prepare = f"{mkdir} || {{ echo {_q(PREPARE_FAILED)} >&2; exit 1; }}; {live_echo} >&2"
        guard = self._guard(host, root, args) if guarded else None
        if guarded and guard is None:
            return None
        if guard:
            prepare += f"; {guard}"
            delta = os.path.join(str(args.get("delta_dir") or ""), "delta")
            if args.get("delta_dir") and os.path.isfile(delta):
                # The guard found the live tree exactly as Ferry left it: releases/N starts as a hard-linked copy
                # of it (what --link-dest would make of every unchanged file), and only the delta travels. rsync
                # replaces every listed file (--ignore-times: a new inode, never a write into a shared one).
                tmp = f"{dest}.ferry-copy"
                prepare += (
                    f"; rm -rf {_q(tmp)} && cp -al {_q(root + '/current/.')} {_q(tmp)} && rm -rf {_q(dest)} && "
                    f"mv {_q(tmp)} {_q(dest)} || {{ echo {_q(PREPARE_FAILED)} >&2; exit 1; }}"
                )
                rsync_args = ferry_listing.delta_rsync_args(delta, EXCLUDES, shared)
                args = {**args, "delta": delta}
        t0 = time.monotonic()
        probed = host.sh(f"{mkdir} || exit 1\n{live_echo}") if host.local else ""
        t1 = time.monotonic()
        lines, stderr = host.rsync(
            [*rsync_args, src, host.dest(dest + "/")], prepare=prepare, stop_mark=SUSPECT_MARK if guard else ""
        )
        if guard and SUSPECT_MARK in stderr:
            return None
        t2 = time.monotonic()
        m = re.search(rf"^{LIVE_MARK}(?:.*/)?(\d+)/?$", probed + stderr, re.MULTILINE)
        live = int(m.group(1)) if m and mode == "atomic" else None
        if mode == "inplace":
            linked = self._seed_inplace(host, root, shared, src) if shared else False
        else:
            linked = self._link_shared(host, root, dest, shared, src) if shared else False
        res = self._stage_result(version, live, lines, dest, [t0, t1, t2, time.monotonic()])
        if args.get("delta"):
            res["delta"] = True
        g = re.search(rf"^{GUARD_MARK}(\d+)$", stderr, re.MULTILINE)
        if g:
            res["seconds"]["check"] = round(int(g.group(1)) / 1e9, 3)
        res["changed"] = linked
        return res

    @staticmethod
    def _guard(host: Host, root: str, args: dict) -> str | None:
        """Shell for the stage prefix that stops (SUSPECT_MARK) unless the host serves the live tree unchanged.

        None when the fast comparison does not apply (a local host, shared paths with glob characters, an
        atomic host without the live tree on the controller): the caller checks the full way first.
        """
        shared = ferry_listing.shared_paths(args)
        live_dir = str(args.get("live_dir") or "")
        if host.local or args.get("mode", "atomic") != "atomic" or not ferry_listing.usable(shared):
            return None
        if not os.path.isdir(live_dir):
            return None
        want = ferry_listing.expected(live_dir, shared)
        if not want:
            return None
        cur = _q(f"{root}/current")
        listing = ferry_listing.script(f"{root}/current/", shared)
        return (
            "t0=$(date +%s%N); "
            f'[ "$(readlink {cur})" = releases/{int(args["live_version"])} ] && [ "$({listing})" = {_q(want)} ] '
            f"|| {{ echo {SUSPECT_MARK} >&2; exit 1; }}; echo {GUARD_MARK}$(( $(date +%s%N) - t0 )) >&2"
        )

    def _link_shared(
        self,
        host: Host,
        root: str,
        rel: str,
        shared: list[str],
        src: str,
    ) -> bool:
        """Seed missing shared paths from the release once, then symlink each into the release."""
        probe = []
        for p in shared:
            probe.append(f"mkdir -p {_q(os.path.dirname(f'{root}/shared/{p}'))} || exit 1")
            probe.append(f"[ -e {_q(f'{root}/shared/{p}')} ] || [ -L {_q(f'{root}/shared/{p}')} ] || echo missing={p}")
        missing = re.findall(r"^missing=(.+)$", host.sh("\n".join(probe)), re.MULTILINE)
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

    def _seed_inplace(self, host: Host, root: str, shared: list[str], src: str) -> bool:
        """In-place mode: copy a shared path from the release only when the host has none (a default config)."""
        probe = [f"[ -e {_q(f'{root}/{p}')} ] || [ -L {_q(f'{root}/{p}')} ] || echo missing={p}" for p in shared]
        missing = re.findall(r"^missing=(.+)$", host.sh("\n".join(probe)), re.MULTILINE)
        seeded = False
        for p in missing:
            if os.path.lexists(src + p):
                parent = os.path.dirname(f"{root}/{p}")
                host.sh(f"mkdir -p {_q(parent)}")
                host.rsync([*EXCLUDES, src + p, host.dest(parent + "/")])
                seeded = True
        return seeded

    @staticmethod
    def _stage_result(version: int, live: int | None, lines: list[str], dest: str, marks: list[float]) -> dict:
        """Summarise an rsync run for the event / DB, with the seconds each step took (probe, rsync, shared)."""
        n = _count_changes(lines)
        steps = ("probe", "rsync", "shared")
        return {
            "version": version,
            "live_before": live,
            "dest": dest,
            "changed_files": n,
            "sample": lines[:MAX_SAMPLE],
            "seconds": {k: round(b - a, 3) for k, a, b in zip(steps, marks, marks[1:], strict=False)},
            "msg": f"staged v{version} to {dest}: {n} changed file(s)",
        }

    def _switch(self, host: Host, root: str, version: int, args: dict) -> dict:
        """Point current at releases/N with ln -s + mv -T (an atomic rename, never rm + ln); prune when keep is given.

        Pruning rides on the switch's round trip: one ssh command per host instead of a second task,
        which would cost a fork and events per host (the switch itself still happens first).
        """
        tmp, cur = f"{root}/.current.tmp-{version}", f"{root}/current"
        script = f"""
[ -d {_q(f"{root}/releases/{version}")} ] || {{ echo "releases/{version} is not staged" >&2; exit 1; }}
if [ -e {_q(cur)} ] && [ ! -L {_q(cur)} ]; then echo "{cur} exists and is not a symlink" >&2; exit 1; fi
echo old=$(readlink {_q(cur)} 2>/dev/null)
rm -f {_q(tmp)} && ln -s releases/{version} {_q(tmp)} && mv -T {_q(tmp)} {_q(cur)} || exit 1
"""
        prune = args.get("keep") not in (None, "")
        if prune:
            script += _prune_script(root, args)
        # strip(): Ansible appends "&& sleep 0" to the command, which must not start a line.
        out = host.sh(script.strip())
        m = re.search(r"^old=(.*)$", out, re.MULTILINE)
        old = (m.group(1).strip() if m else "") or None
        res = {
            "version": version,
            "previous": old,
            "changed": old != f"releases/{version}",
            "msg": f"current -> releases/{version} (was {old or 'none'})",
        }
        if prune:
            res["prune"] = _prune_result(out)
        return res

    def _revert(self, host: Host, root: str, version: int, args: dict) -> dict:
        """Put back what the host served before this run switched it to version N (a failed hook or check).

        Atomic: `current` goes back to `previous` (as the switch reported it) with the same atomic rename, or
        is removed when there was none (a first release: the host served nothing before). In-place: the live
        version's tree (`live_dir` on the controller) is synced again; without one there is nothing to go
        back to and the host keeps version N (reported as such).
        """
        if args.get("mode", "atomic") == "inplace":
            live_dir = str(args.get("live_dir") or "")
            if not args.get("live_version") or not os.path.isdir(live_dir):
                return {"version": version, "reverted": False, "msg": f"in-place first release: v{version} stays"}
            staged = self._stage(host, root, int(args["live_version"]), {**args, "release_dir": live_dir})
            return {
                "version": int(args["live_version"]),
                "reverted": True,
                "changed_files": staged["changed_files"],
                "msg": f"re-synced v{args['live_version']}",
            }
        prev = str(args.get("previous") or "").strip().rstrip("/")
        cur, tmp = f"{root}/current", f"{root}/.current.tmp-revert"
        if prev and not re.fullmatch(r"releases/\d+", prev):
            raise SyncError(f"cannot switch back to {prev!r}")
        if prev:
            action = f"rm -f {_q(tmp)} && ln -s {_q(prev)} {_q(tmp)} && mv -T {_q(tmp)} {_q(cur)}"
        else:
            action = f"rm -f {_q(cur)}"
        # Only undo our own switch: a host whose current is not releases/N was not switched by this run.
        host.sh(f'[ "$(readlink {_q(cur)} 2>/dev/null)" = releases/{version} ] || exit 0\n{action}')
        back = int(prev.rsplit("/", 1)[1]) if prev else None
        return {
            "version": back,
            "reverted": True,
            "changed": True,
            "msg": f"current -> {prev} again" if prev else "current removed (no earlier release)",
        }

    def _check(self, host: Host, root: str, version: int, args: dict) -> dict:
        """Compare the host's live tree with the tree of the version Ferry records as live (drift check).

        Fast path: one dry-run rsync (size + mtime) from live_dir to the live tree, in one ssh session whose
        --rsync-path prefix also reads `current` and tells a new host (nothing to compare) apart. Files whose
        only difference is their time are confirmed with a second dry run with --checksum. A host that
        already holds exactly `version` (release_dir: an earlier run of this release got there) is not
        drift either.
        """
        mode = args.get("mode", "atomic")
        if mode not in ("atomic", "inplace"):
            raise SyncError(f"unknown mode {mode!r}")
        live_version = int(args["live_version"])
        live_dir = str(args["live_dir"]).rstrip("/") + "/"
        if not os.path.isdir(live_dir):
            raise SyncError(f"live_dir {live_dir} does not exist on the controller")
        shared = ferry_listing.shared_paths(args)
        tree = f"{root}/current/" if mode == "atomic" else f"{root}/"
        probe = _check_probe(root, mode, shared)
        # checksum=true (verify --checksum): every file's content is compared, which also finds an edit that
        # kept both size and mtime; the fast path cannot see that one.
        deep = ["--checksum"] if _flag(args.get("checksum")) else []
        if not deep and ferry_listing.usable(shared):
            # Fast path: one command prints where current points and the live tree's listing digest; equal to
            # the live version's tree → in sync, without a dry run (ferry_listing says why that is safe).
            t0 = time.monotonic()
            want = ferry_listing.expected(live_dir, shared)
            t1 = time.monotonic()
            out = host.run(f"{probe}\necho {LISTING_MARK}$({ferry_listing.script(tree, shared)})")
            if NEW_MARK in out:
                return {"state": "new", "version": None, "msg": "new host: nothing deployed yet"}
            m = re.search(rf"^{LISTING_MARK}(.*)$", out, re.MULTILINE)
            if want and m and m.group(1).strip() == want and _served(out, mode, live_version)[0] == live_version:
                return {
                    "state": "in_sync",
                    "version": live_version,
                    "msg": f"in sync with version {live_version}",
                    "fast": True,
                    "digest_seconds": {"controller": round(t1 - t0, 3), "host": round(time.monotonic() - t1, 3)},
                }
        found = host.sh(probe) if host.local else ""
        lines: list[str] = []
        if NEW_MARK not in found:
            lines, stderr = host.rsync(
                [*CHECK_ARGS, *deep, *[f"--exclude=/{p}" for p in shared], live_dir, host.dest(tree)],
                prepare=f"{probe} >&2",
                stop_mark=NEW_MARK,
            )
            found += stderr
        if NEW_MARK in found:
            return {"state": "new", "version": None, "msg": "new host: nothing deployed yet"}
        served, link = _served(found, mode, live_version)
        drift = self._drift(host, live_dir, tree, lines)
        target_dir = str(args.get("release_dir") or "")
        # An earlier run of this release may have got the host there already: atomic, a switch that could not
        # be undone; in place, a run that failed after this host was synced. That host is not drift.
        maybe_there = served == version if mode == "atomic" else _has_drift(drift)
        if maybe_there and version and version != live_version and os.path.isdir(target_dir):
            at_target = self._compare(host, target_dir.rstrip("/") + "/", tree, shared)
            if not _has_drift(at_target):
                return {"state": "in_sync", "version": version, "msg": f"already holds version {version}"}
        if served != live_version:
            what = f"serves version {served}" if served is not None else f"current is not a release symlink ({link})"
            return {
                "state": "drifted",
                "version": served,
                **{k: [] for k in DRIFT_KINDS},
                "msg": f"drift: {what}, Ferry records {live_version}",
            }
        if _has_drift(drift):
            return {"state": "drifted", "version": served, **drift, "msg": "drift: " + _describe(drift)}
        return {"state": "in_sync", "version": served, "msg": f"in sync with version {live_version}"}

    def _check_all_first(self, host: Host, root: str, version: int, args: dict, task_vars: dict) -> dict:
        """In-place drift check of this host, then wait until every host of the play has checked.

        Each host writes its verdict into the barrier directory (made empty by the tag task of the same
        playbook run) and polls until every host of the play has one. A host whose check fails (drift,
        unreachable, error) publishes that first; every other host then stops without writing ("held"):
        any_errors_fatal ends the play, so no host changes. Needs forks >= hosts (the job decides).
        """
        barrier = str(args["barrier"])
        hosts = [str(h) for h in task_vars.get("ansible_play_hosts") or [host.name]]
        first = args.get("live_version") in (None, "")
        check_args = args if not first else {**args, "live_dir": args["release_dir"], "live_version": version}
        verdict = {"ok": False, "why": "check did not finish"}
        started = time.monotonic()
        try:
            checked = self._check(host, root, version, check_args)
            if first and checked["state"] == "drifted":
                checked = _first_release_check(checked)
            drifted = checked["state"] == "drifted"
            verdict = {"ok": not drifted, "why": "drifted" if drifted else checked["state"]}
        except SyncError as exc:
            verdict = {"ok": False, "why": "unreachable" if exc.unreachable else "failed"}
            raise
        finally:
            _publish(barrier, host.name, verdict)
        if not verdict["ok"]:
            return checked
        if checked.get("fast") and not first and not _flag(args.get("overwrite_drift")):
            # The host holds exactly the live tree: it needs only what differs between it and N (made once,
            # by the first host here, while the others still check).
            shared = ferry_listing.shared_paths(args)
            new, old = str(args["release_dir"]), str(args["live_dir"])
            checked["delta"] = ferry_listing.delta_file(barrier, new, old, shared)
        checked_at = time.monotonic()
        others = _wait_for(barrier, hosts, float(args.get("barrier_timeout") or BARRIER_TIMEOUT))
        checked["seconds"] = {
            "check": round(checked_at - started, 3),
            "wait": round(time.monotonic() - checked_at, 3),
            **checked.pop("digest_seconds", {}),
        }
        bad = sorted(h for h, v in others.items() if not v.get("ok"))
        if bad:
            why = ", ".join(f"{h} ({others[h].get('why', '?')})" for h in bad)
            return {**checked, "held": True, "msg": f"not staged: {why}; no host was changed"}
        return checked

    def _compare(self, host: Host, src: str, tree: str, shared: list[str]) -> dict:
        """Compare a controller tree with the host's live tree (both passes); return the drift lists."""
        lines, _ = host.rsync([*CHECK_ARGS, *[f"--exclude=/{p}" for p in shared], src, host.dest(tree)])
        return self._drift(host, src, tree, lines)

    @staticmethod
    def _drift(host: Host, src: str, tree: str, lines: list[str]) -> dict:
        """Classify a dry run's itemized lines; confirm time-only differences of files by checksum."""
        drift: dict[str, list[str]] = {k: [] for k in DRIFT_KINDS}
        candidates = []
        for line in lines:
            item, _, name = line.partition(" ")
            if item == "*deleting":
                drift["added"].append(_unescape(name.lstrip()))
                continue
            if len(item) != 11 or item[0] not in "<>ch.":
                continue  # rsync's notices
            kind, flags = item[1], item[2:]
            if kind == "L":
                name = name.split(" -> ", 1)[0]
            name = _unescape(name)
            if name in ("./", "."):
                continue
            if flags.startswith("+"):
                drift["deleted"].append(name)
            elif flags[0] == "c" or flags[1] == "s" or flags[3] == "p":
                drift["modified"].append(name)
            elif flags[2] in "tT" and kind == "f":
                candidates.append(name)
        if candidates:
            with tempfile.NamedTemporaryFile("wb", suffix=".files") as listing:
                listing.write(b"\0".join(os.fsencode(n) for n in candidates) + b"\0")
                listing.flush()
                confirm, _ = host.rsync(
                    [*CHECK_ARGS[:-1], "--checksum", f"--files-from={listing.name}", "--from0", src, host.dest(tree)]
                )
            for line in confirm:
                item, _, name = line.partition(" ")
                if len(item) == 11 and item[1] == "f" and (item[2] == "c" or item[3] == "s"):
                    drift["modified"].append(_unescape(name))
        return _fold(drift)

    @staticmethod
    def _check_result(result: dict, host: Host, out: dict) -> dict:
        """Turn a check into the task result: failed (naming the files) on drift, ok otherwise."""
        state = out.pop("state")
        msg = out.pop("msg")
        record = {"state": state, "version": out.get("version"), **{k: out.get(k, []) for k in DRIFT_KINDS}}
        ferry: dict = {"check": {host.name: {**record, "message": msg}}}
        if state == "drifted":
            lists = {k: record[k] for k in DRIFT_KINDS}
            ferry["drift"] = {host.name: {**lists, "version": record["version"], "message": msg}}
        result.update(changed=False, msg=msg, ferry=ferry, failed=state == "drifted")
        return result

    def _prune(self, host: Host, root: str, args: dict) -> dict:
        """Remove old releases beyond the newest `keep`, never the live or a protected one."""
        return _prune_result(host.sh(_prune_script(root, args).strip()))


NEW_MARK = "ferry-check=new"
LISTING_MARK = "ferry-listing="
SUSPECT_MARK = "ferry-check=look-closer"  # the stage's guard: the live tree does not match at a glance
GUARD_MARK = "ferry-guard-ns="  # how long the guard took on the host
DRIFT_KINDS = ("added", "modified", "deleted")
MAX_NAMED = 8  # files named in a drift message; the result lists them all (capped at MAX_LISTED)
MAX_LISTED = 500
# Dry run, owner/group and directory times ignored (not content); --delete lists files only the host has.
CHECK_ARGS = ["-8", "--dry-run", "--no-owner", "--no-group", "--omit-dir-times", *EXCLUDES, "--delete"]


def _first_release_check(checked: dict) -> dict:
    """In-place first release (compared with the release itself): only files it would delete are drift.

    Files the release adds or changes are the release; files only the host has (neither in the release nor
    shared) would be deleted by rsync --delete: production's data, reported and never deleted silently.
    """
    extra = list(checked.get("added") or [])
    if not extra:
        return {"state": "new", "version": None, "msg": "first release into this web root: nothing would be deleted"}
    return {
        "state": "drifted",
        "version": None,
        "added": extra,
        "modified": [],
        "deleted": [],
        "msg": "drift: first release would delete files that are neither in the release nor shared paths: "
        + ", ".join(extra[:MAX_NAMED])
        + (f" (+{len(extra) - MAX_NAMED} more)" if len(extra) > MAX_NAMED else ""),
    }


BARRIER_TIMEOUT = 300.0  # seconds a host waits for the other hosts' checks


def _publish(barrier: str, name: str, verdict: dict) -> None:
    """Write one host's check verdict into the barrier directory (renamed into place: never half-read)."""
    path = os.path.join(barrier, name.replace("/", "_"))
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(verdict, fh)
    os.replace(path + ".tmp", path)


def _wait_for(barrier: str, hosts: list[str], timeout: float) -> dict[str, dict]:
    """Wait until every host has published its verdict (a missing one counts as failed after the timeout)."""
    deadline = time.monotonic() + timeout
    got: dict[str, dict] = {}
    while True:
        for name in hosts:
            if name not in got:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    with open(os.path.join(barrier, name.replace("/", "_")), encoding="utf-8") as fh:
                        got[name] = json.load(fh)
        if len(got) == len(hosts) or any(not v.get("ok") for v in got.values()):
            return got
        if time.monotonic() > deadline:
            return {**{h: {"ok": False, "why": "no check within the time limit"} for h in hosts}, **got}
        time.sleep(0.02)


def _served(found: str, mode: str, live_version: int) -> tuple[int | None, str]:
    """Read the version a host serves from a probe's output (atomic: where `current` points)."""
    if mode != "atomic":
        return live_version, ""
    m = re.search(rf"^{LIVE_MARK}(.*)$", found, re.MULTILINE)
    link = (m.group(1).strip().rstrip("/") if m else "") or "(not a symlink)"
    return (int(link.rsplit("/", 1)[1]) if re.fullmatch(r"(.*/)?releases/\d+", link) else None), link


def _flag(value) -> bool:
    """Read a boolean task argument (templated values may arrive as strings)."""
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "on")


def _check_probe(root: str, mode: str, shared: list[str]) -> str:
    """Shell that prints NEW_MARK for a host with nothing deployed, else (atomic) where `current` points.

    A deploy_root that cannot be a directory (its nearest existing ancestor is a file) is an error, not new.
    """
    sane = (
        f'd={_q(root)}; while [ ! -e "$d" ] && [ ! -L "$d" ]; do d=$(dirname "$d"); done; '
        f'[ -d "$d" ] || {{ echo {_q(PREPARE_FAILED)} >&2; echo "deploy_root: $d is not a directory" >&2; exit 1; }}; '
    )
    if mode == "atomic":
        cur = _q(f"{root}/current")
        found = f"echo {LIVE_MARK}$(readlink {cur})"
        return f"{sane}if [ -e {cur} ] || [ -L {cur} ]; then {found}; else echo {NEW_MARK}; exit 0; fi"
    # In place: a root that is missing or holds nothing but the host's own shared paths is new.
    keep = "".join(f" -e {_q(p.split('/', 1)[0])}" for p in shared)
    listing = f"ls -A {_q(root)}" + (f" | grep -vxF{keep}" if keep else "")
    return f'{sane}if [ ! -d {_q(root)} ] || [ -z "$({listing})" ]; then echo {NEW_MARK}; exit 0; fi'


def _unescape(name: str) -> str:
    """Undo rsync's \\#ooo escapes of unprintable bytes in a name."""
    if "\\#" not in name:
        return name
    raw = re.sub(rb"\\#([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), os.fsencode(name))
    return os.fsdecode(raw)


def _fold(drift: dict[str, list[str]]) -> dict[str, list[str]]:
    """Tidy the lists: a path both deleted and added changed type; a directory is named only when empty."""
    added, deleted = set(drift["added"]), set(drift["deleted"])
    both = {p.rstrip("/") for p in added} & {p.rstrip("/") for p in deleted}
    out: dict[str, list[str]] = {}
    for kind in DRIFT_KINDS:
        names = [p for p in drift[kind] if kind == "modified" or p.rstrip("/") not in both]
        if kind == "modified":
            names += sorted(both)
        inner = {os.path.dirname(p.rstrip("/")) for p in names}
        # A directory line adds nothing when a path inside it is listed too.
        names = [p for p in names if not (p.endswith("/") and p.rstrip("/") in inner)]
        out[kind] = sorted(set(names))[:MAX_LISTED]
    return out


def _has_drift(drift: dict) -> bool:
    """Tell whether any file was added, modified or deleted."""
    return any(drift.get(k) for k in DRIFT_KINDS)


def _describe(drift: dict) -> str:
    """Name the drifted files, MAX_NAMED at most: "modified a, b; deleted c; added d (+3 more)"."""
    parts, named, total = [], 0, sum(len(drift[k]) for k in DRIFT_KINDS)
    for kind in ("modified", "deleted", "added"):
        names = drift[kind][: max(MAX_NAMED - named, 0)]
        named += len(names)
        if names:
            parts.append(f"{kind} {', '.join(names)}")
    more = f" (+{total - named} more)" if total > named else ""
    return "; ".join(parts) + more


def _prune_script(root: str, args: dict) -> str:
    """Shell that lists releases/ newest first and removes each beyond `keep` unless live or protected.

    Removing is a rename into .ferry-trash/ (instant); the files are deleted in the background, so the
    release does not wait for one unlink per file (seconds for 10 hosts x 5,000 files on shared disks).
    What an earlier background delete left (it failed, or still runs) is deleted again and reported.
    The trash dir itself is never removed, so a later prune's mv cannot race a running delete.
    """
    keep = max(int(args.get("keep") or 5), 1)
    protect = " ".join(str(int(v)) for v in args.get("protect_versions") or [])
    rel, trash = _q(f"{root}/releases"), _q(f"{root}/.ferry-trash")
    # Versions are numeric directory names; `live` is read after any switch in the same script.
    return f"""
echo trash_left=$(ls -A {trash} 2>/dev/null | wc -l)
live=$(readlink {_q(root + "/current")} 2>/dev/null); live=${{live%/}}; live=${{live##*/}}
n=0
for v in $(ls -1 {rel} 2>/dev/null | grep -x '[0-9][0-9]*' | sort -rn); do
  n=$((n + 1)); echo have=$v
  [ $n -le {keep} ] && continue
  case " $live {protect} " in *" $v "*) continue;; esac
  mkdir -p {trash} && mv -- {rel}/$v {trash}/$v.$$ || exit 1
  echo removed=$v
done
if [ -n "$(ls -A {trash} 2>/dev/null)" ]; then
  nohup rm -rf -- {trash}/* </dev/null >/dev/null 2>&1 &
fi
"""


def _prune_result(out: str) -> dict:
    """Turn the prune script's have=/removed= lines into the prune result."""
    have = [int(v) for v in re.findall(r"^have=(\d+)$", out, re.MULTILINE)]
    drop = [int(v) for v in re.findall(r"^removed=(\d+)$", out, re.MULTILINE)]
    left = re.search(r"^trash_left=\s*(\d+)$", out, re.MULTILINE)
    return {
        "removed": drop,
        "kept": [v for v in have if v not in drop],
        "trash_left": int(left.group(1)) if left else 0,
        "changed": bool(drop),
        "msg": f"pruned {drop or 'nothing'}",
    }
