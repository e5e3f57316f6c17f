"""Handing committed runs to the queue."""

from __future__ import annotations

from flask import current_app
from redis.exceptions import RedisError

from jobs.queue import enqueue_run

from .extensions import db
from .models import Run


def dispatch(run: Run | None) -> bool:
    """Enqueue a committed run; on a Redis failure leave it queued for the reconciler and return False."""
    if run is None:
        return True
    try:
        run.rq_job_id = enqueue_run(run.id, run.stage, run.project.stage_timeout)
    except RedisError as e:
        current_app.logger.warning("run %s not enqueued (%s); the reconciler will retry", run.id, e)
        return False
    db.session.commit()
    return True
