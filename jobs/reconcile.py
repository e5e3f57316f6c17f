"""The reconciler: nothing stuck, nothing lost, per worker pool.

It handles the runs of the projects in its pools (`flask reconcile --queue NAME`, `flask worker --queue NAME`;
default: FERRY_QUEUE). Runs marked running whose DB heartbeat is older than FERRY_HEARTBEAT_TTL lost their
worker: they fail with "worker lost", the ticket moves to the matching *_failed state and the lock is freed,
whichever machine ran them (the heartbeat is in the shared DB). Their leftover ansible-playbook can only be
stopped on the machine that ran them (Run.worker): a reconciler stops it when that is its own machine, and
otherwise says so in the run's error; that machine's next reconcile stops every ansible-playbook of its
data dir whose run is no longer running. Runs still queued whose RQ job is missing (Redis flushed, enqueue
failed after commit) are enqueued again on their project's pool, and the default pool's reconciler does the
same for notification deliveries still queued without a queue entry. A lost run notifies as `run_lost`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

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
from webapp.models import Delivery, Project, Run, utcnow
from webapp.stages import stage

from .context import app_context
from .lifecycle import heartbeat_ttl, run_dir_for, this_machine
from .locks import force_release
from .runner import playbook_run_ids, stop_orphans


def _job_alive(redis, job_id: str) -> bool:
    """Tell whether an RQ job still exists and has not failed or been stopped."""
    if not job_id:
        return False
    try:
        job = Job.fetch(job_id, connection=redis)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=False) not in ("failed", "stopped", "canceled")


def lost_error(run: Run, here: str) -> str:
    """Say why a run is lost, and where its leftover processes can be stopped when that is not here."""
    if run.worker in ("", here):
        return "worker lost: the run stopped without an end"
    return (
        f"worker lost on {run.worker}: the run stopped without an end; a leftover ansible-playbook can only be "
        f"stopped on {run.worker} (its next `flask reconcile` or `flask worker` does)"
    )


def stop_local_orphans(here: str) -> int:
    """Stop ansible-playbook processes of this machine's data dir whose run no longer runs; return how many runs."""
    stopped = 0
    for run_id in playbook_run_ids(Path(current_app.config["FERRY_DATA_DIR"]) / "runs"):
        run = db.session.get(Run, run_id)
        # A run still running (here, or a replay from the CLI) owns its playbook; runs of another machine
        # cannot have a run dir here.
        if run is not None and run.status not in ("queued", "running") and run.worker in ("", here):
            stopped += bool(stop_orphans(run_dir_for(run)))
    return stopped


def reconcile(pools: Iterable[str] | None = None) -> dict:
    """Fail lost runs of the projects in `pools` (default: FERRY_QUEUE) and re-enqueue runs that never reached a
    worker; return counts."""
    with app_context():
        redis = redis_connection()
        default_pool = current_app.config["FERRY_QUEUE"]
        pools = sorted(set(pools or [default_pool]))
        in_pools = Run.project_id.in_(select(Project.id).where(Project.queue.in_(pools)))
        here = this_machine()
        lost = requeued = 0
        back: list[Run] = []
        now = utcnow()
        ttl = timedelta(seconds=heartbeat_ttl())
        grace = timedelta(seconds=int(current_app.config.get("FERRY_REQUEUE_GRACE", 20)))
        for run in db.session.scalars(select(Run).where(Run.status == "running", in_pools)):
            if now - (run.heartbeat_at or run.started_at or run.created_at) < ttl:
                continue
            if run.worker in ("", here):  # "" : claimed before runs recorded their machine
                stop_orphans(run_dir_for(run))
            run.status, run.error, run.finished_at = "lost", lost_error(run, here), now
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
                new.rq_job_id = enqueue_run(new.id, new.stage, new.project.stage_timeout, new.project.queue)
                db.session.commit()
            except RedisError:
                db.session.rollback()  # still queued: the next round re-enqueues it
        orphans = stop_local_orphans(here)
        for run in db.session.scalars(select(Run).where(Run.status == "queued", in_pools)):
            if now - run.created_at < grace or _job_alive(redis, run.rq_job_id):
                continue
            run.rq_job_id = enqueue_run(run.id, run.stage, run.project.stage_timeout, run.project.queue)
            db.session.commit()
            requeued += 1
        stuck = []
        if default_pool in pools:  # notifications go to the default pool (webapp/notify.py)
            stuck = [
                d.id
                for d in db.session.scalars(select(Delivery).where(Delivery.status == "queued"))
                if now - d.created_at >= grace and not _job_alive(redis, f"notify-{d.id}")
            ]
            if stuck and not notify.enqueue(stuck):
                stuck = []
        return {
            "pools": pools,
            "machine": here,
            "lost": lost,
            "requeued": requeued,
            "orphans_stopped": orphans,
            "deliveries_requeued": len(stuck),
        }
