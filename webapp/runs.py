"""Run services: reading a run's live or stored log and progress, and cancelling a run."""

from __future__ import annotations

import json

from redis.exceptions import RedisError
from sqlalchemy import update
from sqlalchemy.orm import Session

from . import tickets
from .errors import Conflict, Forbidden, NotFound
from .live import cancel_key, log_stream_key, progress_key, redis_connection
from .models import Run, User, utcnow
from .stages import stage
from .workflow import Role

ACTIVE = ("queued", "running")
CANCEL_TTL = 3600


def get_run(session: Session, run_id: int, user: User) -> Run:
    """Return a run visible to `user` or raise NotFound."""
    run = session.get(Run, run_id)
    if run is None or not tickets.can_see(user, run.ticket.project):
        raise NotFound("run %(id)s not found", id=run_id)
    return run


def may_cancel(run: Run, user: User) -> bool:
    """Tell whether `user` may cancel `run` at all: who started it, a lead of the project, or an admin."""
    return user.is_admin or run.started_by_id == user.id or user.role_in(run.ticket.project) is Role.LEAD


def can_cancel(run: Run, user: User) -> bool:
    """Tell whether `user` may cancel `run` now."""
    return run.status in ACTIVE and may_cancel(run, user)


def cancel(session: Session, run: Run, user: User) -> None:
    """Stop a run: a queued one ends at once, a running one is signalled through Redis (the worker stops it)."""
    # Who before when, as for tickets: a member without the right gets 403 whatever the run's status.
    if not may_cancel(run, user):
        raise Forbidden("only who started the run or a lead of the project may cancel it")
    if run.status not in ACTIVE:
        raise Conflict(
            "run %(id)s is %(status)s; only queued or running runs can be cancelled", id=run.id, status=run.status
        )
    if run.status == "queued":
        done = session.execute(
            update(Run)
            .where(Run.id == run.id, Run.status == "queued")
            .values(status="canceled", error=f"canceled by {user.username} before it started", finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if done.rowcount == 1:
            session.refresh(run)
            try:
                tickets.fire(session, run.ticket_id, stage(run.stage).fail_event, run.error, last_error=run.error)
            except Conflict:
                pass  # the ticket had already moved on
            return
        session.refresh(run)  # a worker claimed it meanwhile: signal it like a running run
    redis_connection().set(cancel_key(run.id), user.username, ex=CANCEL_TTL)


def log_lines(run: Run, offset: int = 0) -> list[dict]:
    """Return the run's log entries from `offset`: the live Redis stream, or the DB copy once finished."""
    entries: list[dict] = []
    try:
        for _id, fields in redis_connection().xrange(log_stream_key(run.id)):
            entries.append({k.decode(): v.decode() for k, v in fields.items()})
    except RedisError:
        entries = []
    if run.status not in ACTIVE and (not entries or len(entries) < run.log.count("\n") + 1):
        entries = [{"line": line, "host": "", "task": ""} for line in run.log.splitlines()]
    return entries[offset:]


def progress(run: Run) -> dict[str, dict]:
    """Return each host's progress: live from Redis while running, from the stored results afterwards."""
    if run.status not in ACTIVE and run.hosts:
        return {h.host: {"status": h.status, "task": "", "message": h.message} for h in run.hosts}
    try:
        raw = redis_connection().hgetall(progress_key(run.id))
    except RedisError:
        return {}
    return {k.decode(): json.loads(v) for k, v in raw.items()}
