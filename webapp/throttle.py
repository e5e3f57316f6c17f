"""Login throttling: after repeated attempts without success a username/address pair must wait."""

from __future__ import annotations

from flask import current_app
from redis.exceptions import RedisError

from .live import redis_connection

MAX_FAILURES = 5
WINDOW_SECONDS = 300


def _key(username: str, addr: str) -> str:
    """Return the Redis key counting failures for one username and address."""
    return f"ferry:login-fail:{username[:64]}:{addr}"


# INCR and the first EXPIRE in one server-side step: parallel requests each get their own count, so the
# limit test on that count lets exactly MAX_FAILURES of them through (a GET-then-INCR let 18 of 40 race past).
_COUNT_ATTEMPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


def attempt(username: str, addr: str) -> bool:
    """Count one login attempt and tell whether its password may be checked (False: too many recently).

    Counted before the password is checked, so at most MAX_FAILURES checks happen per username and
    address in WINDOW_SECONDS, however many requests arrive at once; a successful login calls `reset`.
    """
    try:
        count = redis_connection().eval(_COUNT_ATTEMPT, 1, _key(username, addr), WINDOW_SECONDS)
    except RedisError:
        current_app.logger.warning("login throttle unavailable: Redis down")
        return True  # throttling is best-effort; login itself does not need Redis
    return int(count) <= MAX_FAILURES


def blocked(username: str, addr: str) -> bool:
    """Tell whether this username/address has failed too often recently (check-then-count: prefer `attempt`)."""
    try:
        return int(redis_connection().get(_key(username, addr)) or 0) >= MAX_FAILURES
    except RedisError:
        current_app.logger.warning("login throttle unavailable: Redis down")
        return False


def failed(username: str, addr: str) -> None:
    """Count one failure after the fact (for forms that are already behind a login)."""
    try:
        redis_connection().eval(_COUNT_ATTEMPT, 1, _key(username, addr), WINDOW_SECONDS)
    except RedisError:
        pass


def reset(username: str, addr: str) -> None:
    """Forget failures after a successful login."""
    try:
        redis_connection().delete(_key(username, addr))
    except RedisError:
        pass
