"""The whole release cycle through the server-rendered pages, with a real worker and real playbooks."""

from __future__ import annotations

import re

import pytest

from tests.conftest import PASSWORD
from tests.support.site import tree_of
from webapp.extensions import db
from webapp.models import Ticket

pytestmark = pytest.mark.integration


def login(app, username):
    """Return a test client logged in as `username`."""
    c = app.test_client()
    r = c.post("/login", data={"username": username, "password": PASSWORD})
    assert r.status_code == 302, r.data
    return c


def press(c, ticket_id, action, **form):
    """Submit an action form on the ticket page and return the followed response."""
    page = c.get(f"/tickets/{ticket_id}").get_data(as_text=True)
    state = re.search(r'data-state="([a-z_]+)"', page).group(1)
    return c.post(f"/tickets/{ticket_id}/{action}", data={"expected_state": state, **form}, follow_redirects=True)


def test_pages_walk_the_whole_story(app, world):
    """Developer files, returns, resubmits, passes; lead approves; developer releases; page shows results."""
    dev, lead = login(app, "dev"), login(app, "lead")
    r = dev.post("/tickets/new", data={"project": "site", "reason": "new about page", "svn_paths": "about\nindex.html"})
    assert r.status_code == 303
    tid = int(r.headers["Location"].rsplit("/", 1)[1])
    page = dev.get(f"/tickets/{tid}").get_data(as_text=True)
    assert "pending_staging" in page and "new about page" in page
    world.work()
    page = dev.get(f"/tickets/{tid}").get_data(as_text=True)
    assert 'data-state="testing"' in page
    assert "http://staging.site.test/" in page
    assert 'data-action="test-passed"' in page and 'data-action="approve"' not in page

    assert "returned" in press(dev, tid, "return", comment="typo").get_data(as_text=True)
    world.svn.commit({"about/index.html": "<p>about us</p>\n"}, "fix typo")
    page = press(dev, tid, "resubmit", svn_paths="about", svn_revision="").get_data(as_text=True)
    assert "pending_staging" in page
    world.work()
    assert (world.staging_dir / "about/index.html").read_text() == "<p>about us</p>\n"
    assert "pending_approval" in press(dev, tid, "test-passed").get_data(as_text=True)

    waiting = lead.get("/tickets?waiting=me").get_data(as_text=True)
    assert f"#{tid}" in waiting
    assert f"#{tid}" not in dev.get("/tickets?waiting=me").get_data(as_text=True)
    page = lead.get(f"/tickets/{tid}").get_data(as_text=True)
    assert "about/index.html" in page  # the approver sees what changes
    # The author cannot approve through a forged form post either.
    r = dev.post(f"/tickets/{tid}/approve", data={"expected_state": "pending_approval"})
    assert r.status_code in (303, 403)
    db.session.expire_all()
    assert db.session.get(Ticket, tid).state == "pending_approval"
    assert "approved" in press(lead, tid, "approve", comment="ship it").get_data(as_text=True)

    page = press(dev, tid, "release").get_data(as_text=True)
    assert "releasing" in page
    world.work()
    page = dev.get(f"/tickets/{tid}").get_data(as_text=True)
    assert 'data-state="released"' in page and "version 1" in page
    for host in ("web1", "web2", "web3"):
        assert f'data-host="{host}"' in page
    for host in world.hosts.roots:
        assert tree_of(world.hosts.live_tree(host)) == tree_of(world.staging_dir)
    assert "ship it" in page  # history with comments
    project_page = dev.get("/projects/site").get_data(as_text=True)
    assert 'id="live-version">1<' in project_page


def test_stale_form_changes_nothing(app, world):
    """A form posted for a state the ticket has left is refused and changes nothing."""
    dev = login(app, "dev")
    tid = int(dev.post("/tickets/new", data={"project": "site", "reason": "x"}).headers["Location"].rsplit("/", 1)[1])
    world.work()
    r = dev.post(f"/tickets/{tid}/cancel", data={"expected_state": "pending_staging"}, follow_redirects=True)
    assert "reload" in r.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Ticket, tid).state == "testing"


def test_pages_require_login_and_hide_other_projects(app, world):
    """Anonymous users go to the login page; a member of another project gets 404 for this ticket."""
    anon = app.test_client()
    assert anon.get("/tickets").status_code == 302
    dev = login(app, "dev")
    tid = int(dev.post("/tickets/new", data={"project": "site", "reason": "x"}).headers["Location"].rsplit("/", 1)[1])
    other = login(app, "other")
    assert other.get(f"/tickets/{tid}").status_code == 404
    assert "site" not in other.get("/projects").get_data(as_text=True).replace("elsewhere", "")
    assert other.get("/admin/users").status_code == 403


def test_reason_is_escaped(app, world):
    """A reason holding HTML/JS renders as text."""
    dev = login(app, "dev")
    payload = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    r = dev.post("/tickets/new", data={"project": "site", "reason": payload}, follow_redirects=True)
    page = r.get_data(as_text=True)
    assert payload not in page
    assert "&lt;script&gt;alert(" in page


def test_wrong_password_is_refused(app, world):
    """A wrong password does not log in."""
    r = app.test_client().post("/login", data={"username": "dev", "password": "wrong-password"})
    assert r.status_code == 401
