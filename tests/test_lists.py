"""Lists that scale: tickets, releases and runs in keyset pages with filters, in the API and on the ticket list page."""

from __future__ import annotations

import base64
import re

from sqlalchemy import select

from tests.test_permissions import login
from webapp.extensions import db
from webapp.models import Project, Release, Run, Ticket, User


def user(name: str) -> User:
    """Return a user of the world by name."""
    return db.session.scalar(select(User).where(User.username == name))


def add_tickets(world, n: int, **fields) -> list[int]:
    """Insert `n` tickets straight into the DB (no worker needed) and return their ids, oldest first."""
    reasons = fields.pop("reasons", None)
    values = {"project": world.project, "state": "testing", "kind": "release", "author": user("dev"), **fields}
    rows = [Ticket(reason=reasons[i] if reasons else f"change {i}", **values) for i in range(n)]
    db.session.add_all(rows)
    db.session.commit()
    return [t.id for t in rows]


def api_pages(client, world, path: str, who: str = "dev") -> list[list]:
    """Follow `next` from `path` to the end; return each page's items."""
    pages, url = [], path
    while True:
        body = client.get(url, headers=world.headers(who)).get_json()
        assert set(body) == {"items", "next"}, body
        pages.append(body["items"])
        if body["next"] is None:
            return pages
        assert len(pages) < 100
        url = f"{path}{'&' if '?' in path else '?'}cursor={body['next']}"


def test_api_tickets_come_in_cursor_pages_newest_first(client, world):
    """limit=3 over 7 tickets gives 3+3+1, newest first, `next` null at the end; a new ticket shifts no page."""
    ids = add_tickets(world, 7)
    first = client.get("/api/tickets?limit=3", headers=world.headers("dev")).get_json()
    assert [t["id"] for t in first["items"]] == ids[::-1][:3]
    add_tickets(world, 1)  # filed while the client pages: it belongs to no page the client still reads
    second = client.get(f"/api/tickets?limit=3&cursor={first['next']}", headers=world.headers("dev")).get_json()
    assert [t["id"] for t in second["items"]] == ids[::-1][3:6]
    third = client.get(f"/api/tickets?limit=3&cursor={second['next']}", headers=world.headers("dev")).get_json()
    assert [t["id"] for t in third["items"]] == ids[:1] and third["next"] is None
    brief = first["items"][0]
    assert {"id", "project", "state", "kind", "reason", "author", "allowed_actions", "hosts"} <= set(brief)
    assert "history" not in brief  # the list is brief; GET /api/tickets/<id> has the rest
    # Default page size 50, at most 200.
    add_tickets(world, 60)
    body = client.get("/api/tickets", headers=world.headers("dev")).get_json()
    assert len(body["items"]) == 50 and body["next"]
    assert len(client.get("/api/tickets?limit=200", headers=world.headers("dev")).get_json()["items"]) == 68
    every = [t["id"] for page in api_pages(client, world, "/api/tickets?limit=7") for t in page]
    assert every == sorted(every, reverse=True) and len(every) == len(set(every)) == 68


def test_api_ticket_filters_project_state_author_kind_and_reason_text(client, world):
    """Each filter narrows the list; text search finds `%` and `_` literally; other projects stay invisible."""
    elsewhere = db.session.scalar(select(Project).where(Project.name == "elsewhere"))
    mine = add_tickets(world, 2, reasons=["fix 100% of the header", "fix 1000 footers"])
    dev2 = add_tickets(world, 1, author=user("dev2"), state="released", reasons=["dev2's under_score change"])
    rollback = add_tickets(world, 1, kind="rollback", state="pending_approval", reasons=["Back to v1"])
    hidden = add_tickets(world, 1, project=elsewhere, author=user("other"), reasons=["fix 100% elsewhere"])

    def ids(query: str, who: str = "dev") -> list[int]:
        r = client.get(f"/api/tickets?{query}", headers=world.headers(who))
        assert r.status_code == 200, r.get_json()
        return [t["id"] for t in r.get_json()["items"]]

    assert ids("") == (mine + dev2 + rollback)[::-1]
    assert ids("project=site") == (mine + dev2 + rollback)[::-1]
    assert ids("project=elsewhere") == []  # not a member: nothing, as for an unknown project
    assert ids("project=elsewhere", "admin") == hidden
    assert ids("state=released") == dev2
    assert ids("author=dev2") == dev2
    assert ids("author=nobody") == []
    assert ids("kind=rollback") == rollback
    assert ids("q=100%25") == mine[:1]  # "100%" is not "100<anything>": 1000 footers do not match
    assert ids("q=under_score") == dev2 and ids("q=under%5Fscore") == dev2 and ids("q=underXscore") == []
    assert ids("q=BACK+TO") == rollback  # case-insensitive
    assert ids("q=fix&author=dev&state=testing&kind=release&project=site") == mine[::-1]
    assert ids("q=100%25", "admin") == [hidden[0], mine[0]]


def test_api_list_arguments_are_checked(client, world):
    """A bad cursor, limit, state or kind is a 400 naming the argument; nothing is listed."""
    add_tickets(world, 2)
    h = world.headers("dev")
    cases = {
        "cursor=%21%21": "cursor",
        "cursor=" + base64.urlsafe_b64encode(b"abc").decode(): "cursor",
        "cursor=" + base64.urlsafe_b64encode(b"99999999999").decode(): "cursor",
        "limit=0": "limit",
        "limit=201": "limit",
        "limit=ten": "limit",
        "state=bogus": "state",
        "kind=bogus": "kind",
        "q=a%00b": "q",
    }
    for query, field in cases.items():
        for path in ("/api/tickets", "/api/runs", "/api/projects/site/releases"):
            if field in ("state", "kind", "q") and path != "/api/tickets":
                continue
            r = client.get(f"{path}?{query}", headers=h)
            assert r.status_code == 400, (path, query, r.get_json())
            assert r.get_json()["error"].startswith(field), (path, query, r.get_json())
    assert client.get("/api/runs?ticket=x", headers=h).status_code == 400
    assert client.get("/api/tickets?limit=200&cursor=", headers=h).status_code == 200


def test_api_releases_and_runs_come_in_pages(client, world):
    """A project's versions and the runs list (by project, by ticket) page the same way, visibility included."""
    tickets = add_tickets(world, 5, state="released")
    for version, tid in enumerate(tickets, start=1):
        db.session.add(Release(project_id=world.project.id, version=version, commit=f"{version:040d}", ticket_id=tid))
        db.session.add(Run(ticket_id=tid, project_id=world.project.id, stage="staging", status="successful"))
        db.session.add(Run(ticket_id=tid, project_id=world.project.id, stage="release", status="successful"))
    world.project.live_version = 5
    elsewhere = db.session.scalar(select(Project).where(Project.name == "elsewhere"))
    hidden = add_tickets(world, 1, project=elsewhere, author=user("other"))
    db.session.add(Run(ticket_id=hidden[0], project_id=elsewhere.id, stage="staging", status="queued"))
    db.session.commit()

    versions = api_pages(client, world, "/api/projects/site/releases?limit=2")
    assert [[r["version"] for r in page] for page in versions] == [[5, 4], [3, 2], [1]]
    assert versions[0][0]["live"] and not versions[0][1]["live"]

    runs = [r for page in api_pages(client, world, "/api/runs?limit=3") for r in page]
    assert len(runs) == 10 and [r["id"] for r in runs] == sorted((r["id"] for r in runs), reverse=True)
    assert {r["project"] for r in runs} == {"site"}  # dev does not see elsewhere's run
    assert {"id", "stage", "status", "ticket", "project", "hosts", "started_at"} <= set(runs[0])
    of_ticket = client.get(f"/api/runs?ticket={tickets[2]}", headers=world.headers("dev")).get_json()
    assert [(r["ticket"], r["stage"]) for r in of_ticket["items"]] == [(tickets[2], "release"), (tickets[2], "staging")]
    assert client.get("/api/runs?project=elsewhere", headers=world.headers("dev")).get_json()["items"] == []
    assert len(client.get("/api/runs?project=elsewhere", headers=world.headers("admin")).get_json()["items"]) == 1
    assert client.get("/api/runs").status_code == 401


def ticket_ids(html: str) -> list[int]:
    """Return the ticket ids a ticket list page links, in order."""
    return [int(i) for i in re.findall(r'href="/tickets/([0-9]+)"', html)]


def link(html: str, rel: str) -> str | None:
    """Return the href of the page's next/prev link."""
    found = re.search(rf'rel="{rel}" href="([^"]+)"', html)
    return found.group(1).replace("&amp;", "&") if found else None


def test_ticket_list_page_has_older_and_newer_links_and_the_filters(app, world):
    """The page walks 5 tickets 2 at a time both ways, keeps its filters in the links, and filters like the API."""
    ids = add_tickets(world, 5)[::-1]
    other = add_tickets(world, 1, author=user("dev2"), kind="rollback", state="pending_approval", reasons=["50% off"])
    c = login(app, "dev")
    page = c.get("/tickets?project=site&author=dev&limit=2").get_data(as_text=True)
    assert ticket_ids(page) == ids[:2] and link(page, "prev") is None
    for field in ('name="author"', 'name="kind"', 'name="q"', 'name="state"', 'name="project"'):
        assert field in page, field
    second = c.get(link(page, "next")).get_data(as_text=True)
    assert ticket_ids(second) == ids[2:4]
    assert "author=dev" in link(second, "next") and "project=site" in link(second, "next")
    last = c.get(link(second, "next")).get_data(as_text=True)
    assert ticket_ids(last) == ids[4:] and link(last, "next") is None
    back = c.get(link(last, "prev")).get_data(as_text=True)
    assert ticket_ids(back) == ids[2:4]
    assert ticket_ids(c.get(link(back, "prev")).get_data(as_text=True)) == ids[:2]
    assert ticket_ids(c.get("/tickets?kind=rollback").get_data(as_text=True)) == other
    assert ticket_ids(c.get("/tickets?q=50%25").get_data(as_text=True)) == other
    assert ticket_ids(c.get("/tickets?author=dev2&q=off").get_data(as_text=True)) == other
    assert c.get("/tickets?cursor=garbage!").status_code == 400
    lead = login(app, "lead")
    assert ticket_ids(lead.get("/tickets?waiting=me").get_data(as_text=True)) == other
