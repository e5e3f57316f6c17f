"""Handing committed runs to the queue: RQ carries only run ids; the database holds the truth."""

from __future__ import annotations

from flask import current_app
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

from .extensions import db
from .live import redis_connection
from .models import Run
from .stages import JOB_TIMEOUT_MARGIN, stage


def queue(connection: Redis | None = None, pool: str | None = None) -> Queue:
    """Return the RQ queue of a worker pool (default: FERRY_QUEUE, the default pool)."""
    return Queue(pool or current_app.config["FERRY_QUEUE"], connection=connection or redis_connection())


def enqueue_run(run_id: int, stage_name: str, timeout: int, pool: str) -> str:
    """Put one run on its project's pool queue (its stage's job, by dotted path) and return the RQ job id.

    Only that pool's workers take it: the project's staging copy, repositories and run dirs live on them.
    """
    job = queue(pool=pool).enqueue(
        stage(stage_name).job,
        run_id,
        job_id=f"run-{run_id}",
        job_timeout=timeout + JOB_TIMEOUT_MARGIN,
        result_ttl=86400,
        failure_ttl=7 * 86400,
    )
    return job.id


def dispatch(run: Run | None) -> bool:
    """Enqueue a committed run; on a Redis failure leave it queued for the reconciler and return False."""
    if run is None:
        return True
    try:
        run.rq_job_id = enqueue_run(run.id, run.stage, run.project.stage_timeout, run.project.queue)
    except RedisError as e:
        current_app.logger.warning("run %s not enqueued (%s); the reconciler will retry", run.id, e)
        return False
    db.session.commit()
    return True
