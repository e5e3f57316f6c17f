"""Verify hosts: compare every production host with the version Ferry records as live, and keep the fleet table.

The fleet table (HostState, one row per project and host) is written by a verify and after every release
run: after a success every host is in sync at the new version; after a drift failure the drifted hosts are
recorded with their files.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from datetime import datetime
from pathlib import Path

from flask import current_app
from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from webapp.extensions import db
from webapp.fleet import DRIFT_KINDS, drift_line, pending_key
from webapp.live import redis_connection
from webapp.models import HostState, Project, utcnow
from webapp.projects import inventory_path

from . import runner
from .context import app_context
from .inventory import group_hosts
from .lifecycle import ansible_envvars, project_dir
from .locks import LOCK_TTL, ProjectLock

PLAYBOOK = "verify.yml"
RUN_DIRS_KEPT = 10  # verify run dirs kept per project (for replays)


class VerifyError(Exception):
    """A verify could not compare anything (the live version could not be checked out)."""


def verify_job(project_id: int, checksum: bool = False) -> dict[str, str]:
    """RQ job: verify one project's hosts; return {host: state}."""
    with app_context():
        try:
            project = db.session.get(Project, project_id)
            if project is None:
                return {}
            return {s.host: s.state for s in verify_project(project, checksum=checksum)}
        finally:
            redis_connection().delete(pending_key(project_id))


class _LockHolder:
    """The project's release lock, held (and refreshed) for the length of a verify."""

    def __init__(self, redis: Redis, project_id: int) -> None:
        """Prepare a lock with a token of its own (a verify is not a run)."""
        self.lock = ProjectLock(redis, project_id, "release", f"verify-{uuid.uuid4().hex[:8]}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, daemon=True)
        self.logger = current_app.logger

    def _refresh(self) -> None:
        """Keep the lock alive while the verify runs."""
        while not self._stop.wait(LOCK_TTL / 4):
            try:
                self.lock.refresh()
            except Exception:  # noqa: BLE001 - Redis restarting; the next refresh re-takes the lock
                self.logger.warning("refreshing the verify lock failed")

    def acquire(self, on_wait) -> None:
        """Wait until no release or other verify of the project runs, then hold the lock."""
        self.lock.acquire(on_wait, lambda: False)
        self._thread.start()

    def release(self) -> None:
        """Stop refreshing and drop the lock."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.lock.release()


def verify_project(project: Project, on_wait=None, checksum: bool = False) -> list[HostState]:
    """Check every host of the project against the live version and record the fleet table; return it.

    Takes the project's release lock, so a verify never runs during a release (and waits for one). A project
    that was never released has nothing to compare: every host is `new`. `checksum` compares every file's
    content instead of size + mtime first (slower; also finds edits that kept both).
    """
    hosts = group_hosts(inventory_path(project.inventory), project.group)
    if project.live_version is None:
        states = {h: _state("new", None, {}, "nothing released yet") for h in hosts}
        return _store(db.session, project, states, hosts)
    holder = _LockHolder(redis_connection(), project.id)
    holder.acquire(on_wait or (lambda holder_id: None))
    try:
        db.session.refresh(project)  # a release that held the lock may have changed the live version
        result = _run(project, hosts, checksum)
        localhost = result.hosts.get("localhost")
        if localhost is not None and localhost.status in ("failed", "unreachable"):
            raise VerifyError(f"checking out version {project.live_version} failed: {localhost.message}")
        check = result.outputs.get("check") or {}
        states = {}
        for host in hosts:
            if host in check:
                c = check[host]
                states[host] = _state(c["state"], c.get("version"), c, c.get("message", ""))
            else:  # no comparison: ssh or the deploy dir is broken
                hr = result.hosts.get(host)
                why = (hr.message if hr else "") or result.error or "no result"
                states[host] = _state("unreachable", None, {}, why)
        return _store(db.session, project, states, hosts)
    finally:
        holder.release()


def _run(project: Project, hosts: list[str], checksum: bool) -> runner.RunResult:
    """Run verify.yml from a run dir under the project's data dir (kept for replays)."""
    base = project_dir(project.name)
    run_dir = base / "verify" / datetime.now().strftime("%Y%m%dT%H%M%S.%f")
    runner.prepare_run_dir(
        run_dir,
        playbook=PLAYBOOK,
        inventory_file=inventory_path(project.inventory),
        extravars={
            "ferry_group": project.group,
            "snapshot_git_dir": str(base / "staging.git"),
            "live_version": project.live_version,
            "live_dir": str(base / "live"),
            "mode": project.deploy_mode,
            "shared_paths": project.shared_paths,
            "checksum": checksum,
        },
        envvars=ansible_envvars(),
    )
    try:
        return runner.run_playbook(
            run_dir, PLAYBOOK, expected_hosts=hosts, forks=project.forks, timeout=project.stage_timeout
        )
    finally:
        _prune_run_dirs(base / "verify")


def _prune_run_dirs(parent: Path) -> None:
    """Keep the newest RUN_DIRS_KEPT verify run dirs."""
    for old in sorted(p for p in parent.iterdir() if p.is_dir())[:-RUN_DIRS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)


def _state(state: str, version: int | None, drift: dict, message: str) -> dict:
    """Return one host's row values."""
    lists = {k: list(drift.get(k) or []) for k in DRIFT_KINDS}
    return {"state": state, "version": version, "drift": lists, "message": message}


def _store(session: Session, project: Project, states: dict[str, dict], order: list[str]) -> list[HostState]:
    """Upsert HostState rows for the inventory's hosts (dropping others) and commit; return them in order."""
    now = utcnow()
    rows = {r.host: r for r in session.scalars(select(HostState).where(HostState.project_id == project.id))}
    for host in set(rows) - set(order):  # no longer in the inventory group
        session.delete(rows.pop(host))
    for host, values in states.items():
        row = rows.get(host)
        if row is None:
            row = rows[host] = HostState(project_id=project.id, host=host)
            session.add(row)
        row.state, row.version, row.drift = values["state"], values["version"], values["drift"]
        row.message, row.checked_at = values["message"][:4000], now
    session.commit()
    rank = {h: i for i, h in enumerate(order)}
    return sorted(rows.values(), key=lambda r: (rank.get(r.host, len(rank)), r.host))


def all_in_sync(states: list[HostState]) -> bool:
    """Tell whether every host is in sync (the verify command's exit code 0)."""
    return bool(states) and all(s.state == "in_sync" for s in states)


def record_release(project: Project, result: runner.RunResult, version: int, hosts: list[str]) -> None:
    """Update the fleet table after a release run; the caller commits.

    Success: every host is in sync at version N. A drift failure: the drifted hosts are `drifted` with their
    files (the others keep their rows: nothing changed on them). Other failures change nothing here.
    """
    now = utcnow()
    rows = {r.host: r for r in db.session.scalars(select(HostState).where(HostState.project_id == project.id))}
    if result.status == "successful":
        states = {h: _state("in_sync", version, {}, f"released version {version}") for h in hosts}
    else:
        drift = result.outputs.get("drift") or {}
        states = {h: _state("drifted", d.get("version"), d, drift_line(h, d)) for h, d in drift.items()}
    for host, values in states.items():
        row = rows.get(host)
        if row is None:
            row = HostState(project_id=project.id, host=host)
            db.session.add(row)
        row.state, row.version, row.drift = values["state"], values["version"], values["drift"]
        row.message, row.checked_at = values["message"][:4000], now


def staged_hosts(result: runner.RunResult) -> list[str]:
    """Return the hosts whose `stage` step succeeded (or was skipped: already staged) in a release run."""
    sync = result.outputs.get("sync") or {}
    return sorted(h for h, ops in sync.items() if isinstance(ops, dict) and "stage" in ops)


__all__ = ["VerifyError", "all_in_sync", "record_release", "staged_hosts", "verify_job", "verify_project"]
