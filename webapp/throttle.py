"""Login throttling: after repeated failures a username/address pair must wait."""

from __future__ import annotations

from flask import current_app
from redis.exceptions import RedisError

from jobs.queue import redis_connection

MAX_FAILURES = 5
WINDOW_SECONDS = 300


def _key(username: str, addr: str) -> str:
    """Return the Redis key counting failures for one username and address."""
    return f"ferry:login-fail:{username[:64]}:{addr}"


def blocked(username: str, addr: str) -> bool:
    """Tell whether this username/address has failed too often recently."""
    try:
        return int(redis_connection().get(_key(username, addr)) or 0) >= MAX_FAILURES
    except RedisError:
        current_app.logger.warning("login throttle unavailable: Redis down")
        return False


def failed(username: str, addr: str) -> None:
    """Count one failed login."""
    try:
        r = redis_connection()
        key = _key(username, addr)
        r.incr(key)
        r.expire(key, WINDOW_SECONDS)
    except RedisError:
        pass  # throttling is best-effort; login itself does not need Redis


def reset(username: str, addr: str) -> None:
    """Forget failures after a successful login."""
    try:
        redis_connection().delete(_key(username, addr))
    except RedisError:
        pass
