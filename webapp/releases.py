"""Release history, rollback tickets, and what a release would ship ("ship exactly what was tested")."""

from __future__ import annotations

from pathlib import Path

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs import snapshots

from . import notify, tickets, validation, workflow
from .errors import BadInput, Conflict, Forbidden, NotFound
from .models import Project, Release, Run, Ticket, TicketEvent, User
from .workflow import Kind, State


def snapshot_git_dir(project: Project) -> Path:
    """Return the project's staging snapshot repository."""
    return Path(current_app.config["FERRY_DATA_DIR"]) / "projects" / project.name / "staging.git"


def get_release(session: Session, project: Project, version: int | None) -> Release | None:
    """Return one version of a project, or None."""
    if version is None:
        return None
    return session.scalar(select(Release).where(Release.project_id == project.id, Release.version == version))


def live_release(session: Session, project: Project) -> Release | None:
    """Return the version production runs now."""
    return get_release(session, project, project.live_version)


def next_version(session: Session, project: Project) -> int:
    """Return the next integer version: above every release and every version a release ticket reserved."""
    released = session.scalar(select(func.max(Release.version)).where(Release.project_id == project.id)) or 0
    reserved = session.scalar(
        select(func.max(Ticket.version)).where(Ticket.project_id == project.id, Ticket.kind == Kind.RELEASE.value)
    )
    return max(released, reserved or 0) + 1


def history(session: Session, project: Project) -> list[Release]:
    """Return a project's versions, newest first."""
    return list(
        session.scalars(select(Release).where(Release.project_id == project.id).order_by(Release.version.desc()))
    )


def protected_versions(session: Session, project: Project) -> list[int]:
    """Return versions that pruning must keep: targets of rollbacks not yet done."""
    open_states = [s.value for s in State if s not in workflow.TERMINAL]
    rows = session.scalars(
        select(Ticket.version).where(
            Ticket.project_id == project.id, Ticket.kind == Kind.ROLLBACK.value, Ticket.state.in_(open_states)
        )
    )
    return sorted(v for v in rows if v is not None)


def create_rollback(session: Session, project_name: object, user: User, version: object, reason: object) -> Ticket:
    """File a rollback ticket to an earlier version; it starts waiting for approval."""
    if not isinstance(project_name, str) or not project_name:
        raise BadInput("project: required", "project")
    project = session.scalar(select(Project).where(Project.name == project_name))
    if project is None or not tickets.can_see(user, project):
        raise NotFound(f"project {project_name!r} not found", "project")
    if not user.is_admin and user.role_in(project) is None:
        raise Forbidden("you are not a member of this project")
    version = validation.integer(version, "version", minimum=1)  # the API passes ints only, forms digits
    target = get_release(session, project, version)
    if target is None:
        raise NotFound(f"version {version} of {project.name} not found", "version")
    if version == project.live_version:
        raise Conflict(f"version {version} is already live")
    ticket = Ticket(
        project=project,
        kind=Kind.ROLLBACK.value,
        state=State.PENDING_APPROVAL.value,
        reason=validation.reason(reason),
        svn_paths=[],
        version=version,
        tested_commit=target.commit,
        staging_revision=target.svn_revision,
        author=user,
    )
    session.add(ticket)
    session.flush()
    session.add(
        TicketEvent(
            ticket_id=ticket.id,
            action="request-rollback",
            to_state=ticket.state,
            user_id=user.id,
            comment=f"roll back to version {version}",
        )
    )
    session.flush()
    notify.on_transition(
        session, ticket, "request-rollback", None, ticket.state, user, f"roll back to version {version}"
    )
    return ticket


def ship_target(ticket: Ticket) -> str | None:
    """Return the snapshot releasing `ticket` would ship: the tested one, else what staging serves now."""
    if ticket.tested_commit:
        return ticket.tested_commit
    return ticket.project.staging_commit or ticket.staging_commit


def preview(session: Session, ticket: Ticket) -> dict:
    """Describe what releasing `ticket` would change against the live version.

    files: the exact difference between the live tree and the tree that will ship (empty directories too);
    diffs: text diffs of those files (capped); included_tickets: other tickets whose staging snapshots
    (successful or failed half-way) ride along; unversioned: files staging shows that are not versioned
    and will not ship; staging_moved_on: whether staging now serves a newer snapshot than the tested one.
    """
    project = ticket.project
    target = ship_target(ticket)
    empty = {
        "base_version": project.live_version,
        "target": target,
        "files": [],
        "diffs": [],
        "included_tickets": [],
        "unversioned": [],
        "staging_commit": project.staging_commit,
        "staging_moved_on": False,
    }
    if not target:
        return empty
    live = live_release(session, project)
    git_dir = snapshot_git_dir(project)
    base = live.commit if live else None
    included = []
    if ticket.kind == Kind.RELEASE.value:
        commits = set(snapshots.commits_between(git_dir, base, target))
        runs = session.scalars(
            select(Run).where(
                Run.project_id == project.id,
                Run.stage == "staging",
                Run.commit.is_not(None),
                Run.ticket_id != ticket.id,
            )
        )
        # A ticket rides along when any of its staging snapshots (a failed run's too) is in the range.
        seen: set[int] = set()
        for run in runs:
            if run.commit in commits and run.ticket_id not in seen:
                seen.add(run.ticket_id)
                other = run.ticket
                included.append({"id": other.id, "state": other.state, "reason": other.reason})
        included.sort(key=lambda t: t["id"])
    snapshot_run = session.scalar(
        select(Run).where(Run.project_id == project.id, Run.stage == "staging", Run.commit == target).order_by(Run.id)
    )
    outputs = (snapshot_run.outputs or {}) if snapshot_run else {}
    return {
        **empty,
        "files": snapshots.changed_files(git_dir, base, target),
        "diffs": snapshots.text_diffs(git_dir, base, target),
        "included_tickets": included,
        "unversioned": list(outputs.get("unversioned") or []),
        "staging_moved_on": bool(ticket.tested_commit and project.staging_commit not in (None, ticket.tested_commit)),
    }
