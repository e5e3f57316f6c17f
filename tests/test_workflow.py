"""The pure state machine: every allowed transition, every refused pair, who may fire what."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from webapp import workflow as wf
from webapp.workflow import Actor, Kind, Role, State, TicketFacts, TransitionError

AUTHOR = Actor(user_id=1, role=Role.DEVELOPER)
OTHER_DEV = Actor(user_id=2, role=Role.DEVELOPER)
LEAD = Actor(user_id=3, role=Role.LEAD)
STRANGER = Actor(user_id=4, role=None)
ADMIN = Actor(user_id=5, role=None, is_admin=True)

EXPECTED = {
    (Kind.RELEASE, wf.RETURN, State.TESTING): State.RETURNED,
    (Kind.RELEASE, wf.RESUBMIT, State.RETURNED): State.PENDING_STAGING,
    (Kind.RELEASE, wf.RESUBMIT, State.STAGING_FAILED): State.PENDING_STAGING,
    (Kind.RELEASE, wf.RESUBMIT, State.REJECTED): State.PENDING_STAGING,
    (Kind.ROLLBACK, wf.RESUBMIT, State.REJECTED): State.PENDING_APPROVAL,
    (Kind.RELEASE, wf.TEST_PASSED, State.TESTING): State.PENDING_APPROVAL,
    (Kind.RELEASE, wf.CANCEL, State.PENDING_STAGING): State.CANCELLED,
    (Kind.RELEASE, wf.CANCEL, State.STAGING_FAILED): State.CANCELLED,
    (Kind.RELEASE, wf.CANCEL, State.TESTING): State.CANCELLED,
    (Kind.RELEASE, wf.CANCEL, State.RETURNED): State.CANCELLED,
}
for kind in Kind:
    EXPECTED[(kind, wf.APPROVE, State.PENDING_APPROVAL)] = State.APPROVED
    EXPECTED[(kind, wf.REJECT, State.PENDING_APPROVAL)] = State.REJECTED
    EXPECTED[(kind, wf.RELEASE, State.APPROVED)] = State.RELEASING
    EXPECTED[(kind, wf.RETRY, State.RELEASE_FAILED)] = State.RELEASING
    EXPECTED[(kind, wf.CONTINUE, State.RELEASE_PAUSED)] = State.RELEASING
    EXPECTED[(kind, wf.ABORT, State.RELEASE_PAUSED)] = State.RELEASING
    for s in (State.PENDING_APPROVAL, State.REJECTED, State.APPROVED, State.RELEASE_FAILED):
        EXPECTED[(kind, wf.CANCEL, s)] = State.CANCELLED


def facts(state: State, kind: Kind = Kind.RELEASE, **kw) -> TicketFacts:
    """Return a ticket filed by AUTHOR."""
    return TicketFacts(state=state, kind=kind, author_id=AUTHOR.user_id, **kw)


@pytest.mark.parametrize("kind,action,state", list(itertools.product(Kind, wf.USER_ACTIONS, State)))
def test_table_allows_exactly_the_expected_moves(kind, action, state):
    """A lead (not the author) may fire exactly the moves in the table; everything else is 409."""
    expected = EXPECTED.get((kind, action, state))
    if expected is None:
        with pytest.raises(TransitionError) as e:
            wf.transition(facts(state, kind), LEAD, action)
        assert e.value.status == 409
    else:
        assert wf.transition(facts(state, kind), LEAD, action) is expected


def test_terminal_states_allow_nothing():
    """Released and cancelled tickets have no actions for anyone."""
    for state in wf.TERMINAL:
        for who in (AUTHOR, LEAD, ADMIN):
            assert wf.allowed_actions(facts(state), who) == []


def test_running_states_allow_nothing():
    """While a worker owns the ticket, no user action applies."""
    for state in wf.RUNNING:
        assert wf.allowed_actions(facts(state), LEAD) == []


def test_test_passed_skips_approval_when_project_needs_none():
    """A project without approval goes from testing straight to approved."""
    assert wf.transition(facts(State.TESTING, requires_approval=False), AUTHOR, wf.TEST_PASSED) is State.APPROVED


def test_author_cannot_approve_own_ticket_by_default():
    """Self-approval is refused with 403 unless the project allows it."""
    lead_author = Actor(user_id=AUTHOR.user_id, role=Role.LEAD)
    with pytest.raises(TransitionError) as e:
        wf.transition(facts(State.PENDING_APPROVAL), lead_author, wf.APPROVE)
    assert e.value.status == 403
    allowed = facts(State.PENDING_APPROVAL, allow_self_approval=True)
    assert wf.transition(allowed, lead_author, wf.APPROVE) is State.APPROVED


def test_contributors_count_as_authors_for_approval():
    """A lead who changed the ticket's content or marked it tested may not approve or reject it (four eyes)."""
    shaped = facts(State.PENDING_APPROVAL, contributor_ids=frozenset({LEAD.user_id}))
    for action in (wf.APPROVE, wf.REJECT):
        with pytest.raises(TransitionError) as e:
            wf.transition(shaped, LEAD, action)
        assert e.value.status == 403 and "own ticket" in str(e.value)
    assert wf.APPROVE not in wf.allowed_actions(shaped, LEAD)
    assert wf.transition(facts(State.PENDING_APPROVAL), LEAD, wf.APPROVE) is State.APPROVED
    assert wf.transition(replace(shaped, allow_self_approval=True), LEAD, wf.APPROVE) is State.APPROVED
    # Contributing does not take the lead's other rights away, nor give a developer new ones.
    assert wf.transition(replace(shaped, state=State.APPROVED), LEAD, wf.RELEASE) is State.RELEASING
    admin_shaped = facts(State.PENDING_APPROVAL, contributor_ids=frozenset({ADMIN.user_id}))
    assert wf.is_self_approval_override(admin_shaped, ADMIN, wf.APPROVE)


def test_developers_cannot_approve_or_reject():
    """Approving and rejecting are a lead's."""
    for action in (wf.APPROVE, wf.REJECT):
        with pytest.raises(TransitionError) as e:
            wf.transition(facts(State.PENDING_APPROVAL), OTHER_DEV, action)
        assert e.value.status == 403


def test_other_developers_cannot_drive_someone_elses_ticket():
    """Only the author or a lead may return, pass, release, retry or cancel."""
    with pytest.raises(TransitionError) as e:
        wf.transition(facts(State.TESTING), OTHER_DEV, wf.TEST_PASSED)
    assert e.value.status == 403
    assert wf.transition(facts(State.TESTING), AUTHOR, wf.TEST_PASSED) is State.PENDING_APPROVAL
    assert wf.transition(facts(State.APPROVED), LEAD, wf.RELEASE) is State.RELEASING


def test_non_members_get_403_before_state_is_considered():
    """A stranger is refused with 403 even for an action that is wrong in this state."""
    for action in wf.USER_ACTIONS:
        with pytest.raises(TransitionError) as e:
            wf.transition(facts(State.RELEASED), STRANGER, action)
        assert e.value.status == 403


def test_admin_self_approval_is_an_override():
    """An admin may approve their own ticket; the service records it as an override."""
    own = TicketFacts(state=State.PENDING_APPROVAL, kind=Kind.RELEASE, author_id=ADMIN.user_id)
    assert wf.transition(own, ADMIN, wf.APPROVE) is State.APPROVED
    assert wf.is_self_approval_override(own, ADMIN, wf.APPROVE)
    assert not wf.is_self_approval_override(facts(State.PENDING_APPROVAL), ADMIN, wf.APPROVE)


def test_allowed_actions_for_author_in_testing():
    """The buttons the author sees in testing come from the table."""
    assert wf.allowed_actions(facts(State.TESTING), AUTHOR) == [wf.RETURN, wf.TEST_PASSED, wf.CANCEL]
    assert wf.allowed_actions(facts(State.PENDING_APPROVAL), LEAD) == [wf.APPROVE, wf.REJECT, wf.CANCEL]
    assert wf.allowed_actions(facts(State.PENDING_APPROVAL), OTHER_DEV) == []


@pytest.mark.parametrize(
    "event,before,after",
    [
        (wf.STAGING_STARTED, State.PENDING_STAGING, State.STAGING_UPDATING),
        (wf.STAGING_SUCCEEDED, State.STAGING_UPDATING, State.TESTING),
        (wf.STAGING_FAILED, State.STAGING_UPDATING, State.STAGING_FAILED),
        (wf.STAGING_FAILED, State.PENDING_STAGING, State.STAGING_FAILED),
        (wf.RELEASE_SUCCEEDED, State.RELEASING, State.RELEASED),
        (wf.RELEASE_FAILED, State.RELEASING, State.RELEASE_FAILED),
        (wf.RELEASE_REFUSED, State.RELEASING, State.TESTING),
        (wf.APPROVAL_VOIDED, State.APPROVED, State.TESTING),
        (wf.APPROVAL_VOIDED, State.PENDING_APPROVAL, State.TESTING),
    ],
)
def test_system_events(event, before, after):
    """Jobs move tickets only along the system table."""
    assert wf.system_transition(event, before) is after


def test_system_events_refused_elsewhere():
    """A system event in a state it does not apply to is a 409, e.g. a late job after cancel."""
    with pytest.raises(TransitionError) as e:
        wf.system_transition(wf.STAGING_SUCCEEDED, State.CANCELLED)
    assert e.value.status == 409
    with pytest.raises(TransitionError):
        wf.system_transition(wf.RELEASE_SUCCEEDED, State.APPROVED)


def test_unknown_action_is_404():
    """An action name that does not exist is a 404."""
    with pytest.raises(TransitionError) as e:
        wf.transition(facts(State.TESTING), AUTHOR, "deploy-now")
    assert e.value.status == 404
