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
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import select

from webapp import notify, tickets
from webapp.dispatch import enqueue_run
from webapp.errors import Conflict
from webapp.extensions import db
from webapp.live import redis_connection
from webapp.models import Delivery, Run, utcnow
from webapp.stages import stage

from .context import app_context
from .lifecycle import heartbeat_ttl, run_dir_for
from .locks import force_release
from .runner import stop_orphans


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
        back: list[Run] = []
        now = utcnow()
        ttl = timedelta(seconds=heartbeat_ttl())
        grace = timedelta(seconds=int(current_app.config.get("FERRY_REQUEUE_GRACE", 20)))
        for run in db.session.scalars(select(Run).where(Run.status == "running")):
            if now - (run.heartbeat_at or run.started_at or run.created_at) < ttl:
                continue
            stop_orphans(run_dir_for(run))
            run.status, run.error, run.finished_at = "lost", "worker lost: the run stopped without an end", now
            force_release(redis, run.project_id, stage(run.stage).lane, run.id)
            try:
                tickets.fire(
                    db.session, run.ticket_id, stage(run.stage).fail_event, run.error, "run_lost", last_error=run.error
                )
            except Conflict:
                pass  # the ticket already moved on
            else:
                if run.stage == "release" and run.version is not None:
                    # It may have switched some hosts: put them back (its own run, replayable like any other).
                    back.append(Run(ticket_id=run.ticket_id, project_id=run.project_id, stage="switch_back"))
                    db.session.add(back[-1])
            db.session.commit()
            lost += 1
        for new in back:
            try:
                new.rq_job_id = enqueue_run(new.id, new.stage, new.project.stage_timeout)
                db.session.commit()
            except RedisError:
                db.session.rollback()  # still queued: the next round re-enqueues it
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
