"""The reconciler: nothing stuck, nothing lost.

Runs marked running whose DB heartbeat is older than FERRY_HEARTBEAT_TTL lost their worker: they fail
with "worker lost", the ticket moves to the matching *_failed state, a leftover ansible-playbook on this
machine is stopped and the lock is freed. Runs still queued whose RQ job is missing (Redis flushed,
enqueue failed after commit) are enqueued again, and so are notification deliveries still queued without
a queue entry. A lost run notifies as `run_lost`.
"""

from __future__ import annotations

from datetime import timedelta

from flask import current_app
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import select

from webapp import notify, tickets, workflow
from webapp.errors import Conflict
from webapp.extensions import db
from webapp.models import Delivery, Run, utcnow

from .context import app_context
from .lifecycle import heartbeat_ttl, run_dir_for
from .locks import force_release
from .queue import enqueue_run, redis_connection
from .runner import stop_orphans

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
        ttl = timedelta(seconds=heartbeat_ttl())
        grace = timedelta(seconds=int(current_app.config.get("FERRY_REQUEUE_GRACE", 20)))
        for run in db.session.scalars(select(Run).where(Run.status == "running")):
            if now - (run.heartbeat_at or run.started_at or run.created_at) < ttl:
                continue
            stop_orphans(run_dir_for(run))
            run.status, run.error, run.finished_at = "lost", "worker lost: the run stopped without an end", now
            force_release(redis, run.project_id, "staging" if run.stage == "staging" else "release", run.id)
            try:
                tickets.fire(
                    db.session, run.ticket_id, FAIL_EVENT[run.stage], run.error, "run_lost", last_error=run.error
                )
            except Conflict:
                pass  # the ticket already moved on
            db.session.commit()
            lost += 1
        for run in db.session.scalars(select(Run).where(Run.status == "queued")):
            if now - run.created_at < grace or _job_alive(redis, run.rq_job_id):
                continue
            run.rq_job_id = enqueue_run(run.id, run.stage, run.project.stage_timeout)
            db.session.commit()
            requeued += 1
        stuck = [
            d.id
            for d in db.session.scalars(select(Delivery).where(Delivery.status == "queued"))
            if now - d.created_at >= grace and not _job_alive(redis, f"notify-{d.id}")
        ]
        if stuck and not notify.enqueue(stuck):
            stuck = []
        return {"lost": lost, "requeued": requeued, "deliveries_requeued": len(stuck)}
