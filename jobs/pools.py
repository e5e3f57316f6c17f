"""Worker pools: the RQ worker that honours `flask drain`, and what a drained pool still runs.

A pool is an RQ queue. Each project names one (Project.queue); only the workers started with
`flask worker --queue NAME` take its runs, so its staging copy, repositories and run dirs live on their machines.
Draining a pool sets a Redis flag its workers check before they take a job: the job a worker runs goes on to
its end, queued jobs stay queued until `flask undrain`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from redis import Redis
from rq import Queue, Worker
from sqlalchemy import select

from webapp.extensions import db
from webapp.live import drain_key
from webapp.models import Project, Run

DRAIN_POLL = 2  # seconds: how soon an idle worker notices a drain or an undrain
DRAINED = "drained"  # the RQ worker state shown while it waits for `flask undrain`


def drained_pools(redis: Redis, pools: Iterable[str]) -> set[str]:
    """Return which of `pools` are drained."""
    pools = list(pools)
    if not pools:
        return set()
    flags = redis.mget([drain_key(p) for p in pools])
    return {pool for pool, flag in zip(pools, flags, strict=True) if flag}


def set_drained(redis: Redis, pools: Iterable[str], drained: bool) -> None:
    """Drain (no worker takes a new job) or undrain the pools."""
    for pool in pools:
        if drained:
            redis.set(drain_key(pool), "1")
        else:
            redis.delete(drain_key(pool))


def known_pools(redis: Redis, default_pool: str) -> list[str]:
    """Return every pool Ferry knows: the default, the projects', those live workers serve and drained ones."""
    pools = {default_pool, *db.session.scalars(select(Project.queue).distinct())}
    prefix = drain_key("")
    pools.update(k.decode().removeprefix(prefix) for k in redis.scan_iter(match=drain_key("*")))
    for worker in Worker.all(connection=redis):
        pools.update(worker.queue_names())
    return sorted(pools)


def pool_workers(redis: Redis, pools: Iterable[str]) -> list[Worker]:
    """Return the live RQ workers serving any of `pools`."""
    wanted = set(pools)
    return [w for w in Worker.all(connection=redis) if wanted & set(w.queue_names())]


def active_runs(pools: Iterable[str]) -> list[Run]:
    """Return the runs of the pools' projects that are running, oldest first."""
    in_pools = Run.project_id.in_(select(Project.id).where(Project.queue.in_(list(pools))))
    return list(db.session.scalars(select(Run).where(Run.status == "running", in_pools).order_by(Run.id)))


def queued_jobs(redis: Redis, pools: Iterable[str]) -> dict[str, int]:
    """Return how many jobs wait on each pool's queue."""
    return {pool: Queue(pool, connection=redis).count for pool in pools}


class PoolWorker(Worker):
    """An RQ worker that takes no new job from a drained pool; the job it runs goes on to its end."""

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        """Dequeue from the pools that are not drained, re-checking the flags every DRAIN_POLL seconds."""
        every = list(self._ordered_queues)
        idle_since = time.monotonic()
        try:
            while True:
                drained = drained_pools(self.connection, [q.name for q in every])
                open_queues = [q for q in every if q.name not in drained]
                if open_queues:
                    self._ordered_queues = open_queues
                    wait = None if timeout is None else max(1, min(timeout, DRAIN_POLL))
                    # max_idle_time makes RQ return after `wait` seconds without a job, so the flags are read again.
                    result = super().dequeue_job_and_maintain_ttl(wait, None if timeout is None else wait)
                    if result is not None:
                        job, queue = result
                        if not drained_pools(self.connection, [queue.name]):
                            return result
                        self._put_back(job.id, queue)  # drained while we waited: leave it queued, untouched
                        continue
                elif timeout is not None:
                    self.set_state(DRAINED)
                    self.procline(f"Drained: {', '.join(q.name for q in every)}")
                    self.heartbeat()
                    time.sleep(DRAIN_POLL)
                if timeout is None:  # burst: nothing to take now
                    return None
                if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                    return None
        finally:
            self._ordered_queues = every

    def _put_back(self, job_id: str, queue: Queue) -> None:
        """Return a dequeued, not started job to the front of its queue."""
        with self.connection.pipeline() as pipe:
            queue.push_job_id(job_id, pipeline=pipe, at_front=True)
            pipe.lrem(queue.intermediate_queue.key, 1, job_id)
            pipe.execute()
