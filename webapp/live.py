"""Redis: the connection, and the names of the keys a live run uses (jobs write them, pages read them)."""

from __future__ import annotations

from flask import current_app
from redis import Redis


def redis_connection(url: str | None = None) -> Redis:
    """Return a Redis connection for the configured REDIS_URL."""
    return Redis.from_url(url or current_app.config["REDIS_URL"])


def heartbeat_key(run_id: int) -> str:
    """Return the Redis key a live run refreshes."""
    return f"ferry:run:{run_id}:heartbeat"


def cancel_key(run_id: int) -> str:
    """Return the Redis key a cancel button sets."""
    return f"ferry:run:{run_id}:cancel"


def log_stream_key(run_id: int) -> str:
    """Return the Redis stream holding a run's live log."""
    return f"ferry:run:{run_id}:log"


def drain_key(pool: str) -> str:
    """Return the Redis key that tells a worker pool's workers to take no new job (`flask drain`)."""
    return f"ferry:drain:{pool}"


def progress_key(run_id: int) -> str:
    """Return the Redis hash holding each host's progress in a live run."""
    return f"ferry:run:{run_id}:hosts"
