"""Hostile input gets a 400 naming the field (404 for ids that cannot exist), never a 500 and never a change:
huge and non-ASCII integers, deeply nested JSON, control characters in text, bad shared paths."""

from __future__ import annotations

import html

import pytest
from sqlalchemy import select

from tests.conftest import PASSWORD
from tests.test_permissions import add_release, force, make_ticket, snapshot
from webapp import projects as svc
from webapp.extensions import db
from webapp.models import Project, Run, TicketEvent

pytestmark = pytest.mark.integration

HUGE = 2**64 + 1  # beyond 64 bits
HUGE_TEXT = "99999999999999999999999"
# Superscript two, Arabic-Indic 3, Devanagari 4, fullwidth 5: str.isdigit() says yes to all of them.
ODD_DIGITS = ("²", "٣", "४", "５")
CONTROLS = ("\x00", "\x1b[31mred\x1b[0m", "\x1b]8;;http://evil/\x07link", "\x9b31m", "\x7f", "a\rb", "\x08")


def login(app, username: str):
    """Return a test client logged in through the login form."""
    c = app.test_client()
    assert c.post("/login", data={"username": username, "password": PASSWORD}).status_code == 302
    return c


def refused(r, field: str, status: int = 400) -> str:
    """Return '' when `r` is the expected refusal naming `field`, else what was wrong."""
    text = r.get_data(as_text=True)
    if r.status_code != status:
        return f"{r.status_code} instead of {status}: {text[-300:]}"
    if r.is_json:
        error = r.get_json().get("error", "")
        return "" if not field or error.startswith(f"{field}:") else f"error does not name {field}: {error}"
    return "" if not field or f"{field}:" in text else f"page does not name {field}"


def test_integers_beyond_64_bits_and_odd_digits(app, client, world):
    """svn_revision, rollback version, offset and admin numbers: 400 naming the field; ids in URLs: 404."""
    h = world.headers("dev")
    ok = {"project": "site", "reason": "fine", "svn_paths": []}
    lead_id = svc.get_user(db.session, "lead").id
    ticket = make_ticket("release")
    force(ticket, "returned", lead_id)
    run = Run(ticket_id=ticket.id, project_id=ticket.project_id, stage="staging", status="successful", log="x\n")
    db.session.add(run)
    db.session.commit()
    add_release("site", 1)
    add_release("site", 2)
    before = snapshot(app, ticket)
    problems = []

    def check(what, r, field, status=400):
        wrong = refused(r, field, status)
        if wrong:
            problems.append(f"{what}: {wrong}")

    for value in (HUGE, -HUGE, 2**31, 0):
        check(
            ("file", value), client.post("/api/tickets", json={**ok, "svn_revision": value}, headers=h), "svn_revision"
        )
        url = f"/api/tickets/{ticket.id}/resubmit"
        check(("resubmit", value), client.post(url, json={"svn_revision": value}, headers=h), "svn_revision")
        body = {"project": "site", "version": value, "reason": "back"}
        check(("rollback", value), client.post("/api/rollbacks", json=body, headers=h), "version")
    for value in (HUGE_TEXT, "-1", "1.5", "1e3", *ODD_DIGITS):
        check(("offset", value), client.get(f"/api/runs/{run.id}?offset={value}", headers=h), "offset")

    dev, admin = login(app, "dev"), login(app, "admin")
    for value in (HUGE_TEXT, *ODD_DIGITS):
        form = {"project": "site", "reason": "fine", "svn_revision": value}
        check(("new ticket page", value), dev.post("/tickets/new", data=form), "svn_revision")
        form = {"expected_state": "returned", "svn_revision": value}
        check(("resubmit page", value), dev.post(f"/tickets/{ticket.id}/resubmit", data=form), "svn_revision")
        form = {"version": value, "reason": "back"}
        check(("rollback page", value), dev.post("/projects/site/rollback", data=form), "version")
        for field in ("keep_releases", "forks", "stage_timeout"):
            settings = {
                "svn_url": world.svn.url,
                "staging_dir": str(world.staging_dir),
                "inventory": "hosts.ini",
                "group": "web",
                field: value,
            }
            check(("admin", field, value), admin.post("/admin/projects/site", data=settings), field)
            check(("admin new", field, value), admin.post("/admin/projects", data={**settings, "name": "n"}), field)
    assert not problems, "\n".join(problems)
    assert snapshot(app, ticket) == before
    assert db.session.scalar(select(Project).where(Project.name == "n")) is None

    # Ids that cannot exist are simply not found, whatever their size or digits.
    for bad in (HUGE_TEXT, str(2**63), str(2**31), *ODD_DIGITS):
        for c, url, method in (
            (client, f"/api/runs/{bad}", "get"),
            (client, f"/api/runs/{bad}/cancel", "post"),
            (client, f"/api/tickets/{bad}", "get"),
            (client, f"/api/tickets/{bad}/cancel", "post"),
            (dev, f"/tickets/{bad}", "get"),
            (dev, f"/tickets/{bad}/cancel", "post"),
            (dev, f"/runs/{bad}/events", "get"),
            (dev, f"/runs/{bad}/cancel", "post"),
        ):
            r = getattr(c, method)(url, headers=h)
            if r.status_code != 404:
                problems.append(f"{method} {url}: {r.status_code}")
    assert not problems, "\n".join(problems)


def test_deeply_nested_json_is_a_400(app, client, world):
    """A JSON body nested 50,000 levels deep is refused as a bad body, on every endpoint that reads one."""
    h = {**world.headers("dev"), "Content-Type": "application/json"}
    before = snapshot(app)
    for depth, opener, closer in ((50_000, "[", "]"), (50_000, '{"a":', "}")):
        body = opener * depth + "1" + closer * depth
        for url in ("/api/tickets", "/api/tickets/1/cancel", "/api/rollbacks", "/api/runs/1/cancel"):
            r = client.post(url, data=body, headers=h)
            assert not refused(r, "body"), (url, r.status_code, r.get_data(as_text=True)[:200])
    assert snapshot(app) == before


def test_control_characters_in_text_are_refused(app, client, world):
    """NUL, ESC (ANSI/OSC), C1, DEL, lone CR in reasons, comments, reject reasons, names: 400 naming the field."""
    h = world.headers("dev")
    lead_id = svc.get_user(db.session, "lead").id
    ticket = make_ticket("release")
    problems = []

    def check(what, r, field):
        wrong = refused(r, field)
        if wrong:
            problems.append(f"{what}: {wrong}")

    admin = login(app, "admin")
    for bad in CONTROLS:
        before = snapshot(app)
        body = {"project": "site", "reason": f"fix {bad}", "svn_paths": []}
        check(("file reason", bad), client.post("/api/tickets", json=body, headers=h), "reason")
        force(ticket, "returned", lead_id)
        at = snapshot(app, ticket)
        url = f"/api/tickets/{ticket.id}/resubmit"
        check(("resubmit reason", bad), client.post(url, json={"reason": f"x{bad}"}, headers=h), "reason")
        check(("resubmit comment", bad), client.post(url, json={"comment": f"x{bad}"}, headers=h), "comment")
        force(ticket, "pending_approval", lead_id)
        url = f"/api/tickets/{ticket.id}/reject"
        r = client.post(url, json={"reason": f"no {bad}"}, headers=world.headers("lead"))
        check(("reject reason", bad), r, "reason")
        add = {"username": f"eve{bad}", "password": "long-enough-pw"}
        check(("username", bad), admin.post("/admin/users", data=add), "username")
        r = admin.post(
            "/admin/projects",
            data={"name": f"p{bad}", "svn_url": world.svn.url, "staging_dir": "/s", "inventory": "hosts.ini"},
        )
        check(("project name", bad), r, "name")
        if snapshot(app) != before or snapshot(app, ticket)["events"] != at["events"]:
            problems.append(f"{bad!r}: a refusal changed something")
    # Trailing newlines do not slip through a name check either.
    check(
        ("username newline",), admin.post("/admin/users", data={"username": "eve\n", "password": "x" * 9}), "username"
    )
    assert not problems, "\n".join(problems)

    # Newlines and tabs are text; a browser's CRLF line ends are stored as LF.
    force(ticket, "returned", lead_id)
    dev = login(app, "dev")
    form = {"expected_state": "returned", "reason": "line one\r\n\tline two", "comment": "a\r\nb"}
    assert dev.post(f"/tickets/{ticket.id}/resubmit", data=form).status_code == 303
    db.session.expire_all()
    assert ticket.reason == "line one\n\tline two"
    last = db.session.scalars(select(TicketEvent).order_by(TicketEvent.id.desc())).first()
    assert last.comment.endswith("a\nb")


def test_shared_paths_errors_name_the_field(app, client, world):
    """`keep` + `.` is refused instead of saved as nothing; '.', empty, absolute and '..' entries say why."""
    admin = login(app, "admin")
    base = {"svn_url": world.svn.url, "staging_dir": str(world.staging_dir), "inventory": "hosts.ini", "group": "web"}
    for value, why in (
        ("keep\n.", "whole release"),
        (".", "whole release"),
        ("./", "whole release"),
        ("keep\n/etc", "must be relative"),
        ("keep\n../up", "'..'"),
        ("uploads/./x", "without '.'"),
        ("a;b", "not allowed"),
    ):
        r = admin.post("/admin/projects/site", data={**base, "shared_paths": value})
        text = html.unescape(r.get_data(as_text=True))
        assert r.status_code == 400 and "shared_paths: " in text and why in text, (value, r.status_code, text[-400:])
        assert "svn_paths" not in text
        db.session.expire_all()
        assert world.project.shared_paths == []
    with pytest.raises(Exception, match="shared_paths: an empty entry"):
        svc.update_project(db.session, world.project, shared_paths=["keep", ""])
    db.session.rollback()
    r = admin.post("/admin/projects/site", data={**base, "shared_paths": "uploads/\r\nlogs\r\n\r\n"})
    assert r.status_code == 303
    db.session.expire_all()
    assert world.project.shared_paths == ["uploads", "logs"]
