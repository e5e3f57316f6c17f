"""The reconciler: nothing stuck, nothing lost.

Runs marked running whose heartbeat is gone lost their worker: they fail with "worker lost", the
ticket moves to the matching *_failed state and the lock is freed. Runs still queued whose RQ job is
missing (Redis flushed, enqueue failed after commit) are enqueued again.
"""

from __future__ import annotations

from datetime import timedelta

from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import select

from webapp import tickets, workflow
from webapp.errors import Conflict
from webapp.extensions import db
from webapp.models import Run, utcnow

from .context import app_context
from .lifecycle import HEARTBEAT_TTL, heartbeat_key
from .locks import force_release
from .queue import enqueue_run, redis_connection

QUEUED_GRACE = timedelta(seconds=20)  # a run younger than this may still be on its way to the queue
FAIL_EVENT = {"staging": workflow.STAGING_FAILED, "release": workflow.RELEASE_FAILED}


def _job_alive(redis, job_id: str) -> bool:
    """Tell whether an RQ job still exists and has not failed or been stopped."""
    if not job_id:
        return False
    try:
        job = Job.fetch(job_id, connection=redis)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=False) not in ("failed", "stopped", "canceled")


def reconcile() -> dict:
    """Fail runs whose worker is gone and re-enqueue runs that never reached a worker; return counts."""
    with app_context():
        redis = redis_connection()
        lost = requeued = 0
        now = utcnow()
        for run in db.session.scalars(select(Run).where(Run.status == "running")):
            started = run.started_at or run.created_at
            if redis.exists(heartbeat_key(run.id)) or now - started < timedelta(seconds=HEARTBEAT_TTL):
                continue
            run.status, run.error, run.finished_at = "lost", "worker lost: the run stopped without an end", now
            force_release(redis, run.project_id, "staging" if run.stage == "staging" else "release", run.id)
            try:
                tickets.fire(db.session, run.ticket_id, FAIL_EVENT[run.stage], run.error, last_error=run.error)
            except Conflict:
                pass  # the ticket already moved on
            db.session.commit()
            lost += 1
        for run in db.session.scalars(select(Run).where(Run.status == "queued")):
            if now - run.created_at < QUEUED_GRACE or _job_alive(redis, run.rq_job_id):
                continue
            run.rq_job_id = enqueue_run(run.id, run.stage, run.project.stage_timeout)
            db.session.commit()
            requeued += 1
        return {"lost": lost, "requeued": requeued}
