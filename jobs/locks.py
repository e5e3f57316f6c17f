"""Per-project locks in Redis that expire with their run's heartbeat."""

from __future__ import annotations

import time
from collections.abc import Callable

from redis import Redis

LOCK_TTL = 60  # seconds; the run's heartbeat refreshes it several times within this
POLL_INTERVAL = 0.5

# Refresh only a lock this run still holds (a lock that expired may belong to another run now); re-take it
# when the key is gone altogether (Redis flushed or restarted under a live run).
_REFRESH = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
if not holder then return redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2]) and 1 end
return 0
"""
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def lock_key(project_id: int, kind: str) -> str:
    """Return the Redis key of a project's lock of one kind (staging or release)."""
    return f"ferry:lock:{project_id}:{kind}"


class ProjectLock:
    """One run's claim on a project's staging or release lane."""

    def __init__(self, redis: Redis, project_id: int, kind: str, run_id: int) -> None:
        self.redis = redis
        self.key = lock_key(project_id, kind)
        self.token = str(run_id)

    def acquire(self, on_wait: Callable[[str], None], should_stop: Callable[[], bool]) -> bool:
        """Block until the lock is ours (True) or `should_stop()` says give up (False)."""
        last_holder = None
        while not self.redis.set(self.key, self.token, nx=True, ex=LOCK_TTL):
            holder = self.redis.get(self.key)
            holder = holder.decode() if holder else ""
            if holder == self.token:  # a re-run of the same job after a crash
                return True
            if holder != last_holder and holder:
                on_wait(holder)
                last_holder = holder
            if should_stop():
                return False
            time.sleep(POLL_INTERVAL)
        return True

    def refresh(self) -> None:
        """Extend the lock if this run still holds it."""
        self.redis.eval(_REFRESH, 1, self.key, self.token, LOCK_TTL)

    def release(self) -> None:
        """Drop the lock if this run still holds it."""
        self.redis.eval(_RELEASE, 1, self.key, self.token)


def force_release(redis: Redis, project_id: int, kind: str, run_id: int) -> None:
    """Release a lock held by a run that the reconciler found dead."""
    redis.eval(_RELEASE, 1, lock_key(project_id, kind), str(run_id))
