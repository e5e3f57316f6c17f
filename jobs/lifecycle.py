"""What every stage job shares: claiming the run, heartbeat, lock, live log, recording the outcome."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
from pathlib import Path

from flask import current_app
from redis import Redis
from sqlalchemy import select, update

from webapp.extensions import db
from webapp.live import cancel_key, heartbeat_key, log_stream_key, progress_key, redis_connection
from webapp.models import HostResult, Run, utcnow
from webapp.stages import Stage

from . import runner
from .context import app_context
from .locks import ProjectLock
from .runner import RunResult

LOG_STREAM_MAXLEN = 20000  # lines kept per run in Redis; the DB keeps the finished log
LOG_DB_MAX = 400_000  # characters of log kept in the DB per run
LOG_LINE_MAX = 2000  # a single displayed line (synchronize-like results can be huge)
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
STREAM_TTL = 3600  # a finished run's live stream lingers this long for late viewers
# ansible-runner event -> per-host progress shown on the page
PROGRESS = {
    "runner_on_start": "running",
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}


def heartbeat_ttl() -> int:
    """Return how long a run may go without a heartbeat before it counts as lost."""
    return int(current_app.config.get("FERRY_HEARTBEAT_TTL", 45))


def this_machine() -> str:
    """Return the name this machine's workers record on the runs they claim (FERRY_HOSTNAME or the hostname)."""
    return current_app.config.get("FERRY_HOSTNAME") or socket.gethostname()


class RunContext:
    """A claimed run: keeps its heartbeat and lock alive and collects its log."""

    def __init__(self, run: Run, lane: str) -> None:
        self.run = run
        self.run_id = run.id
        self.redis: Redis = redis_connection()
        self.lock = ProjectLock(self.redis, run.project_id, lane, run.id)
        self.lines: list[str] = []
        self.ttl = heartbeat_ttl()
        self.engine = db.engine  # the heartbeat thread writes through its own connection, never the session
        self.logger = current_app.logger
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> RunContext:
        self.run.status = "running"
        self.run.started_at = utcnow()
        self.run.heartbeat_at = self.run.started_at
        self.run.worker = this_machine()  # its run dir and processes live here; only this machine can stop them
        db.session.commit()
        self.redis.delete(log_stream_key(self.run_id), progress_key(self.run_id))
        self.redis.set(heartbeat_key(self.run_id), "1", ex=self.ttl)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.lock.release()
        self.redis.delete(heartbeat_key(self.run_id), cancel_key(self.run_id))
        self.redis.expire(log_stream_key(self.run_id), STREAM_TTL)
        self.redis.expire(progress_key(self.run_id), STREAM_TTL)
        prune_run_dirs(self.run.project_id)

    def _beat(self) -> None:
        """Prove the run is alive: DB heartbeat (the reconciler's truth), Redis key and lock."""
        while not self._stop.wait(max(1.0, self.ttl / 4)):
            try:
                with self.engine.begin() as conn:
                    conn.execute(update(Run).where(Run.id == self.run_id).values(heartbeat_at=utcnow()))
            except Exception:  # noqa: BLE001 - a DB blip must not kill the run; the next beat retries
                self.logger.warning("DB heartbeat of run %s failed", self.run_id)
            try:
                self.redis.set(heartbeat_key(self.run_id), "1", ex=self.ttl)
                self.lock.refresh()
            except Exception:  # noqa: BLE001 - Redis may be flushed or restarting; the lock is re-taken later
                self.logger.warning("Redis heartbeat of run %s failed", self.run_id)

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

    def log(self, line: str, host: str = "", task: str = "", at: str = "") -> None:
        """Add one line to the run's log (live stream and final DB copy); `at` is when ansible emitted it."""
        line = ANSI_ESCAPE.sub("", line)  # runs replayed with colour on still show clean text
        line = line if len(line) <= LOG_LINE_MAX else line[:LOG_LINE_MAX] + " …(truncated)"
        self.lines.append(line)
        entry = {"line": line, "host": host, "task": task, "at": at}
        self.redis.xadd(log_stream_key(self.run_id), entry, maxlen=LOG_STREAM_MAXLEN, approximate=True)

    def on_event(self, event: dict) -> None:
        """Forward an ansible-runner event to the live log and host progress (hot path: Redis only)."""
        data = event.get("event_data") or {}
        host, task = data.get("host") or "", data.get("task") or ""
        progress = PROGRESS.get(event.get("event", ""))
        if progress and host:
            if progress == "ok" and (data.get("res") or {}).get("changed"):
                progress = "changed"
            self.redis.hset(progress_key(self.run_id), host, json.dumps({"status": progress, "task": task}))
        text = event.get("stdout")
        if text:
            for line in text.splitlines():
                if line.strip():
                    self.log(line, host, task, event.get("created", ""))

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


def claim(run_id: int, expected_state: str) -> Run | None:
    """Return the run if it is still queued and its ticket waits for it; otherwise mark it skipped."""
    run = db.session.get(Run, run_id)
    if run is None or run.status != "queued":
        return None  # already handled: a job that runs twice does nothing the second time
    if run.ticket.state != expected_state:
        run.status = "canceled"
        run.error = f"ticket was {run.ticket.state} when the worker got to it"
        db.session.commit()
        return None
    return run


def execute(run_id: int, stage: Stage, body, fail) -> str:
    """Run one stage job: claim the run, hold heartbeat and lock, record an unexpected error, re-raise it for RQ."""
    with app_context():
        run = claim(run_id, stage.claim_state.value)
        if run is None:
            return "skipped"
        with RunContext(run, stage.lane) as ctx:
            try:
                return body(ctx)
            except Exception as e:
                db.session.rollback()
                fail(ctx, None, "failed", f"worker error: {e!r}")
                raise


def prune_run_dirs(project_id: int) -> None:
    """Delete run directories beyond the newest FERRY_RUN_RETENTION of a project (their DB rows stay)."""
    keep = int(current_app.config.get("FERRY_RUN_RETENTION", 50))
    old = db.session.scalars(
        select(Run).where(Run.project_id == project_id, Run.run_dir != "").order_by(Run.id.desc()).offset(keep)
    ).all()
    for run in old:
        shutil.rmtree(run.run_dir, ignore_errors=True)
        run.run_dir = ""
    if old:
        db.session.commit()


def run_dir_for(run: Run) -> Path:
    """Return the ansible-runner private data dir of a run."""
    return Path(current_app.config["FERRY_DATA_DIR"]) / "runs" / str(run.id)


def project_dir(project_name: str) -> Path:
    """Return (and create) where Ferry keeps a project's snapshot and release repositories."""
    path = Path(current_app.config["FERRY_DATA_DIR"]) / "projects" / project_name
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_run_dir(
    run: Run, stage: Stage, inventory_file: Path | None, extravars: dict, run_dir: Path | None = None
) -> Path:
    """Lay out a run's ansible-runner dir (default: its own) from the configured playbooks; return it."""
    run_dir = run_dir or run_dir_for(run)
    runner.prepare_run_dir(
        run_dir,
        playbook=stage.playbook,
        playbooks_dir=current_app.config["FERRY_PLAYBOOK_DIR"],
        inventory_file=inventory_file,
        extravars=extravars,
        envvars=ansible_envvars(),
    )
    return run_dir


def ansible_envvars() -> dict:
    """Return the non-secret ANSIBLE_* settings every run gets."""
    home = Path(current_app.config["FERRY_DATA_DIR"]) / "ansible"
    # NOCOLOR: the log is shown as plain text; colour codes would appear as garbage.
    return {"ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"), "ANSIBLE_NOCOLOR": "1"}
