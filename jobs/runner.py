"""Run Ferry's playbooks through ansible-runner: run dirs, events, per-host results, cancel and timeout."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ansible_runner.interface import init_runner

from webapp.config import DEFAULT_STAGE_TIMEOUT

log = logging.getLogger(__name__)

PLAYBOOKS_DIR = Path(__file__).resolve().parent.parent / "playbooks"  # default; jobs pass FERRY_PLAYBOOK_DIR
# ansible-runner execs ansible-playbook from PATH (TESTHOSTS pitfall 1): use this interpreter's venv.
VENV_BIN = Path(sys.executable).parent

SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|API_KEY|PRIVATE_KEY", re.IGNORECASE)
SECRET_EXACT = {"DATABASE_URL", "REDIS_URL"}
MAX_MSG = 2048
GRACE_SECONDS = 5.0
# How often ansible-runner calls our cancel callback (its default is 5 s).
POLL_SECONDS = 0.5
STATUS_RANK = {"skipped": 0, "ok": 1, "changed": 2, "failed": 3, "unreachable": 4}
HOST_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}
STATS_KEYS = (
    "ok",
    "changed",
    "failures",
    "dark",
    "skipped",
    "processed",
    "ignored",
    "rescued",
)


class RunnerSetupError(Exception):
    """The run cannot start: missing playbook, inventory or run dir, or bad envvars."""


@dataclass
class HostOutcome:
    """Outcome of one host in one run (stored by the job as a webapp.models.HostResult row)."""

    host: str
    status: str  # "ok" | "changed" | "failed" | "unreachable" | "skipped"
    message: str
    changed_files: int = 0


@dataclass
class RunResult:
    """Outcome of one playbook run."""

    status: str  # "successful" | "failed" | "canceled" | "timeout"
    rc: int | None
    hosts: dict[str, HostOutcome]
    outputs: dict
    error: str
    run_dir: Path


def is_secret_name(name: str) -> bool:
    """Tell whether an environment variable name looks like it carries a secret."""
    return name in SECRET_EXACT or bool(SECRET_NAME.search(name))


def _ansible_dirs(run_dir: Path, envvars: dict) -> dict[str, str]:
    """Default Ansible's writable dirs under ANSIBLE_HOME so nothing lands in ~/.ansible."""
    home = Path(envvars.get("ANSIBLE_HOME") or run_dir.parent / ".ansible").absolute()
    return {
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"),
        # ansible-runner forces ANSIBLE_HOST_KEY_CHECKING=False unless the env sets it: keep checking on.
        "ANSIBLE_HOST_KEY_CHECKING": "True",
    }


def prepare_run_dir(
    run_dir: Path,
    *,
    playbook: str,
    playbooks_dir: Path | None = None,
    inventory_file: Path | None,
    extravars: dict,
    envvars: dict,
) -> None:
    """Lay out an ansible-runner private data dir that ops can replay with `ansible-runner run <dir> -p <pb>`."""
    source = Path(playbooks_dir or PLAYBOOKS_DIR)
    if not (source / playbook).is_file():
        raise RunnerSetupError(f"playbook not found: {source / playbook}")
    if inventory_file is not None and not Path(inventory_file).is_file():
        raise RunnerSetupError(f"inventory file not found: {inventory_file}")
    bad = [k for k in envvars if not k.startswith("ANSIBLE_") or is_secret_name(k)]
    if bad:
        raise RunnerSetupError(f"envvars may only hold non-secret ANSIBLE_* settings, got {sorted(bad)}")
    run_dir = Path(run_dir)
    project = run_dir / "project"
    if project.exists():
        shutil.rmtree(project)
    # A copy, not a symlink: the run dir must replay the playbooks as they were, even after a deploy of Ferry.
    shutil.copytree(
        source,
        project,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.retry"),
    )
    (run_dir / "inventory").mkdir(parents=True, exist_ok=True)
    hosts = run_dir / "inventory" / "hosts"
    if inventory_file is not None:
        shutil.copyfile(inventory_file, hosts)
    else:
        hosts.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    env_dir = run_dir / "env"
    env_dir.mkdir(parents=True, exist_ok=True)
    (env_dir / "extravars").write_text(json.dumps(extravars, indent=2, sort_keys=True, default=str))
    merged = {
        **_ansible_dirs(run_dir, envvars),
        **{k: str(v) for k, v in envvars.items()},
    }
    (env_dir / "envvars").write_text(json.dumps(merged, indent=2, sort_keys=True))


def _trim(text: str) -> str:
    """Trim a message to MAX_MSG characters, keeping the end (where tools put the reason)."""
    text = (text or "").strip()
    return text if len(text) <= MAX_MSG else "…" + text[-MAX_MSG:]


def _merge(dst: dict, src: dict) -> None:
    """Merge src into dst recursively (per-host sub-dicts from many events add up)."""
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        else:
            dst[key] = value


def _children(pid: int) -> list[int]:
    """List all descendants of pid from /proc (ansible workers setsid(), so their group differs)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL pid's process group and the groups of all its descendants."""
    for p in [pid, *_children(pid)]:
        try:
            os.killpg(os.getpgid(p), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def playbook_run_ids(runs_root: Path) -> set[int]:
    """Return the ids of the run dirs under `runs_root` that a live ansible-playbook on this machine runs from."""
    marker = f"{Path(runs_root).absolute()}/".encode()
    ids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmd = fh.read()
            except OSError:
                continue
            if b"ansible-playbook" in cmd and marker in cmd:
                rest = cmd.split(marker, 1)[1].split(b"/", 1)[0]
                if rest.isdigit():
                    ids.add(int(rest))
    return ids


def stop_orphans(run_dir: Path, grace: float = 5.0) -> int:
    """Stop ansible-playbook processes of `run_dir` that outlived their worker; return how many were found.

    Used by the reconciler: ansible-runner starts ansible-playbook in its own session, so a SIGKILLed
    worker leaves it running. SIGTERM first (its handler stops the fork workers), then SIGKILL the trees.
    """
    marker = f"{Path(run_dir).absolute()}/".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmd = fh.read()
            except OSError:
                continue
            if b"ansible-playbook" in cmd and marker in cmd:
                found.append(int(entry))
    trees = {pid: [pid, *_children(pid)] for pid in found}
    for pid in found:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in found):
        time.sleep(0.1)
    for tree in trees.values():
        for p in tree:
            try:
                os.killpg(os.getpgid(p), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return len(found)


class _Tracker:
    """Event handler state: per-host status, outputs, first error, stats and the ansible-playbook pid."""

    def __init__(self, on_event: Callable[[dict], None] | None) -> None:
        """Start empty."""
        self.on_event = on_event
        self.hosts: dict[str, HostOutcome] = {}
        self.outputs: dict = {}
        self.error = ""
        self.stats_hosts: set[str] | None = None
        self.pid: int | None = None

    def __call__(self, event: dict) -> bool:
        """Handle one event (hot path: keep it cheap); True tells ansible-runner to store it."""
        if self.pid is None and event.get("pid"):
            self.pid = int(event["pid"])
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a broken live log must not break the release
                log.exception("on_event failed")
        kind = event.get("event")
        data = event.get("event_data") or {}
        if kind in HOST_EVENTS and data.get("host"):
            self._host_event(kind, data)
        elif kind == "playbook_on_stats":
            self.stats_hosts = set()
            for key in STATS_KEYS:
                self.stats_hosts.update((data.get(key) or {}).keys())
        return True

    def _host_event(self, kind: str, data: dict) -> None:
        """Fold one runner_on_* event into the host's result."""
        res = data.get("res") or {}
        status = HOST_EVENTS[kind]
        if kind == "runner_on_failed" and data.get("ignore_errors"):
            status = "ok"
        elif kind == "runner_on_ok" and res.get("changed"):
            status = "changed"
        host = data["host"]
        hr = self.hosts.get(host) or self.hosts.setdefault(host, HostOutcome(host, "skipped", ""))
        msg = res.get("msg") or ""
        if not isinstance(msg, str):
            msg = json.dumps(msg, default=str)
        stderr = res.get("stderr") or ""
        if isinstance(stderr, str) and stderr.strip() and stderr.strip() not in msg:
            msg = f"{msg}: {stderr.strip()}" if msg else stderr.strip()  # "non-zero return code" alone says little
        if STATUS_RANK[status] >= STATUS_RANK[hr.status]:
            hr.status = status
            if msg or status in ("failed", "unreachable"):
                hr.message = _trim(msg)
        hr.changed_files += int(res.get("ferry_changed_files") or 0)
        # Failed results carry data too (a failed staging update still records its snapshot; a drift check
        # names the files), so both are merged.
        if kind in ("runner_on_ok", "runner_on_failed") and isinstance(res.get("ferry"), dict):
            _merge(self.outputs, res["ferry"])
        if status in ("failed", "unreachable") and not self.error:
            self.error = _trim(f"{host}: {msg or status}")


class _Canceller:
    """cancel_callback: SIGTERM ansible-playbook on cancel/timeout, SIGKILL its tree after a grace period."""

    def __init__(self, tracker: _Tracker, should_cancel: Callable[[], bool] | None, timeout: int) -> None:
        """Remember what to check."""
        self.tracker = tracker
        self.should_cancel = should_cancel
        self.deadline = time.monotonic() + timeout
        self.reason: str | None = None
        self.kill_at: float | None = None
        self.pids: list[int] = []

    def __call__(self) -> bool:
        """Return True when ansible-runner should kill the run now."""
        now = time.monotonic()
        if self.reason is None:
            if self.should_cancel is not None and self.should_cancel():
                self.reason = "canceled"
            elif now > self.deadline:
                self.reason = "timeout"
            else:
                return False
            pid = self.tracker.pid
            if pid is None:
                return True  # nothing forked yet: ansible-runner's process-group kill is enough
            # SIGTERM lets ansible's TQM kill its setsid() workers (ansible-runner's SIGKILL would orphan them).
            self.pids = [pid, *_children(pid)]
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.kill_at = now + GRACE_SECONDS
            return False
        if self.kill_at is not None and now >= self.kill_at:
            self.sweep()
            return True
        return False

    def sweep(self) -> None:
        """Kill whatever is left of the processes seen at cancel time."""
        for pid in self.pids:
            _kill_tree(pid)


def _scrub_artifacts(run_dir: Path) -> None:
    """Drop the process environment that ansible-runner writes into artifacts/*/command."""
    for path in (run_dir / "artifacts").glob("*/command"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if "env" in data:
            data.pop("env")
            path.write_text(json.dumps(data))


def _write_cmdline(run_dir: Path, limit: str | None, forks: int) -> None:
    """Store forks/limit in env/cmdline so a replay by hand runs exactly the same command."""
    args = ["--forks", str(forks)]
    if limit:
        # Ferry's playbooks start with a localhost play (tagging, staging): a limit must not skip it.
        parts = [p for p in limit.split(",") if p]
        args += [
            "--limit",
            ",".join(parts if "localhost" in parts else [*parts, "localhost"]),
        ]
    (run_dir / "env" / "cmdline").write_text(shlex.join(args))


def _stdout_tail(artifact_dir: Path) -> str:
    """Return the end of ansible's output, for failures that produced no host event."""
    try:
        return _trim((artifact_dir / "stdout").read_text(errors="replace"))
    except OSError:
        return ""


def run_playbook(
    run_dir: Path,
    playbook: str,
    *,
    expected_hosts: list[str] | None = None,
    limit: str | None = None,
    forks: int = 10,
    timeout: int = DEFAULT_STAGE_TIMEOUT,
    on_event: Callable[[dict], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> RunResult:
    """Run one playbook from a prepared run dir and return its outcome."""
    run_dir = Path(run_dir).absolute()
    if not (run_dir / "project" / playbook).is_file():
        raise RunnerSetupError(f"playbook not found in run dir: {run_dir / 'project' / playbook}")
    if not (run_dir / "inventory" / "hosts").is_file():
        raise RunnerSetupError(f"no inventory in run dir: {run_dir / 'inventory'}")
    try:
        envvars = json.loads((run_dir / "env" / "envvars").read_text())
    except (OSError, ValueError) as exc:
        raise RunnerSetupError(f"run dir not prepared ({exc})") from exc
    for key in ("ANSIBLE_LOCAL_TEMP", "ANSIBLE_SSH_CONTROL_PATH_DIR"):
        if envvars.get(key):
            Path(envvars[key]).mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_cmdline(run_dir, limit, forks)

    tracker = _Tracker(on_event)
    canceller = _Canceller(tracker, should_cancel, timeout)
    # Extravars, envvars, inventory and cmdline come from the files in run_dir, exactly as in a replay.
    runner = init_runner(
        private_data_dir=str(run_dir),
        playbook=playbook,
        quiet=True,
        suppress_ansible_output=True,
        settings={"pexpect_timeout": POLL_SECONDS},
        event_handler=tracker,
        cancel_callback=canceller,
    )
    env = {k: v for k, v in runner.config.env.items() if not is_secret_name(k)}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)])
    runner.config.env = env
    try:
        runner.run()
    finally:
        _scrub_artifacts(run_dir)
        if canceller.reason:
            canceller.sweep()  # no orphans, even when ansible-playbook exited on SIGTERM
    return _result(runner, run_dir, tracker, canceller, expected_hosts, timeout)


def _result(
    runner,
    run_dir: Path,
    tracker: _Tracker,
    canceller: _Canceller,
    expected,
    timeout: int,
) -> RunResult:
    """Turn runner state and tracked events into a RunResult."""
    status = canceller.reason or runner.status
    if status not in ("successful", "failed", "canceled", "timeout"):
        status = "failed"
    error = tracker.error
    if status == "canceled":
        error = "canceled by user"
    elif status == "timeout":
        error = f"timed out after {timeout} s"
    hosts = tracker.hosts
    covered = tracker.stats_hosts or set()
    missing = sorted(set(expected or []) - covered)
    if missing:
        for host in missing:
            hr = hosts.setdefault(host, HostOutcome(host, "failed", ""))
            if hr.status not in ("failed", "unreachable"):
                hr.status = "failed"
            hr.message = hr.message or "no result: the playbook did not reach this host"
        if status == "successful":
            status = "failed"
            error = f"playbook_on_stats did not cover expected host(s): {', '.join(missing)}"
    if status == "failed" and not error:
        error = _stdout_tail(Path(runner.config.artifact_dir)) or f"ansible-playbook exited with rc {runner.rc}"
    return RunResult(
        status=status,
        rc=runner.rc,
        hosts=hosts,
        outputs=tracker.outputs,
        error=error,
        run_dir=run_dir,
    )


__all__ = [
    "HostOutcome",
    "RunResult",
    "RunnerSetupError",
    "prepare_run_dir",
    "run_playbook",
    "stop_orphans",
]
