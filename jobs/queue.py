"""Enqueueing pipeline runs on RQ: the queue only carries run ids, the database holds the truth."""

from __future__ import annotations

from flask import current_app
from redis import Redis
from rq import Queue

STAGE_JOBS = {
    "staging": "jobs.staging.update_staging",
    "release": "jobs.release.release_ticket",
}
JOB_TIMEOUT_MARGIN = 300  # the RQ job outlives the playbook timeout, so the runner stops ansible itself


def redis_connection(url: str | None = None) -> Redis:
    """Return a Redis connection for the configured REDIS_URL."""
    return Redis.from_url(url or current_app.config["REDIS_URL"])


def queue(connection: Redis | None = None) -> Queue:
    """Return Ferry's RQ queue."""
    return Queue(current_app.config["FERRY_QUEUE"], connection=connection or redis_connection())


def enqueue_run(run_id: int, stage: str, timeout: int) -> str:
    """Put one run on the queue and return the RQ job id."""
    job = queue().enqueue(
        STAGE_JOBS[stage],
        run_id,
        job_id=f"run-{run_id}",
        job_timeout=timeout + JOB_TIMEOUT_MARGIN,
        result_ttl=86400,
        failure_ttl=7 * 86400,
    )
    return job.id
