"""Who may do what, through the real JSON API: every action × role × state, with exact status codes.

Tickets are forced into each state directly in the database (no workers), and every refusal is checked
to change nothing: ticket state, history rows, runs, and the RQ queue in Redis. The expected codes come
from the tables below, written from the spec, not from `workflow` (so a state machine bug shows here).
"""

from __future__ import annotations

import re

import pytest
from redis import Redis
from rq import Queue
from sqlalchemy import func, select

from tests.conftest import PASSWORD, build_world
from webapp import projects as svc
from webapp.auth import issue_token
from webapp.extensions import db
from webapp.live import cancel_key
from webapp.models import Release, Run, Ticket, TicketEvent, User

pytestmark = pytest.mark.integration


RELEASE, ROLLBACK = "release", "rollback"
ACTIONS = ("return", "resubmit", "test-passed", "approve", "reject", "release", "retry", "continue", "abort", "cancel")
STATES = (
    "pending_staging",
    "staging_updating",
    "staging_failed",
    "testing",
    "returned",
    "pending_approval",
    "rejected",
    "approved",
    "releasing",
    "release_paused",
    "release_failed",
    "released",
    "cancelled",
)
# A rollback ticket starts waiting for approval, so it never sees the staging states.
ROLLBACK_STATES = (
    "pending_approval",
    "rejected",
    "approved",
    "releasing",
    "release_paused",
    "release_failed",
    "released",
    "cancelled",
)
CANCELLABLE = ("pending_approval", "rejected", "approved", "release_failed")

# action -> kind -> {from state: to state}: the spec of the ticket life cycle.
MOVES: dict[str, dict[str, dict[str, str]]] = {
    "return": {RELEASE: {"testing": "returned"}, ROLLBACK: {}},
    "resubmit": {
        RELEASE: {"returned": "pending_staging", "staging_failed": "pending_staging", "rejected": "pending_staging"},
        ROLLBACK: {"rejected": "pending_approval"},
    },
    "test-passed": {RELEASE: {"testing": "pending_approval"}, ROLLBACK: {}},
    "approve": {RELEASE: {"pending_approval": "approved"}, ROLLBACK: {"pending_approval": "approved"}},
    "reject": {RELEASE: {"pending_approval": "rejected"}, ROLLBACK: {"pending_approval": "rejected"}},
    "release": {RELEASE: {"approved": "releasing"}, ROLLBACK: {"approved": "releasing"}},
    "retry": {RELEASE: {"release_failed": "releasing"}, ROLLBACK: {"release_failed": "releasing"}},
    "continue": {RELEASE: {"release_paused": "releasing"}, ROLLBACK: {"release_paused": "releasing"}},
    "abort": {RELEASE: {"release_paused": "releasing"}, ROLLBACK: {"release_paused": "releasing"}},
    "cancel": {
        RELEASE: dict.fromkeys(("pending_staging", "staging_failed", "testing", "returned", *CANCELLABLE), "cancelled"),
        ROLLBACK: dict.fromkeys(CANCELLABLE, "cancelled"),
    },
}
QUEUEING = {"pending_staging", "releasing"}  # moving there records a run and enqueues a job

# Roles seen from project `site`, whose tickets dev files; value: the world user (None: no valid token).
ROLES = {
    "anonymous": None,
    "bad-token": None,
    "author": "dev",
    "developer": "dev2",
    "lead": "lead",
    "lead-elsewhere": "lead2",
    "developer-elsewhere": "other",
    "admin": "admin",
    "contributing-lead": "lead3",  # a lead of `site` who changed the ticket's content or marked it tested
    "disabled": "gone",  # a lead of `site` whom an admin disabled: their token no longer works
}
NO_VALID_TOKEN = {"anonymous", "bad-token", "disabled"}
MEMBERS = {"author", "developer", "lead", "admin", "contributing-lead"}  # who can see project `site`
# return, resubmit, test-passed, release, retry, cancel
OWNER_SIDE = {"author", "lead", "admin", "contributing-lead"}
# approve, reject: never the author nor a contributor (unless the project allows self-approval)
APPROVER_SIDE = {"lead", "admin"}
FAKE_COMMIT = "f" * 40


def expected(role: str, action: str, kind: str, state: str) -> int:
    """Return the status code the spec gives for `role` firing `action` on a `kind` ticket in `state`."""
    if role in NO_VALID_TOKEN:
        return 401
    if role not in MEMBERS:
        return 404  # a ticket of a project you cannot see does not exist for you
    side = APPROVER_SIDE if action in ("approve", "reject") else OWNER_SIDE
    if role not in side:
        return 403
    if state not in MOVES[action][kind]:
        return 409
    return 200


@pytest.fixture
def world(app, tmp_path):
    """The shared world plus two more leads of `site`: lead3 (made a contributor of tickets) and gone (disabled)."""
    world = build_world(app, tmp_path)
    site = svc.get_project(db.session, "site")
    for name in ("lead3", "gone"):
        user = svc.create_user(db.session, name, PASSWORD)
        svc.set_member(db.session, site, user, "lead")
        world.tokens[name] = issue_token(user)
    svc.set_disabled(db.session, svc.get_user(db.session, "gone"), True)
    db.session.commit()
    return world


def contributors() -> list[int]:
    """Return the ids the matrix lists as contributors of its tickets (lead3, when the world has them)."""
    lead3 = db.session.scalar(select(User.id).where(User.username == "lead3"))
    return [lead3] if lead3 else []


def headers(world, role: str) -> dict:
    """Return the API headers of a role (none for anonymous, a made-up token for bad-token)."""
    if role == "anonymous":
        return {}
    if role == "bad-token":
        return {"Authorization": "Bearer fry_not-a-real-token"}
    return world.headers(ROLES[role])


_queues: dict[str, Queue] = {}


def queue_length(app) -> int:
    """Return how many jobs wait in Ferry's RQ queue (Redis), over one connection per test run."""
    url = app.config["REDIS_URL"]
    if url not in _queues:
        _queues[url] = Queue(app.config["FERRY_QUEUE"], connection=Redis.from_url(url))
    return _queues[url].count


def snapshot(app, ticket: Ticket | None = None) -> dict:
    """Return what a refused request must leave alone (read with plain SQL: no ORM caching in the way)."""
    count = select(func.count())
    events, runs, tickets = db.session.execute(
        select(
            count.select_from(TicketEvent).scalar_subquery(),
            count.select_from(Run).scalar_subquery(),
            count.select_from(Ticket).scalar_subquery(),
        )
    ).one()
    counts = {"events": events, "runs": runs, "tickets": tickets, "queue": queue_length(app)}
    if ticket is not None:
        row = db.session.execute(
            select(
                Ticket.state, Ticket.updated_at, Ticket.tested_commit, Ticket.approved_by_id, Ticket.contributor_ids
            ).where(Ticket.id == ticket.id)
        ).one()
        counts.update(state=row.state, updated_at=row.updated_at, tested=row.tested_commit, approver=row.approved_by_id)
        counts.update(contributors=row.contributor_ids)
    return counts


def event_rows() -> dict[int, tuple]:
    """Return every history row by id, to prove that rows are only ever added."""
    rows = db.session.execute(select(TicketEvent.__table__)).all()
    return {r.id: tuple(r) for r in rows}


def force(ticket: Ticket, state: str, lead_id: int) -> None:
    """Put `ticket` in `state` with the fields a ticket in that state has, as the workers would have left it."""
    staged = state not in ("pending_staging", "staging_updating", "staging_failed")
    tested = state in (
        "pending_approval",
        "rejected",
        "approved",
        "releasing",
        "release_paused",
        "release_failed",
        "released",
    )
    ticket.state = state
    if ticket.kind == RELEASE:
        ticket.staging_commit = FAKE_COMMIT if staged else None
        ticket.staging_revision = 1 if staged else None
        ticket.tested_commit = FAKE_COMMIT if tested else None
    ticket.approved_by_id = (
        lead_id if state in ("approved", "releasing", "release_paused", "release_failed", "released") else None
    )
    ticket.last_error = "hosts failed" if state in ("staging_failed", "release_failed") else ""
    ticket.contributor_ids = contributors()
    db.session.commit()


def make_ticket(kind: str, author: str = "dev", project: str = "site") -> Ticket:
    """Insert a ticket (and its filing history row) directly, without queueing anything."""
    user = svc.get_user(db.session, author)
    ticket = Ticket(
        project=svc.get_project(db.session, project),
        kind=kind,
        state="pending_staging" if kind == RELEASE else "pending_approval",
        reason=f"{kind} by {author}",
        svn_paths=[],
        version=1 if kind == ROLLBACK else None,
        tested_commit=FAKE_COMMIT if kind == ROLLBACK else None,
        author=user,
    )
    db.session.add(ticket)
    db.session.flush()
    db.session.add(TicketEvent(ticket_id=ticket.id, action="file", to_state=ticket.state, user_id=user.id))
    db.session.commit()
    return ticket


def body_for(action: str, role: str) -> dict:
    """Return the JSON body a client sends with `action` (reject needs a reason)."""
    return {"reason": f"no ({role})"} if action == "reject" else {"comment": f"{action} by {role}"}


def cases() -> list[tuple[str, str]]:
    """Return every (kind, state) a ticket can be in."""
    return [(RELEASE, s) for s in STATES] + [(ROLLBACK, s) for s in ROLLBACK_STATES]


def outcome(r) -> str:
    """Return the short story of a response: its error, or the state it reports."""
    data = r.get_json(silent=True) or {}
    return data.get("error") or f"state {data.get('state')}"


def fire(world, ticket: Ticket, state: str, action: str, role: str, before: dict) -> tuple[dict, list[str]]:
    """Fire one action as one role on a ticket in `state`; return the snapshot after it, and what was wrong."""
    app, client, kind = world.app, world.app.test_client(), ticket.kind
    where = f"{role} {action} {kind}/{state}"
    r = client.post(f"/api/tickets/{ticket.id}/{action}", json=body_for(action, role), headers=headers(world, role))
    after = snapshot(app, ticket)
    want = expected(role, action, kind, state)
    if r.status_code != want:
        return after, [f"{where}: got {r.status_code}, want {want}: {outcome(r)}"]
    if want != 200:
        if not (r.is_json and "error" in r.get_json()):
            return after, [f"{where}: {want} without the JSON error shape"]
        return after, [] if after == before else [f"{where}: refused but changed {before} -> {after}"]
    to = MOVES[action][kind][state]
    queued = 1 if to in QUEUEING else 0
    wrong = []
    if after["state"] != to or r.get_json()["state"] != to:
        wrong.append(f"{where}: now {after['state']}, want {to}")
    grew = {k: after[k] - before[k] for k in ("events", "runs", "queue", "tickets")}
    if grew != {"events": 1, "runs": queued, "queue": queued, "tickets": 0}:
        wrong.append(f"{where}: rows/jobs added {grew}")
    last = r.get_json()["history"][-1]
    if (last["action"], last["from"], last["to"], last["user"]) != (action, state, to, ROLES[role]):
        wrong.append(f"{where}: history row {last}")
    return after, wrong


def read(client, world, ticket: Ticket, kind: str, state: str, role: str) -> list[str]:
    """Read a ticket as one role; check the code and that its buttons are exactly the actions the spec allows."""
    r = client.get(f"/api/tickets/{ticket.id}", headers=headers(world, role))
    want = 401 if role in NO_VALID_TOKEN else 200 if role in MEMBERS else 404
    if r.status_code != want:
        return [f"{role} reads {kind}/{state}: got {r.status_code}, want {want}"]
    allowed = {a for a in ACTIONS if expected(role, a, kind, state) == 200}
    if want == 200 and set(r.get_json()["allowed_actions"]) != allowed:
        return [f"{role} reads {kind}/{state}: buttons {r.get_json()['allowed_actions']}, want {sorted(allowed)}"]
    return []


def test_action_and_read_matrix(app, client, world):
    """Every action × role × (kind, state) and every read: exact codes; refusals change nothing; moves as specified."""
    lead_id = svc.get_user(db.session, "lead").id
    tickets = {kind: make_ticket(kind) for kind in (RELEASE, ROLLBACK)}
    before_events = event_rows()
    wrong: list[str] = []
    fired = reads = 0
    for kind, state in cases():
        ticket = tickets[kind]
        force(ticket, state, lead_id)
        before = snapshot(app, ticket)
        for role in ROLES:
            wrong += read(client, world, ticket, kind, state, role)
            reads += 1
        if snapshot(app, ticket) != before:
            wrong.append(f"reading {kind}/{state} changed it")
        now = before
        for action in ACTIONS:
            for role in ROLES:
                if now["state"] != state:  # only a success moves the ticket on; refusals leave it where it was
                    force(ticket, state, lead_id)
                    now = snapshot(app, ticket)
                now, problems = fire(world, ticket, state, action, role, now)
                wrong += problems
                fired += 1
    assert not wrong, f"{len(wrong)} of {fired + reads} cases wrong:\n" + "\n".join(wrong)
    assert (fired, reads) == (len(ACTIONS) * len(ROLES) * len(cases()), len(ROLES) * len(cases()))
    assert client.get("/api/tickets/99999", headers=world.headers("admin")).status_code == 404
    # The history only grew: every row that existed before is untouched.
    after_events = event_rows()
    assert {k: after_events[k] for k in before_events} == before_events


def filing_problems(app, client, world) -> list[str]:
    """File a release ticket as every role on every project: members and admins 201, others 404, no token 401."""
    wrong = []
    for project in ("site", "elsewhere", "no-such-project"):
        for role, user in ROLES.items():
            before = snapshot(app)
            body = {"project": project, "reason": f"filed by {role}", "svn_paths": ["index.html"]}
            r = client.post("/api/tickets", json=body, headers=headers(world, role))
            members = {"site": MEMBERS, "elsewhere": {"lead-elsewhere", "developer-elsewhere", "admin"}}
            want = 401 if role in NO_VALID_TOKEN else 201 if role in members.get(project, ()) else 404
            after = snapshot(app)
            if r.status_code != want:
                wrong.append(f"{role} files on {project}: got {r.status_code}, want {want}")
            elif want == 201:
                t = r.get_json()
                assert (t["state"], t["author"], t["project"]) == ("pending_staging", user, project)
                grew = {k: after[k] - before[k] for k in before}
                assert grew == {"events": 1, "runs": 1, "tickets": 1, "queue": 1}, (role, project, grew)
            elif after != before:
                wrong.append(f"{role} files on {project}: refused but changed {before} -> {after}")
    return wrong


RUN_STATUSES = ("queued", "running", "successful", "failed", "canceled")
RUN_SIDE = {"author", "lead", "admin", "contributing-lead"}  # who started the run, a lead of the project, an admin


def run_expected(role: str, status: str) -> int:
    """Return the status code the spec gives for `role` cancelling a run in `status`."""
    if role in NO_VALID_TOKEN:
        return 401
    if role not in MEMBERS:
        return 404
    if role not in RUN_SIDE:
        return 403
    return 200 if status in ("queued", "running") else 409


def run_snapshot(app, run: Run) -> dict:
    """Return what a refused cancel must leave alone: the run, its ticket, history and the cancel flag."""
    row = db.session.execute(select(Run.status, Run.error).where(Run.id == run.id)).one()
    flag = Redis.from_url(app.config["REDIS_URL"]).exists(cancel_key(run.id))
    return {**snapshot(app, run.ticket), "run": tuple(row), "cancel_flag": flag}


def test_run_cancel_and_read_matrix(app, client, world):
    """Cancelling a run (API) and reading it: role × run status; refusals change nothing."""
    dev = svc.get_user(db.session, "dev")
    ticket = make_ticket(RELEASE)
    run = Run(ticket_id=ticket.id, project_id=ticket.project_id, stage="staging", started_by=dev)
    db.session.add(run)
    db.session.commit()
    redis = Redis.from_url(app.config["REDIS_URL"])
    wrong = []
    for status in RUN_STATUSES:
        for role in ROLES:
            # A queued run's ticket waits for staging; a running one's is being updated.
            ticket.state = "staging_updating" if status == "running" else "pending_staging"
            run.status, run.error = status, ""
            db.session.commit()
            redis.delete(cancel_key(run.id))
            before = run_snapshot(app, run)
            r = client.get(f"/api/runs/{run.id}", headers=headers(world, role))
            read_want = 401 if role in NO_VALID_TOKEN else 200 if role in MEMBERS else 404
            if r.status_code != read_want:
                wrong.append(f"{role} reads a {status} run: got {r.status_code}, want {read_want}")
            r = client.post(f"/api/runs/{run.id}/cancel", headers=headers(world, role))
            want = run_expected(role, status)
            after = run_snapshot(app, run)
            where = f"{role} cancels a {status} run"
            if r.status_code != want:
                wrong.append(f"{where}: got {r.status_code}, want {want}: {outcome(r)}")
            elif want != 200 and after != before:
                wrong.append(f"{where}: refused but changed {before} -> {after}")
            elif want == 200 and status == "queued":
                # A queued run ends at once and its ticket shows why.
                if (after["run"][0], after["state"], after["events"] - before["events"]) != (
                    "canceled",
                    "staging_failed",
                    1,
                ):
                    wrong.append(f"{where}: left {after}")
            elif want == 200 and (after["cancel_flag"], after["run"]) != (1, before["run"]):
                wrong.append(f"{where}: the worker was not signalled: {after}")  # running: the worker stops it
    assert not wrong, "\n".join(wrong)


def add_release(project_name: str, version: int) -> None:
    """Record a released version directly (rollback targets), with its released ticket."""
    ticket = make_ticket(RELEASE, project=project_name)
    ticket.state, ticket.version, ticket.tested_commit = "released", version, f"{version:040d}"
    project = svc.get_project(db.session, project_name)
    db.session.add(Release(project_id=project.id, version=version, commit=ticket.tested_commit, ticket_id=ticket.id))
    project.live_version = version
    db.session.commit()


def test_filing_rollback_and_release_list_matrix(app, client, world):
    """Filing tickets and rollbacks, listing releases: members only; rolling back to the live version is 409."""
    wrong = filing_problems(app, client, world)
    add_release("site", 1)
    add_release("site", 2)  # live

    for role, user in ROLES.items():
        member = role not in NO_VALID_TOKEN and role in MEMBERS
        for version, member_code in ((1, 201), (2, 409), (99, 404)):
            before = snapshot(app)
            body = {"project": "site", "version": version, "reason": f"back to {version} by {role}"}
            r = client.post("/api/rollbacks", json=body, headers=headers(world, role))
            want = 401 if role in NO_VALID_TOKEN else member_code if member else 404
            after = snapshot(app)
            if r.status_code != want:
                wrong.append(f"{role} rolls back to {version}: got {r.status_code}, want {want}: {outcome(r)}")
            elif want == 201:
                t = r.get_json()
                assert (t["kind"], t["state"], t["version"], t["author"]) == ("rollback", "pending_approval", 1, user)
                grew = {k: after[k] - before[k] for k in before}
                assert grew == {"events": 1, "runs": 0, "tickets": 1, "queue": 0}, (role, grew)
            elif after != before:
                wrong.append(f"{role} rolls back to {version}: refused but changed {before} -> {after}")
        for project, visible in (("site", member), ("elsewhere", role in ("lead-elsewhere", "developer-elsewhere"))):
            r = client.get(f"/api/projects/{project}/releases", headers=headers(world, role))
            want = 401 if role in NO_VALID_TOKEN else 200 if visible or role == "admin" else 404
            if r.status_code != want:
                wrong.append(f"{role} lists releases of {project}: got {r.status_code}, want {want}")
            elif project == "site" and want == 200:
                assert [v["version"] for v in r.get_json()["items"]] == [2, 1]
                assert [v["live"] for v in r.get_json()["items"]] == [True, False]
        r = client.get("/api/projects/nope/releases", headers=headers(world, role))
        if r.status_code != (401 if role in NO_VALID_TOKEN else 404):
            wrong.append(f"{role} lists releases of an unknown project: got {r.status_code}")
    assert not wrong, "\n".join(wrong)


def test_self_approval(app, client, world):
    """A lead may not approve or reject their own ticket unless the project allows it; an admin overrides, on record."""
    lead_id = svc.get_user(db.session, "lead").id
    own = make_ticket(RELEASE, author="lead")
    force(own, "pending_approval", lead_id)
    for action, body in (("approve", {}), ("reject", {"reason": "mine"})):
        before = snapshot(app, own)
        r = client.post(f"/api/tickets/{own.id}/{action}", json=body, headers=world.headers("lead"))
        assert r.status_code == 403 and "own ticket" in r.get_json()["error"]
        assert snapshot(app, own) == before
    assert (
        "approve"
        not in client.get(f"/api/tickets/{own.id}", headers=world.headers("lead")).get_json()["allowed_actions"]
    )

    world.project.allow_self_approval = True
    db.session.commit()
    r = client.post(f"/api/tickets/{own.id}/approve", json={"comment": "mine, allowed"}, headers=world.headers("lead"))
    assert r.status_code == 200 and r.get_json()["state"] == "approved"
    assert r.get_json()["approved_by"] == "lead"
    assert "override" not in r.get_json()["history"][-1]["comment"]
    # The setting lets leads approve their own work; it does not make a developer an approver.
    dev_own = make_ticket(RELEASE, author="dev")
    force(dev_own, "pending_approval", lead_id)
    assert client.post(f"/api/tickets/{dev_own.id}/approve", headers=world.headers("dev")).status_code == 403

    world.project.allow_self_approval = False
    db.session.commit()
    admins = make_ticket(RELEASE, author="admin")
    force(admins, "pending_approval", lead_id)
    r = client.post(f"/api/tickets/{admins.id}/approve", json={"comment": "hotfix"}, headers=world.headers("admin"))
    assert r.status_code == 200 and r.get_json()["state"] == "approved"
    last = r.get_json()["history"][-1]
    assert (last["action"], last["user"]) == ("approve", "admin")
    assert "admin override" in last["comment"] and "hotfix" in last["comment"]


def test_lead_who_changes_or_tests_a_ticket_cannot_approve_it(app, client, world):
    """Four eyes: a lead who resubmits someone's ticket with new content or marks it tested cannot approve it
    alone; every content change is in the history with its old and new values."""
    lead = world.headers("lead")
    lead_id = svc.get_user(db.session, "lead").id
    ticket = make_ticket(RELEASE, author="dev")
    force(ticket, "testing", lead_id)
    assert client.post(f"/api/tickets/{ticket.id}/return", json={}, headers=lead).status_code == 200
    body = {"svn_paths": ["css", "about"], "svn_revision": 3, "reason": 'lead\'s "better" reason', "comment": "mine"}
    r = client.post(f"/api/tickets/{ticket.id}/resubmit", json=body, headers=lead)
    assert r.status_code == 200, r.get_json()
    last = r.get_json()["history"][-1]
    assert (last["action"], last["user"]) == ("resubmit", "lead")
    assert last["comment"] == (
        'svn_paths: [] (whole tree) → [css, about]; svn_revision: HEAD → 3; reason: "release by dev" → '
        '"lead\'s \\"better\\" reason"; mine'
    )
    db.session.expire_all()
    assert ticket.contributor_ids == [*contributors(), lead_id]  # lead3 is every matrix ticket's contributor
    # Staging ran (forced here); now the lead marks it passed and tries to approve it alone.
    ticket.state, ticket.staging_commit = "testing", FAKE_COMMIT
    db.session.commit()
    assert client.post(f"/api/tickets/{ticket.id}/test-passed", json={}, headers=lead).status_code == 200
    before = snapshot(app, ticket)
    for action, extra in (("approve", {}), ("reject", {"reason": "no"})):
        r = client.post(f"/api/tickets/{ticket.id}/{action}", json=extra, headers=lead)
        assert r.status_code == 403 and "own ticket" in r.get_json()["error"], action
    assert snapshot(app, ticket) == before
    assert "approve" not in client.get(f"/api/tickets/{ticket.id}", headers=lead).get_json()["allowed_actions"]
    page = login(app, "lead").get("/tickets?waiting=me").get_data(as_text=True)
    assert ticket.id not in ticket_ids(page)
    # Another approver may; an admin who did not touch it approves without an override.
    r = client.post(f"/api/tickets/{ticket.id}/approve", json={}, headers=world.headers("admin"))
    assert r.status_code == 200 and "override" not in r.get_json()["history"][-1]["comment"]

    # Marking a ticket tested alone makes the lead a contributor too.
    tested = make_ticket(RELEASE, author="dev")
    force(tested, "testing", lead_id)
    assert client.post(f"/api/tickets/{tested.id}/test-passed", json={}, headers=lead).status_code == 200
    assert client.post(f"/api/tickets/{tested.id}/approve", json={}, headers=lead).status_code == 403
    world.project.allow_self_approval = True  # a project that allows self-approval allows this as well
    db.session.commit()
    assert client.post(f"/api/tickets/{tested.id}/approve", json={}, headers=lead).status_code == 200
    world.project.allow_self_approval = False
    db.session.commit()

    # A resubmit that changes nothing is no contribution; the author's own changes are recorded too.
    same = make_ticket(RELEASE, author="dev")
    force(same, "returned", lead_id)
    body = {"svn_paths": [], "reason": "release by dev"}
    r = client.post(f"/api/tickets/{same.id}/resubmit", json=body, headers=lead)
    assert r.status_code == 200 and r.get_json()["history"][-1]["comment"] == ""
    force(same, "returned", lead_id)
    r = client.post(
        f"/api/tickets/{same.id}/resubmit", json={"svn_paths": ["index.html"]}, headers=world.headers("dev")
    )
    assert r.get_json()["history"][-1]["comment"] == "svn_paths: [] (whole tree) → [index.html]"
    force(same, "pending_approval", lead_id)
    assert client.post(f"/api/tickets/{same.id}/approve", json={}, headers=lead).status_code == 200

    # An admin who changed a ticket and approves it is on record as an override.
    shaped = make_ticket(RELEASE, author="dev")
    force(shaped, "returned", lead_id)
    r = client.post(f"/api/tickets/{shaped.id}/resubmit", json={"reason": "admin's"}, headers=world.headers("admin"))
    assert r.status_code == 200
    db.session.expire_all()
    shaped.state, shaped.tested_commit = "pending_approval", FAKE_COMMIT
    db.session.commit()
    r = client.post(f"/api/tickets/{shaped.id}/approve", json={}, headers=world.headers("admin"))
    assert r.status_code == 200 and "admin override" in r.get_json()["history"][-1]["comment"]


def login(app, username: str):
    """Return a test client logged in through the login form."""
    c = app.test_client()
    assert c.post("/login", data={"username": username, "password": PASSWORD}).status_code == 302
    return c


def ticket_ids(page: str) -> set[int]:
    """Return the ticket ids a page links to."""
    return {int(n) for n in re.findall(r'href="/tickets/(\d+)"', page)}


def test_users_see_only_their_projects(app, client, world):
    """/api/projects, /api/tickets, /projects and /tickets show a user's projects only; admins see all."""
    site = make_ticket(RELEASE, project="site")
    elsewhere = make_ticket(RELEASE, author="other", project="elsewhere")
    sees = {
        "dev": ({"site"}, {site.id}),
        "lead": ({"site"}, {site.id}),
        "other": ({"elsewhere"}, {elsewhere.id}),
        "lead2": ({"elsewhere"}, {elsewhere.id}),
        "admin": ({"site", "elsewhere"}, {site.id, elsewhere.id}),
    }
    for user, (projects, tickets) in sees.items():
        h = world.headers(user)
        assert {p["name"] for p in client.get("/api/projects", headers=h).get_json()} == projects, user
        assert {t["id"] for t in client.get("/api/tickets", headers=h).get_json()["items"]} == tickets, user
        for name in ("site", "elsewhere"):
            listed = client.get(f"/api/tickets?project={name}", headers=h).get_json()["items"]
            assert {t["project"] for t in listed} == ({name} if name in projects else set()), (user, name)
        c = login(app, user)
        page = c.get("/projects").get_data(as_text=True)
        assert set(re.findall(r'href="/projects/([a-z0-9_-]+)"', page)) == projects, user
        assert ticket_ids(c.get("/tickets").get_data(as_text=True)) == tickets, user
        for name in ("site", "elsewhere"):
            assert ticket_ids(c.get(f"/tickets?project={name}").get_data(as_text=True)) <= tickets, user
            assert c.get(f"/projects/{name}").status_code == (200 if name in projects else 404), (user, name)
        new_form = c.get("/tickets/new").get_data(as_text=True)
        assert set(re.findall(r'<option value="([a-z0-9_-]+)"', new_form)) == projects, user
    for user in ("dev", "lead", "admin"):
        assert client.get("/api/tickets", headers=world.headers(user)).status_code == 200
