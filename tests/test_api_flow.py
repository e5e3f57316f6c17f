"""The whole release cycle through the JSON API with a real RQ worker running real playbooks."""

from __future__ import annotations

import pytest

from tests.support.site import tree_of
from webapp.extensions import db
from webapp.models import Release, Ticket

pytestmark = pytest.mark.integration


def file_ticket(client, world, paths=None, reason="fix header", user="dev", revision=None):
    """File a ticket through the API and return the response."""
    body = {"project": "site", "reason": reason, "svn_paths": paths or [], "svn_revision": revision}
    return client.post("/api/tickets", json=body, headers=world.headers(user))


def act(client, world, ticket_id, action, user="dev", **body):
    """Fire an action through the API and return the response."""
    return client.post(f"/api/tickets/{ticket_id}/{action}", json=body, headers=world.headers(user))


def get(client, world, ticket_id, user="dev"):
    """Return a ticket's JSON."""
    return client.get(f"/api/tickets/{ticket_id}", headers=world.headers(user)).get_json()


def test_full_cycle_with_return_resubmit_approve_release(client, world):
    """File → staging → return → fix in svn → resubmit → test passed → approve → release; v2 next."""
    r = file_ticket(client, world, paths=["index.html"])
    assert r.status_code == 201, r.get_json()
    tid = r.get_json()["id"]
    assert r.get_json()["state"] == "pending_staging"
    world.work()
    t = get(client, world, tid)
    assert t["state"] == "testing", t["last_error"]
    assert (world.staging_dir / "index.html").read_text() == "<h1>Hello v1</h1>\n"
    assert t["staging_commit"] and t["staging_url"] == "http://staging.site.test/"
    assert set(t["allowed_actions"]) == {"return", "test-passed", "cancel"}

    assert act(client, world, tid, "return", comment="header is wrong").status_code == 200
    world.svn.commit({"index.html": "<h1>Hello v2</h1>\n", "new.html": "new\n"}, "fix header")
    r = act(client, world, tid, "resubmit", svn_paths=["index.html", "new.html"])
    assert r.status_code == 200 and r.get_json()["state"] == "pending_staging"
    world.work()
    t = get(client, world, tid)
    assert t["state"] == "testing"
    assert (world.staging_dir / "index.html").read_text() == "<h1>Hello v2</h1>\n"
    assert (world.staging_dir / "new.html").exists()

    assert act(client, world, tid, "test-passed").get_json()["state"] == "pending_approval"
    # Self-approval: the author is not a lead; the lead of another project is not a member.
    assert act(client, world, tid, "approve", user="dev").status_code == 403
    assert act(client, world, tid, "approve", user="lead2").status_code == 404
    t = get(client, world, tid, user="lead")
    assert {f["path"] for f in t["changes"]["files"]} >= {"index.html", "new.html"}
    r = act(client, world, tid, "approve", user="lead", comment="ok")
    assert r.status_code == 200 and r.get_json()["state"] == "approved"
    assert act(client, world, tid, "approve", user="lead").status_code == 409  # double click

    assert act(client, world, tid, "release").get_json()["state"] == "releasing"
    world.work()
    t = get(client, world, tid)
    assert t["state"] == "released", t
    assert t["version"] == 1
    assert {h["host"] for h in t["hosts"]} == {"web1", "web2", "web3"}
    assert all(h["status"] in ("ok", "changed") for h in t["hosts"])
    staged = tree_of(world.staging_dir)
    for host in world.hosts.roots:
        assert tree_of(world.hosts.live_tree(host)) == staged
    assert staged["bin/run.sh"][1] is True  # executable bit travelled
    history = [(h["action"], h["from"], h["to"]) for h in t["history"]]
    assert ("approve", "pending_approval", "approved") in history
    assert history[-1] == ("release_succeeded", "releasing", "released")

    # A second ticket gets version 2.
    world.svn.commit({"css/site.css": "body { color: red; }\n"}, "red")
    tid2 = file_ticket(client, world, paths=["css"], reason="red text").get_json()["id"]
    world.work()
    act(client, world, tid2, "test-passed")
    act(client, world, tid2, "approve", user="lead")
    act(client, world, tid2, "release")
    world.work()
    t2 = get(client, world, tid2)
    assert t2["state"] == "released" and t2["version"] == 2
    for host in world.hosts.roots:
        assert (world.hosts.live_tree(host) / "css/site.css").read_text() == "body { color: red; }\n"
    assert db.session.query(Release).count() == 2


def test_malformed_svn_path_is_400_and_files_nothing(client, world):
    """A path with '..', a leading '-', an absolute path or a shell metacharacter is refused at filing."""
    for bad in ("../etc", "-r", "/abs/path", "a;rm -rf x", "a/$(id)", "x/--config-dir"):
        r = file_ticket(client, world, paths=[bad])
        assert r.status_code == 400, bad
        assert "svn_paths" in r.get_json()["error"]
    assert db.session.query(Ticket).count() == 0


def test_path_not_in_repository_fails_staging_with_svn_message(client, world):
    """A well-formed path that svn does not know puts the ticket into staging_failed with svn's words."""
    tid = file_ticket(client, world, paths=["no/such/file.html"]).get_json()["id"]
    world.work()
    t = get(client, world, tid)
    assert t["state"] == "staging_failed"
    assert "no/such/file.html" in t["last_error"]
    assert set(t["allowed_actions"]) == {"resubmit", "cancel"}
    r = act(client, world, tid, "resubmit", svn_paths=["index.html"])
    assert r.status_code == 200
    world.work()
    assert get(client, world, tid)["state"] == "testing"


def test_bad_input_and_auth_errors(client, world):
    """Errors have the documented codes and an error message; nothing changes."""
    assert client.get("/api/projects").status_code == 401
    assert client.get("/api/projects", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert file_ticket(client, world, reason="").status_code == 400
    r = client.post("/api/tickets", json={"project": "site", "reason": "x", "bogus": 1}, headers=world.headers("dev"))
    assert r.status_code == 400 and "bogus" in r.get_json()["error"]
    r = client.post("/api/tickets", json=["not", "an", "object"], headers=world.headers("dev"))
    assert r.status_code == 400
    r = client.post("/api/tickets", json={"project": "nope", "reason": "x"}, headers=world.headers("dev"))
    assert r.status_code == 404
    r = client.post(
        "/api/tickets", json={"project": "site", "reason": "x", "svn_revision": "abc"}, headers=world.headers("dev")
    )
    assert r.status_code == 400 and "svn_revision" in r.get_json()["error"]
    assert client.get("/api/tickets/999", headers=world.headers("dev")).status_code == 404
    names = [p["name"] for p in client.get("/api/projects", headers=world.headers("dev")).get_json()]
    assert names == ["site"]
    assert db.session.query(Ticket).count() == 0


def test_no_approval_project_goes_straight_to_approved(client, world):
    """A project that needs no approval moves test passed → approved."""
    world.project.requires_approval = False
    db.session.commit()
    tid = file_ticket(client, world).get_json()["id"]
    world.work()
    assert act(client, world, tid, "test-passed").get_json()["state"] == "approved"


def test_cancel_before_worker_runs_skips_staging(client, world):
    """A ticket cancelled while queued is not staged by the late job."""
    tid = file_ticket(client, world).get_json()["id"]
    assert act(client, world, tid, "cancel").get_json()["state"] == "cancelled"
    world.work()
    t = get(client, world, tid)
    assert t["state"] == "cancelled"
    assert not world.staging_dir.exists()
