"""Real RQ worker processes for tests that kill, flush or race workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from webapp.extensions import db

REPO = Path(__file__).resolve().parents[2]


def worker_env(app, **extra: str) -> dict:
    """Return the environment that points a `flask worker` process at the test app's DB, Redis and dirs."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
        REDIS_URL=app.config["REDIS_URL"],
        FERRY_DATA_DIR=str(app.config["FERRY_DATA_DIR"]),
        FERRY_INVENTORY_DIR=str(app.config["FERRY_INVENTORY_DIR"]),
        FERRY_QUEUE=app.config["FERRY_QUEUE"],
        FERRY_HEARTBEAT_TTL=str(app.config.get("FERRY_HEARTBEAT_TTL", 45)),
        SECRET_KEY="test-secret-key",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


def start_worker(app, log: Path, burst: bool = False, queues: tuple[str, ...] = (), **env: str) -> subprocess.Popen:
    """Start `flask worker` in its own session (so a test can kill its whole group).

    `queues`: the worker pools it serves (default: FERRY_QUEUE); `env`: e.g. its own FERRY_DATA_DIR, FERRY_HOSTNAME.
    """
    argv = [str(Path(sys.executable).parent / "flask"), "--app", "webapp", "worker"] + (["--burst"] if burst else [])
    argv += [arg for name in queues for arg in ("--queue", name)]
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            argv, cwd=REPO, env=worker_env(app, **env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _children(pid: int) -> list[int]:
    """Return the direct children of a process."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = (Path("/proc") / entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(") ", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def kill_worker(proc: subprocess.Popen) -> None:
    """SIGKILL an RQ worker and its work-horse (RQ gives the horse its own session), as a crash would.

    ansible-playbook, started by the horse in yet another session, is left running: cleaning up such
    orphans is the reconciler's job.
    """
    horses = _children(proc.pid)
    for pid in [proc.pid, *horses]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def stop_worker(proc: subprocess.Popen) -> None:
    """Stop a worker politely, then firmly."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            kill_worker(proc)


def wait_for(predicate, timeout: float = 60, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` (with fresh DB reads) until it returns a truthy value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.session.expire_all()
        db.session.commit()  # end the read transaction so other processes' commits become visible
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def ansible_processes(marker: str) -> list[str]:
    """Return live ansible-playbook / rsync / sleep processes whose command line mentions `marker` (a test dir)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (Path("/proc") / pid / "stat").read_text().split(") ")[1][0]
        except OSError:
            continue
        if state != "Z" and marker in cmd and ("ansible" in cmd or "rsync" in cmd or "sleep" in cmd):
            found.append(cmd)
    return found
