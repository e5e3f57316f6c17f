"""Names of the Redis keys a run uses, shared by jobs (writers) and the web app (readers)."""


def heartbeat_key(run_id: int) -> str:
    """Return the Redis key a live run refreshes."""
    return f"ferry:run:{run_id}:heartbeat"


def cancel_key(run_id: int) -> str:
    """Return the Redis key a cancel button sets."""
    return f"ferry:run:{run_id}:cancel"


def log_stream_key(run_id: int) -> str:
    """Return the Redis stream holding a run's live log."""
    return f"ferry:run:{run_id}:log"


def progress_key(run_id: int) -> str:
    """Return the Redis hash holding each host's progress in a live run."""
    return f"ferry:run:{run_id}:hosts"
