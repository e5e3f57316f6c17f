"""What every stage job shares: claiming the run, heartbeat, lock, live log, recording the outcome."""

from __future__ import annotations

import threading
from pathlib import Path

from flask import current_app
from redis import Redis

from webapp.extensions import db
from webapp.models import HostResult, Run, utcnow

from .locks import ProjectLock
from .queue import redis_connection
from .runner import RunResult

HEARTBEAT_INTERVAL = 10  # seconds
HEARTBEAT_TTL = 45  # a run whose key is gone this long has lost its worker
LOG_STREAM_MAXLEN = 20000  # lines kept per run in Redis; the DB keeps the finished log
LOG_DB_MAX = 400_000  # characters of log kept in the DB per run


def heartbeat_key(run_id: int) -> str:
    """Return the Redis key a live run refreshes."""
    return f"ferry:run:{run_id}:heartbeat"


def cancel_key(run_id: int) -> str:
    """Return the Redis key a cancel button sets."""
    return f"ferry:run:{run_id}:cancel"


def log_stream_key(run_id: int) -> str:
    """Return the Redis stream holding a run's live log."""
    return f"ferry:run:{run_id}:log"


class RunContext:
    """A claimed run: keeps its heartbeat and lock alive and collects its log."""

    def __init__(self, run: Run, lane: str) -> None:
        self.run = run
        self.redis: Redis = redis_connection()
        self.lock = ProjectLock(self.redis, run.project_id, lane, run.id)
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> RunContext:
        self.run.status = "running"
        self.run.started_at = utcnow()
        self.run.heartbeat_at = self.run.started_at
        db.session.commit()
        self.redis.set(heartbeat_key(self.run.id), "1", ex=HEARTBEAT_TTL)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.lock.release()
        self.redis.delete(heartbeat_key(self.run.id), cancel_key(self.run.id))

    def _beat(self) -> None:
        """Refresh the heartbeat key and the lock until the run ends (Redis only: no DB in this thread)."""
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            try:
                self.redis.set(heartbeat_key(self.run.id), "1", ex=HEARTBEAT_TTL)
                self.lock.refresh()
            except Exception:  # noqa: BLE001 - a Redis blip must not kill the run; the reconciler judges later
                current_app.logger.warning("heartbeat of run %s failed", self.run.id)

    def wait_for_lock(self, describe) -> bool:
        """Take the project's lane lock, telling the page what the run waits for."""

        def on_wait(holder: str) -> None:
            self.run.waiting_for = describe(holder)
            db.session.commit()

        ok = self.lock.acquire(on_wait, self.should_cancel)
        if self.run.waiting_for:
            self.run.waiting_for = ""
            db.session.commit()
        return ok

    def should_cancel(self) -> bool:
        """Tell whether someone pressed cancel for this run."""
        return bool(self.redis.exists(cancel_key(self.run.id)))

    def log(self, line: str) -> None:
        """Add one line to the run's log (live stream and final DB copy)."""
        self.lines.append(line)
        self.redis.xadd(log_stream_key(self.run.id), {"line": line}, maxlen=LOG_STREAM_MAXLEN, approximate=True)

    def on_event(self, event: dict) -> None:
        """Forward an ansible-runner event's text to the live log (the hot path: cheap)."""
        text = event.get("stdout")
        if text:
            for line in text.splitlines():
                if line.strip():
                    self.log(line)

    def finish(self, result: RunResult | None, status: str, error: str = "", hosts_filter=None) -> None:
        """Record the run's outcome, per-host results and log; the caller commits."""
        run = self.run
        run.status = status
        run.error = error[:20000]
        run.finished_at = utcnow()
        log = "\n".join(self.lines)
        run.log = log[-LOG_DB_MAX:]
        if result is not None:
            run.rc = result.rc
            run.run_dir = str(result.run_dir)
            for host in result.hosts.values():
                if hosts_filter is None or host.host in hosts_filter:
                    db.session.add(
                        HostResult(
                            run_id=run.id,
                            host=host.host,
                            status=host.status,
                            message=host.message[:4000],
                            changed_files=host.changed_files,
                        )
                    )


def run_dir_for(run: Run) -> Path:
    """Return the ansible-runner private data dir of a run."""
    return Path(current_app.config["FERRY_DATA_DIR"]) / "runs" / str(run.id)


def project_dir(project_name: str) -> Path:
    """Return (and create) where Ferry keeps a project's snapshot and release repositories."""
    path = Path(current_app.config["FERRY_DATA_DIR"]) / "projects" / project_name
    path.mkdir(parents=True, exist_ok=True)
    return path


def ansible_envvars() -> dict:
    """Return the non-secret ANSIBLE_* settings every run gets."""
    home = Path(current_app.config["FERRY_DATA_DIR"]) / "ansible"
    return {"ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp")}
