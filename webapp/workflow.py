"""The ticket state machine: states, actions, who may fire them. Pure (stdlib only).

Views render buttons from `allowed_actions`, services call `transition` before every change,
and jobs fire the system events through `system_transition`. Nothing else decides a state.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    """Ticket states; the values are part of the API."""

    PENDING_STAGING = "pending_staging"  # waiting for a worker to update staging
    STAGING_UPDATING = "staging_updating"  # svn update + snapshot commit running
    STAGING_FAILED = "staging_failed"  # svn update failed; message shown
    TESTING = "testing"  # staging shows the change at its URL
    RETURNED = "returned"  # developer is fixing; may edit paths and reason
    PENDING_APPROVAL = "pending_approval"  # waiting for a lead of the project
    REJECTED = "rejected"  # a lead said no, with a reason
    APPROVED = "approved"  # the developer holds the right to release
    RELEASING = "releasing"  # worker tags, syncs, switches hosts
    RELEASE_PAUSED = "release_paused"  # gray release: a healthy batch serves N, the next waits for `continue`
    RELEASE_FAILED = "release_failed"  # per-host results shown; retryable
    RELEASED = "released"  # version N is live on every host
    CANCELLED = "cancelled"  # withdrawn


class Kind(StrEnum):
    """Ticket kinds: a release ships a tested staging commit, a rollback re-ships an older version."""

    RELEASE = "release"
    ROLLBACK = "rollback"


class Role(StrEnum):
    """A user's role in one project."""

    DEVELOPER = "developer"
    LEAD = "lead"


# Named groups of states.
TERMINAL = frozenset({State.RELEASED, State.CANCELLED})
RUNNING = frozenset({State.STAGING_UPDATING, State.RELEASING})  # a worker owns the ticket
MIXED = frozenset({State.RELEASE_PAUSED})  # some hosts serve the new version, the others the live one
QUEUED = frozenset({State.PENDING_STAGING})
EDITABLE = frozenset({State.STAGING_FAILED, State.RETURNED, State.REJECTED})  # paths/reason may change

# User actions, as they appear in URLs and the API.
RETURN = "return"
RESUBMIT = "resubmit"
TEST_PASSED = "test-passed"
APPROVE = "approve"
REJECT = "reject"
RELEASE = "release"
RETRY = "retry"
CANCEL = "cancel"
CONTINUE = "continue"  # gray release: switch the next batch
ABORT = "abort"  # gray release: switch every host back to the live version
USER_ACTIONS = (RETURN, RESUBMIT, TEST_PASSED, APPROVE, REJECT, RELEASE, RETRY, CONTINUE, ABORT, CANCEL)

# Who may fire an action: the ticket's own side (author or any lead) or the approving side (a lead).
OWNER_ACTIONS = frozenset({RETURN, RESUBMIT, TEST_PASSED, RELEASE, RETRY, CONTINUE, ABORT, CANCEL})
LEAD_ACTIONS = frozenset({APPROVE, REJECT})

# (kind, action, from_state) -> to_state. `None` kind means both kinds.
_USER_TABLE: dict[tuple[Kind | None, str, State], State] = {
    (Kind.RELEASE, RETURN, State.TESTING): State.RETURNED,  # views.ticket_action / api
    (Kind.RELEASE, RESUBMIT, State.RETURNED): State.PENDING_STAGING,  # enqueues staging update
    (Kind.RELEASE, RESUBMIT, State.STAGING_FAILED): State.PENDING_STAGING,
    (Kind.RELEASE, RESUBMIT, State.REJECTED): State.PENDING_STAGING,
    (Kind.ROLLBACK, RESUBMIT, State.REJECTED): State.PENDING_APPROVAL,
    (Kind.RELEASE, TEST_PASSED, State.TESTING): State.PENDING_APPROVAL,  # or APPROVED, see below
    (None, APPROVE, State.PENDING_APPROVAL): State.APPROVED,
    (None, REJECT, State.PENDING_APPROVAL): State.REJECTED,
    (None, RELEASE, State.APPROVED): State.RELEASING,  # enqueues the release job
    (None, RETRY, State.RELEASE_FAILED): State.RELEASING,  # failed hosts again, no new approval
    (None, CONTINUE, State.RELEASE_PAUSED): State.RELEASING,  # enqueues the next batch's run
    (None, ABORT, State.RELEASE_PAUSED): State.RELEASING,  # enqueues a run that switches every host back
    (Kind.RELEASE, CANCEL, State.PENDING_STAGING): State.CANCELLED,
    (Kind.RELEASE, CANCEL, State.STAGING_FAILED): State.CANCELLED,
    (Kind.RELEASE, CANCEL, State.TESTING): State.CANCELLED,
    (Kind.RELEASE, CANCEL, State.RETURNED): State.CANCELLED,
    (None, CANCEL, State.PENDING_APPROVAL): State.CANCELLED,
    (None, CANCEL, State.REJECTED): State.CANCELLED,
    (None, CANCEL, State.APPROVED): State.CANCELLED,
    (None, CANCEL, State.RELEASE_FAILED): State.CANCELLED,
}

# System events fired by jobs and the reconciler.
STAGING_STARTED = "staging_started"
STAGING_SUCCEEDED = "staging_succeeded"
STAGING_FAILED = "staging_failed"
RELEASE_SUCCEEDED = "release_succeeded"
RELEASE_FAILED = "release_failed"
RELEASE_REFUSED = "release_refused"  # production moved past the tested commit: back to testing
RELEASE_PAUSE = "release_pause"  # a healthy batch is live; the project pauses between batches (manual)
APPROVAL_VOIDED = "approval_voided"  # a rollback abandoned a release this approval carries

_SYSTEM_TABLE: dict[tuple[str, State], State] = {
    (STAGING_STARTED, State.PENDING_STAGING): State.STAGING_UPDATING,  # jobs.staging
    (STAGING_SUCCEEDED, State.STAGING_UPDATING): State.TESTING,  # jobs.staging
    (STAGING_FAILED, State.STAGING_UPDATING): State.STAGING_FAILED,  # jobs.staging, reconciler
    (STAGING_FAILED, State.PENDING_STAGING): State.STAGING_FAILED,  # reconciler: job lost before start
    (RELEASE_SUCCEEDED, State.RELEASING): State.RELEASED,  # jobs.release
    (RELEASE_FAILED, State.RELEASING): State.RELEASE_FAILED,  # jobs.release, reconciler
    (RELEASE_REFUSED, State.RELEASING): State.TESTING,  # jobs.release integrity check
    (RELEASE_PAUSE, State.RELEASING): State.RELEASE_PAUSED,  # jobs.release: manual batches
    (APPROVAL_VOIDED, State.PENDING_APPROVAL): State.TESTING,  # services.rollback
    (APPROVAL_VOIDED, State.APPROVED): State.TESTING,
}


@dataclass(frozen=True)
class TicketFacts:
    """What the state machine needs to know about a ticket."""

    state: State
    kind: Kind
    author_id: int
    requires_approval: bool = True
    allow_self_approval: bool = False
    # Who else changed the ticket's content (paths, revision, reason) or marked it tested: for the
    # self-approval rule they count as authors, so nobody approves work they shaped or vouched for.
    contributor_ids: frozenset[int] = frozenset()

    def is_own(self, user_id: int) -> bool:
        """Tell whether `user_id` filed, changed or tested this ticket (four eyes: may not approve it)."""
        return user_id == self.author_id or user_id in self.contributor_ids


@dataclass(frozen=True)
class Actor:
    """What the state machine needs to know about the user acting on one project."""

    user_id: int
    role: Role | None  # None: not a member of the ticket's project
    is_admin: bool = False


class TransitionError(Exception):
    """An action that is not allowed; `status` is the HTTP code that fits it."""

    def __init__(self, message: str, status: int, /, **params: object) -> None:
        # An English template and its parameters, as for webapp.errors.DomainError (pages translate it).
        self.template = message
        self.params = params
        super().__init__(message % params if params else message)
        self.status = status


def target_state(kind: Kind, action: str, state: State, requires_approval: bool = True) -> State | None:
    """Return the state an action leads to from `state`, or None when the table has no such move."""
    to = _USER_TABLE.get((kind, action, state)) or _USER_TABLE.get((None, action, state))
    if to is State.PENDING_APPROVAL and action == TEST_PASSED and not requires_approval:
        return State.APPROVED
    return to


def check_permission(ticket: TicketFacts, actor: Actor, action: str) -> None:
    """Raise TransitionError(403) unless `actor` may fire `action` on this ticket at all."""
    if action not in USER_ACTIONS:
        raise TransitionError("unknown action %(action)r", 404, action=action)
    if actor.is_admin:
        return  # admins act as leads everywhere; self-approval by an admin is recorded as an override
    if actor.role is None:
        raise TransitionError("you are not a member of this project", 403)
    if action in LEAD_ACTIONS:
        if actor.role is not Role.LEAD:
            raise TransitionError("only a lead of the project may %(action)s", 403, action=action)
        if ticket.is_own(actor.user_id) and not ticket.allow_self_approval:
            raise TransitionError("you cannot approve or reject your own ticket (you filed, changed or tested it)", 403)
        return
    if actor.role is not Role.LEAD and ticket.author_id != actor.user_id:
        raise TransitionError("only the ticket's author or a lead may %(action)s", 403, action=action)


def transition(ticket: TicketFacts, actor: Actor, action: str) -> State:
    """Return the new state for a user action, or raise TransitionError (403 who, 409 when)."""
    check_permission(ticket, actor, action)
    to = target_state(ticket.kind, action, ticket.state, ticket.requires_approval)
    if to is None:
        raise TransitionError(
            "cannot %(action)s a %(kind)s ticket in state %(state)s",
            409,
            action=action,
            kind=str(ticket.kind),
            state=str(ticket.state),
        )
    return to


def allowed_actions(ticket: TicketFacts, actor: Actor) -> list[str]:
    """Return the user actions `actor` may fire now, in display order."""
    return list(_allowed_actions(ticket, actor))


@functools.lru_cache(maxsize=4096)
def _allowed_actions(ticket: TicketFacts, actor: Actor) -> tuple[str, ...]:
    """Return allowed_actions as a tuple, remembered: a list asks it for many tickets with the same facts."""
    allowed = []
    for action in USER_ACTIONS:
        try:
            transition(ticket, actor, action)
        except TransitionError:
            continue
        allowed.append(action)
    return tuple(allowed)


def system_transition(event: str, state: State) -> State:
    """Return the new state for a system event, or raise TransitionError(409)."""
    to = _SYSTEM_TABLE.get((event, state))
    if to is None:
        raise TransitionError("event %(event)s does not apply in state %(state)s", 409, event=event, state=str(state))
    return to


def is_self_approval_override(ticket: TicketFacts, actor: Actor, action: str) -> bool:
    """Tell whether an admin is approving a ticket they filed, changed or tested where the project forbids it."""
    return action in LEAD_ACTIONS and actor.is_admin and ticket.is_own(actor.user_id) and not ticket.allow_self_approval
