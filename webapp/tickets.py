"""Ticket services: filing, user actions and system events, all through the one state machine.

Services take the session, never commit, and raise domain errors. State changes are
compare-and-set (`UPDATE ... WHERE state = :expected`) with one history row in the same transaction.
"""

from __future__ import annotations

import json

from sqlalchemy import select, update
from sqlalchemy.orm import Session, joinedload

from . import notify, validation, workflow
from .errors import BadInput, Conflict, NotFound, from_status
from .fleet import drift_line
from .listing import TicketBrief
from .models import Project, Run, Ticket, TicketEvent, User, utcnow
from .workflow import Kind, State


def facts(ticket: Ticket) -> workflow.TicketFacts:
    """Return what the state machine needs to know about `ticket`."""
    return _facts(ticket, ticket.project)


def _facts(ticket: Ticket | TicketBrief, settings: Project | TicketBrief) -> workflow.TicketFacts:
    """Return the state machine's facts of a ticket, its project's approval rules read from `settings` (the
    project, or a list's TicketBrief row, which carries them)."""
    return workflow.TicketFacts(
        state=State(ticket.state),
        kind=Kind(ticket.kind),
        author_id=ticket.author_id,
        requires_approval=settings.requires_approval,
        allow_self_approval=settings.allow_self_approval,
        contributor_ids=frozenset(ticket.contributor_ids or ()),
    )


def actor(user: User, project_id: int) -> workflow.Actor:
    """Return what the state machine needs to know about `user` in the project with id `project_id`."""
    return workflow.Actor(user_id=user.id, role=user.role_in_project(project_id), is_admin=user.is_admin)


def allowed_actions(ticket: Ticket, user: User) -> list[str]:
    """Return the actions `user` may fire on `ticket` now."""
    return workflow.allowed_actions(facts(ticket), actor(user, ticket.project_id))


def brief_actions(brief: TicketBrief, user: User) -> list[str]:
    """Return the actions `user` may fire now on a ticket of a list (its TicketBrief row: no ORM objects)."""
    return workflow.allowed_actions(_facts(brief, brief), actor(user, brief.project_id))


def can_see(user: User, project: Project) -> bool:
    """Tell whether `user` may see `project` and its tickets."""
    return user.is_admin or user.role_in(project) is not None


def visible_project_ids(session: Session, user: User) -> list[int]:
    """Return the ids of the projects `user` may see."""
    if user.is_admin:
        return list(session.scalars(select(Project.id)))
    return [m.project_id for m in user.memberships]


def get_ticket(session: Session, ticket_id: int, user: User) -> Ticket:
    """Return a ticket visible to `user` or raise NotFound."""
    # With what every view of a ticket shows: its project, author and approver (one query, not four).
    people = [joinedload(Ticket.project), joinedload(Ticket.author), joinedload(Ticket.approved_by)]
    ticket = session.get(Ticket, ticket_id, options=people)
    if ticket is None or not can_see(user, ticket.project):
        raise NotFound("ticket %(id)s not found", id=ticket_id)
    return ticket


def set_state(
    session: Session,
    ticket: Ticket,
    expected: State,
    new: State,
    action: str,
    user: User | None,
    comment: str = "",
    notify_as: str | None = None,
    **fields: object,
) -> None:
    """Move `ticket` from `expected` to `new` atomically, with a history row, or raise Conflict.

    Every transition passes here, so this is also where notifications are recorded (same transaction;
    enqueued after commit). `notify_as` names the action for notifications when it differs (run_lost).
    """
    now = utcnow()
    result = session.execute(
        update(Ticket)
        .where(Ticket.id == ticket.id, Ticket.state == expected.value)
        .values(state=new.value, updated_at=now, **fields)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise Conflict("ticket %(id)s changed meanwhile; reload and try again", id=ticket.id)
    session.add(
        TicketEvent(
            ticket_id=ticket.id,
            action=action,
            from_state=expected.value,
            to_state=new.value,
            user_id=user.id if user else None,
            comment=comment,
            at=now,
        )
    )
    session.flush()
    session.refresh(ticket)
    notify.on_transition(session, ticket, notify_as or action, expected.value, new.value, user, comment)


def _queue_run(session: Session, ticket: Ticket, stage: str, user: User | None, **fields: object) -> Run:
    """Record a run waiting for a worker; the caller enqueues it after commit."""
    run = Run(ticket_id=ticket.id, project_id=ticket.project_id, stage=stage, started_by=user, **fields)
    session.add(run)
    session.flush()
    return run


def create_ticket(
    session: Session, project_name: object, user: User, reason: object, paths: object, revision: object
) -> tuple[Ticket, Run]:
    """File a release ticket and queue its first staging update."""
    if not isinstance(project_name, str) or not project_name:
        raise BadInput("project: required", "project")
    project = session.scalar(select(Project).where(Project.name == project_name))
    if project is None or not can_see(user, project):
        raise NotFound("project %(name)r not found", "project", name=project_name)
    if not user.is_admin and user.role_in(project) is None:
        raise from_status("you are not a member of this project", 403)
    ticket = Ticket(
        project=project,
        kind=Kind.RELEASE.value,
        state=State.PENDING_STAGING.value,
        reason=validation.reason(reason),
        svn_paths=validation.svn_paths(paths),
        svn_revision=validation.svn_revision(revision),
        author=user,
    )
    session.add(ticket)
    session.flush()
    session.add(TicketEvent(ticket_id=ticket.id, action="file", to_state=ticket.state, user_id=user.id))
    run = _queue_run(session, ticket, "staging", user)
    return ticket, run


def act(session: Session, ticket: Ticket, user: User, action: str, data: dict | None = None) -> Run | None:
    """Fire a user action on `ticket`; return the run to enqueue after commit, if any."""
    data = data or {}
    f = facts(ticket)
    a = actor(user, ticket.project_id)
    try:
        new = workflow.transition(f, a, action)
    except workflow.TransitionError as e:
        raise from_status(e.template, e.status, **e.params) from e
    comment = validation.comment(data.get("comment"))
    fields: dict[str, object] = {}
    changes: list[str] = []
    if action == workflow.REJECT:
        comment = validation.reason(data.get("reason") or data.get("comment"), "reason")
    if action == workflow.RESUBMIT and Kind(ticket.kind) is Kind.RELEASE:
        if "svn_paths" in data:
            fields["svn_paths"] = validation.svn_paths(data["svn_paths"])
        if "svn_revision" in data:
            fields["svn_revision"] = validation.svn_revision(data["svn_revision"])
        if data.get("reason"):
            fields["reason"] = validation.reason(data["reason"])
        fields["last_error"] = ""
        changes = content_changes(ticket, fields)
        comment = "; ".join([*changes, comment] if comment else changes)
    if action == workflow.TEST_PASSED:
        if not ticket.staging_commit:
            raise Conflict("staging has no snapshot for this ticket yet")
        # What the testers saw is what ships: the snapshot staging serves at this moment, which includes any
        # later update of another ticket (the lead sees those tickets listed as carried along).
        fields["tested_commit"] = ticket.project.staging_commit or ticket.staging_commit
        if new is State.APPROVED:
            comment = comment or "project needs no approval"
    if action == workflow.APPROVE:
        fields["approved_by_id"] = user.id
    if changes or action == workflow.TEST_PASSED:
        fields["contributor_ids"] = with_contributor(ticket, user)  # four eyes: may not approve it now
    if workflow.is_self_approval_override(f, a, action):
        comment = f"admin override: {action} of own ticket. {comment}".strip()
    if action in (workflow.RELEASE, workflow.RETRY):
        fields["last_error"] = ""
    overwrite = data.get("overwrite_drift") in (True, "1", "true", "on")
    if overwrite and action != workflow.RETRY:
        raise BadInput("overwrite_drift: only a retry can overwrite drift", "overwrite_drift")
    if overwrite:
        comment = "; ".join(filter(None, [_drift_comment(ticket), comment]))
    if action in (workflow.RELEASE, workflow.RETRY):
        check_no_paused_release(session, ticket)
    set_state(session, ticket, f.state, new, action, user, comment, **fields)
    if new is State.PENDING_STAGING:
        return _queue_run(session, ticket, "staging", user)
    if new is State.RELEASING:
        if action in (workflow.CONTINUE, workflow.ABORT):  # gray release: next batch, or everything back
            phase = "continue" if action == workflow.CONTINUE else "abort"
            return _queue_run(session, ticket, "release", user, outputs={"phase": phase})
        only = failed_hosts(ticket) if action == workflow.RETRY else []
        return _queue_run(session, ticket, "release", user, only_hosts=only, overwrite_drift=overwrite)
    return None


def check_no_paused_release(session: Session, ticket: Ticket) -> None:
    """Refuse to start a release while another ticket of the project is paused between gray batches."""
    paused = session.scalar(
        select(Ticket.id).where(
            Ticket.project_id == ticket.project_id,
            Ticket.id != ticket.id,
            Ticket.state == State.RELEASE_PAUSED.value,
        )
    )
    if paused is not None:
        raise Conflict("ticket #%(id)s is paused between gray-release batches: continue or abort it first", id=paused)


def content_changes(ticket: Ticket, fields: dict[str, object]) -> list[str]:
    """Describe each content field that `fields` changes, old → new, for the history."""
    shown = {
        "svn_paths": lambda v: f"[{', '.join(v)}]" if v else "[] (whole tree)",
        "svn_revision": lambda v: "HEAD" if v is None else str(v),
        "reason": lambda v: json.dumps(v, ensure_ascii=False),
    }
    return [
        f"{field}: {show(getattr(ticket, field))} → {show(fields[field])}"
        for field, show in shown.items()
        if field in fields and fields[field] != getattr(ticket, field)
    ]


def with_contributor(ticket: Ticket, user: User) -> list[int]:
    """Return the ticket's contributor ids with `user` added (the author is never listed)."""
    ids = list(ticket.contributor_ids or [])
    if user.id != ticket.author_id and user.id not in ids:
        ids.append(user.id)
    return ids


def failed_hosts(ticket: Ticket) -> list[str]:
    """Return the hosts a retry must stage: those that did not stage the version in the last release run.

    Empty means every host. A run that stopped before staging (a drift failure, a failed tag) staged none,
    so a retry re-stages every host, not only the failed ones; the run records which hosts staged.
    """
    runs = [r for r in ticket.runs if r.stage == "release"]
    if not runs:
        return []
    last = runs[-1]
    staged = set((last.outputs or {}).get("staged") or [])
    if not staged:
        return []
    return sorted({h.host for h in last.hosts} - staged)


def last_drift(ticket: Ticket) -> dict:
    """Return {host: {added, modified, deleted, version}} when the last release run failed on drift."""
    runs = [r for r in ticket.runs if r.stage == "release"]
    if not runs or runs[-1].status == "successful":
        return {}
    return dict((runs[-1].outputs or {}).get("drift") or {})


def _drift_comment(ticket: Ticket) -> str:
    """Name what a retry overwriting drift replaces: "retry overwriting drift on web2: modified index.php"."""
    drift = last_drift(ticket)
    if not drift:
        return "retry overwriting drift"
    return "retry overwriting drift on " + "; ".join(drift_line(h, drift[h]) for h in sorted(drift))


def fire(
    session: Session, ticket_id: int, event: str, comment: str = "", notify_as: str | None = None, **fields: object
) -> Ticket:
    """Fire a system event on a ticket (jobs, reconciler) through the state machine."""
    ticket = session.get(Ticket, ticket_id)
    if ticket is None:
        raise NotFound("ticket %(id)s not found", id=ticket_id)
    session.refresh(ticket)
    current = State(ticket.state)
    try:
        new = workflow.system_transition(event, current)
    except workflow.TransitionError as e:
        raise Conflict(e.template, **e.params) from e
    set_state(session, ticket, current, new, event, None, comment, notify_as, **fields)
    return ticket


def check_expected_state(ticket: Ticket, expected: object) -> None:
    """Refuse a stale form: the state the user saw must still be the ticket's state."""
    if expected and expected != ticket.state:
        raise Conflict(
            "ticket %(id)s is now %(state)s, not %(expected)s; reload the page",
            id=ticket.id,
            state=ticket.state,
            expected=str(expected),
        )
