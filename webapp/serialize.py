"""JSON shapes of tickets, projects and runs (the API's contract)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, NotRequired

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from typing_extensions import TypedDict

from . import notify
from .extensions import db
from .fleet import fleet, is_pending
from .listing import TicketBrief, ticket_brief
from .models import HostResult, HostState, Project, Release, Run, Ticket, User
from .releases import batches_json, preview
from .runs import progress
from .stages import replay_argv, stage
from .tickets import allowed_actions, brief_actions, last_drift
from .workflow import State

CHANGE_STATES = ("testing", "pending_approval", "approved", "release_failed")

# The API's shapes, one TypedDict per serializer below (typing_extensions: pydantic needs it on Python 3.11).
# webapp/openapi.py describes the answers from these types, so a key added here is in /api/openapi.json too;
# tests/test_openapi.py checks every answer against them.
StateName = Literal[tuple(s.value for s in State)]  # type: ignore[valid-type]
Timestamp = str  # ISO 8601 UTC, "Z"-suffixed


class ProjectJson(TypedDict):
    """A project's public settings."""

    name: str
    svn_url: str
    staging_url: str
    inventory: str
    group: str
    requires_approval: bool
    allow_self_approval: bool
    deploy_mode: Literal["atomic", "inplace"]
    live_version: int | None


class HostResultJson(TypedDict):
    """One host's result in a run: ok, changed, failed, unreachable or skipped."""

    host: str
    status: str
    message: str


class RunJson(TypedDict):
    """A run's status and per-host results."""

    id: int
    stage: str
    status: str
    waiting_for: str
    version: int | None
    rc: int | None
    error: str
    started_at: Timestamp | None
    finished_at: Timestamp | None
    hosts: list[HostResultJson]


class LogLine(TypedDict):
    """One line of a run's log (host and task are empty when the line belongs to none)."""

    line: str
    host: str
    task: str


class RunLogJson(RunJson):
    """A run with its live progress and the log lines from `offset` (GET /api/runs/<id>)."""

    ticket: int
    progress: dict[str, dict[str, Any]]
    offset: int
    next_offset: int
    lines: list[LogLine]
    replay: str | None


class ChangedFile(TypedDict):
    """A file the release changes (`path` ending in "/" is an empty directory)."""

    status: Literal["added", "modified", "deleted"]
    path: str


class FileDiff(TypedDict):
    """A text file's diff (`added`/`deleted` are line counts as git prints them, "-" for binary files)."""

    path: str
    binary: bool
    added: str
    deleted: str
    diff: str
    truncated: bool


class IncludedTicket(TypedDict):
    """Another ticket whose staging snapshot rides along."""

    id: int
    state: StateName
    reason: str


class ChangesJson(TypedDict):
    """What releasing the ticket would change against the live version (releases.preview)."""

    base_version: int | None
    target: str | None
    files: list[ChangedFile]
    diffs: list[FileDiff]
    included_tickets: list[IncludedTicket]
    unversioned: list[str]
    staging_commit: str | None
    staging_moved_on: bool


class BatchJson(TypedDict):
    """One batch of a gray release (releases.batches_json)."""

    n: int
    hosts: list[str]
    status: Literal["pending", "switched", "healthy", "failed", "reverted"]


class HostDrift(TypedDict, total=False):
    """Files changed by hand on one host, and the version it serves."""

    added: list[str]
    modified: list[str]
    deleted: list[str]
    version: int | None


HistoryEntry = TypedDict(
    "HistoryEntry",
    {
        "action": str,
        "from": str | None,
        "to": str,
        "user": str,
        "at": Timestamp,
        "comment": str,
    },
)


class DeliveryJson(TypedDict):
    """A notification delivery (notify.delivery_json): channel is its kind and host only."""

    id: int
    event: str
    channel: str
    status: str
    attempts: int
    error: str
    created_at: Timestamp
    sent_at: Timestamp | None


class TicketBriefJson(TypedDict):
    """A ticket as lists show it."""

    id: int
    project: str
    kind: Literal["release", "rollback"]
    state: StateName
    reason: str
    svn_paths: list[str]
    svn_revision: int | None
    staging_revision: int | None
    staging_commit: str | None
    tested_commit: str | None
    version: int | None
    author: str
    approved_by: str | None
    staging_url: str
    last_error: str
    allowed_actions: list[str]
    created_at: Timestamp
    updated_at: Timestamp
    hosts: list[HostResultJson]


class TicketJson(TicketBriefJson):
    """A ticket with its runs, history and, while it can still be released, what it changes."""

    changes: NotRequired[ChangesJson]
    last_run: RunJson | None
    batches: list[BatchJson]
    drift: dict[str, HostDrift]
    history: list[HistoryEntry]
    notifications: list[DeliveryJson]


class ReleaseJson(TypedDict):
    """One version of a project."""

    version: int
    ticket: int
    svn_revision: int | None
    commit: str
    released_by: str | None
    released_at: Timestamp
    live: bool
    bad: bool
    hosts: list[str]


class TicketPage(TypedDict):
    """One page of tickets, newest first; `next` is the cursor of the following page (null: the last)."""

    items: list[TicketBriefJson]
    next: str | None


class ReleasePage(TypedDict):
    """One page of a project's versions, newest first."""

    items: list[ReleaseJson]
    next: str | None


class RunListItem(RunJson):
    """A run in a list, with its ticket and project."""

    ticket: int
    project: str


class RunPage(TypedDict):
    """One page of runs, newest first."""

    items: list[RunListItem]
    next: str | None


class HostStateJson(TypedDict):
    """One host's row of the fleet table."""

    host: str
    version: int | None
    state: Literal["in_sync", "drifted", "unreachable", "new"]
    drift: dict[Literal["added", "modified", "deleted"], list[str]]
    message: str
    checked_at: Timestamp | None


class FleetJson(TypedDict):
    """A project's fleet table as the last verify or release found it."""

    project: str
    live_version: int | None
    checked_at: Timestamp | None
    verify_pending: bool
    hosts: list[HostStateJson]


def _iso(at: datetime | None) -> str | None:
    """Return an ISO 8601 UTC timestamp."""
    return at.isoformat() + "Z" if at else None


def project_json(project: Project) -> ProjectJson:
    """Return a project's public settings."""
    return {
        "name": project.name,
        "svn_url": project.svn_url,
        "staging_url": project.staging_url,
        "inventory": project.inventory,
        "group": project.group,
        "requires_approval": project.requires_approval,
        "allow_self_approval": project.allow_self_approval,
        "deploy_mode": project.deploy_mode,
        "live_version": project.live_version,
    }


def run_json(run: Run | None) -> RunJson | None:
    """Return a run's status and per-host results."""
    if run is None:
        return None
    return {
        "id": run.id,
        "stage": run.stage,
        "status": run.status,
        "waiting_for": run.waiting_for,
        "version": run.version,
        "rc": run.rc,
        "error": run.error,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "hosts": [{"host": h.host, "status": h.status, "message": h.message} for h in run.hosts],
    }


def last_run(ticket: Ticket, stage: str | None = None) -> Run | None:
    """Return the ticket's newest run (of one stage, if given)."""
    runs = [r for r in ticket.runs if stage is None or r.stage == stage]
    return runs[-1] if runs else None


def _ticket_brief(brief: TicketBrief, actions: list[str], hosts: list[HostResultJson]) -> TicketBriefJson:
    """Return a ticket as lists show it, with its allowed actions and the hosts of its last release run."""
    return {
        "id": brief.id,
        "project": brief.project_name,
        "kind": brief.kind,
        "state": brief.state,
        "reason": brief.reason,
        "svn_paths": brief.svn_paths,
        "svn_revision": brief.svn_revision,
        "staging_revision": brief.staging_revision,
        "staging_commit": brief.staging_commit,
        "tested_commit": brief.tested_commit,
        "version": brief.version,
        "author": brief.author_name,
        "approved_by": brief.approved_by_name,
        "staging_url": brief.staging_url,
        "last_error": brief.last_error,
        "allowed_actions": actions,
        "created_at": _iso(brief.created_at),
        "updated_at": _iso(brief.updated_at),
        "hosts": hosts,
    }


def release_hosts(session: Session, ticket_ids: list[int]) -> dict[int, list[HostResultJson]]:
    """Return, by ticket id, the host results of each ticket's last release run (one query for a whole list)."""
    if not ticket_ids:
        return {}
    last_runs = (
        select(func.max(Run.id)).where(Run.ticket_id.in_(ticket_ids), Run.stage == "release").group_by(Run.ticket_id)
    )
    rows = session.execute(
        select(Run.ticket_id, HostResult.host, HostResult.status, HostResult.message)
        .join(HostResult, HostResult.run_id == Run.id)
        .where(Run.id.in_(last_runs))
        .order_by(HostResult.host)  # as Run.hosts is ordered
    )
    hosts: dict[int, list[HostResultJson]] = {}
    for ticket_id, host, status, message in rows:
        hosts.setdefault(ticket_id, []).append({"host": host, "status": status, "message": message})
    return hosts


def tickets_brief_json(session: Session, briefs: list[TicketBrief], user: User) -> list[TicketBriefJson]:
    """Return a page of tickets as the API's list shows them (one query for their hosts, no ORM objects)."""
    hosts = release_hosts(session, [b.id for b in briefs])
    return [_ticket_brief(b, brief_actions(b, user), hosts.get(b.id, [])) for b in briefs]


def ticket_json(ticket: Ticket, user: User) -> TicketJson:
    """Return a ticket as the API shows it to `user` (lists show less: tickets_brief_json)."""
    release_run = last_run(ticket, "release")
    hosts = run_json(release_run)["hosts"] if release_run else []
    data = _ticket_brief(ticket_brief(ticket), allowed_actions(ticket, user), hosts)
    if ticket.state in CHANGE_STATES:
        data["changes"] = preview(db.session, ticket)
    data["last_run"] = run_json(last_run(ticket))
    gray_run = last_run(ticket, "release")
    live = gray_run is not None and gray_run.status in ("queued", "running")
    data["batches"] = batches_json(ticket, progress(gray_run) if live else None)
    # {host: {added, modified, deleted, version}} when the last release failed on drift (retry can overwrite it).
    data["drift"] = last_drift(ticket) if ticket.state == "release_failed" else {}
    data["history"] = [
        {
            "action": e.action,
            "from": e.from_state,
            "to": e.to_state,
            "user": e.user.username if e.user else "system",
            "at": _iso(e.at),
            "comment": e.comment,
        }
        for e in ticket.history
    ]
    data["notifications"] = [notify.delivery_json(d) for d in notify.ticket_deliveries(db.session, ticket)]
    return data


def release_json(release: Release, project: Project) -> ReleaseJson:
    """Return one version of a project as the release history shows it."""
    live = release.version == project.live_version
    run_hosts: list[str] = []
    if live:
        runs = [r for r in release.ticket.runs if r.stage == "release" and r.status == "successful"]
        runs += [r for r in _rollback_runs(release) if r.status == "successful"]
        if runs:
            run_hosts = [h.host for h in max(runs, key=lambda r: r.id).hosts]
    return {
        "version": release.version,
        "ticket": release.ticket_id,
        "svn_revision": release.svn_revision,
        "commit": release.commit,
        "released_by": release.released_by.username if release.released_by else None,
        "released_at": _iso(release.created_at),
        "live": live,
        "bad": release.bad,
        "hosts": run_hosts,
    }


def _rollback_runs(release: Release) -> list[Run]:
    """Return release runs of rollback tickets that targeted this version."""
    return list(
        db.session.scalars(
            select(Run)
            .join(Ticket)
            .where(
                Ticket.project_id == release.project_id,
                Ticket.kind == "rollback",
                Ticket.version == release.version,
                Run.stage == "release",
            )
        )
    )


def replay_command(run: Run) -> list[str]:
    """Return the command ops type to replay a run by hand (`ansible-runner run <dir> -p <playbook>`)."""
    return replay_argv(run.run_dir, stage(run.stage).playbook)


def host_state_json(row: HostState) -> HostStateJson:
    """Return one host's row of the fleet table."""
    drift = row.drift or {}
    return {
        "host": row.host,
        "version": row.version,
        "state": row.state,
        "drift": {k: list(drift.get(k) or []) for k in ("added", "modified", "deleted")},
        "message": row.message,
        "checked_at": _iso(row.checked_at),
    }


def fleet_json(project: Project) -> FleetJson:
    """Return the fleet table of a project: each host as the last verify or release found it."""
    rows = fleet(db.session, project)
    return {
        "project": project.name,
        "live_version": project.live_version,
        "checked_at": _iso(max((r.checked_at for r in rows), default=None)),
        "verify_pending": is_pending(project.id),
        "hosts": [host_state_json(r) for r in rows],
    }
