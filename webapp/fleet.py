"""The fleet table: what each production host serves, who may verify it, and queueing a verify.

Rows (HostState) are written by jobs/verify.py: by a verify, and after every release run.
"""

from __future__ import annotations

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

from .dispatch import queue
from .live import redis_connection
from .models import HostState, Project, User
from .stages import JOB_TIMEOUT_MARGIN
from .workflow import Role

STATES = ("in_sync", "drifted", "unreachable", "new")
DRIFT_KINDS = ("added", "modified", "deleted")
MAX_NAMED = 6  # files named per host in a message


def can_verify(user: User, project: Project) -> bool:
    """Tell whether `user` may run a verify of the project's hosts (its leads and admins)."""
    return user.is_admin or user.role_in(project) is Role.LEAD


def pending_key(project_id: int) -> str:
    """Return the Redis key that marks a queued or running verify of a project."""
    return f"ferry:verify:{project_id}"


def request_verify(project: Project, checksum: bool = False) -> bool:
    """Queue a verify unless one is already queued or running; return whether one was queued."""
    redis = redis_connection()
    ttl = project.stage_timeout + JOB_TIMEOUT_MARGIN
    if not redis.set(pending_key(project.id), "queued", nx=True, ex=ttl):
        return False
    # On the project's pool: verify compares hosts with the release repository on those machines.
    queue(redis, project.queue).enqueue(
        "jobs.verify.verify_job", project.id, checksum, job_timeout=ttl, result_ttl=3600
    )
    return True


def is_pending(project_id: int) -> bool:
    """Tell whether a verify of the project is queued or running (False when Redis cannot say)."""
    try:
        return bool(redis_connection().exists(pending_key(project_id)))
    except RedisError:
        return False


def fleet(session: Session, project: Project) -> list[HostState]:
    """Return the project's fleet table, by host name."""
    return list(session.scalars(select(HostState).where(HostState.project_id == project.id).order_by(HostState.host)))


def drift_line(host: str, drift: dict) -> str:
    """Describe one host's drift: "web2: modified index.php; deleted robots.txt (+3 more)"."""
    parts, named = [], 0
    total = sum(len(drift.get(k) or []) for k in DRIFT_KINDS)
    for kind in ("modified", "deleted", "added"):
        names = list(drift.get(kind) or [])[: max(MAX_NAMED - named, 0)]
        named += len(names)
        if names:
            parts.append(f"{kind} {', '.join(names)}")
    if parts and total > named:
        parts[-1] += f" (+{total - named} more)"
    if not parts:  # not a file: `current` points elsewhere ("drift: serves version 3, Ferry records 4")
        parts = [str(drift.get("message") or f"serves version {drift.get('version')}").removeprefix("drift: ")]
    return f"{host}: {'; '.join(parts)}"


def drift_error(drift: dict) -> str:
    """Return a failed release's error for a drift failure (empty when there was none)."""
    if not drift:
        return ""
    lines = "; ".join(drift_line(h, drift[h]) for h in sorted(drift))
    return (
        f"drift on {len(drift)} host(s), nothing was switched: {lines}. Production was changed by hand: "
        "retry overwriting drift to replace those changes with the release"
    )
