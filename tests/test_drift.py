"""Drift and verify: a host changed by hand stops the release (nothing switches), overwrite_drift replaces the
change, and `flask verify` / the hosts API report every host as in_sync, drifted, unreachable or new."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from jobs.cli import verify_cmd
from tests.support.flow import Flow
from tests.support.site import tree_of
from tests.test_pages_flow import login
from tests.test_ssh_release import make_world  # noqa: F401  (the SSH world fixture)
from webapp.extensions import db
from webapp.models import HostState, Run, TicketEvent

pytestmark = pytest.mark.integration


@pytest.fixture
def flow(client, world):
    """Drive tickets through the API."""
    return Flow(client, world)


def live_dir(world, host: str) -> Path:
    """Return the directory a host serves (current in atomic mode, the root in place)."""
    root = world.hosts.roots[host]
    return root / "current" if world.project.deploy_mode == "atomic" else root


def served(world) -> dict[str, str | None]:
    """Return where `current` points on every host."""
    out = {}
    for name, root in world.hosts.roots.items():
        link = root / "current"
        out[name] = os.readlink(link) if link.is_symlink() else None
    return out


def verify(app, name: str = "site") -> tuple[int, str]:
    """Run `flask verify NAME`; return its exit code and output."""
    result = app.test_cli_runner().invoke(verify_cmd, [name])
    return result.exit_code, result.output


def states(project_id: int) -> dict[str, HostState]:
    """Return the fleet table rows by host."""
    db.session.expire_all()
    return {r.host: r for r in db.session.scalars(select(HostState).where(HostState.project_id == project_id))}


def hand_edit(world, host: str, case: str) -> dict:
    """Change one host by hand the way ops do; return the drift lists the check must report for it."""
    live = live_dir(world, host)
    if case == "edit":
        (live / "index.html").write_text("<h1>hotfix on production</h1>\n")
        return {"modified": ["index.html"]}
    if case == "same-size-edit":  # a one-character hotfix: same size, new mtime; the checksum pass confirms it
        path = live / "index.html"
        st = path.stat()
        path.write_bytes(path.read_bytes().upper())
        os.utime(path, (st.st_atime, st.st_mtime + 60))
        return {"modified": ["index.html"]}
    if case == "touch":  # only the time changed: the checksum pass clears it, not drift
        path = live / "index.html"
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 60))
        return {}
    if case == "hidden-edit":  # same size and mtime: only a full checksum comparison sees it
        path = live / "index.html"
        st = path.stat()
        path.write_bytes(path.read_bytes().upper())
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        return {}
    if case == "delete":
        (live / "css" / "site.css").unlink()
        return {"deleted": ["css/site.css"]}
    if case == "add":
        (live / "shell.php").write_text("<?php system($_GET['c']);\n")
        return {"added": ["shell.php"]}
    if case == "chmod":  # chmod +x
        (live / "about" / "index.html").chmod(0o755)
        return {"modified": ["about/index.html"]}
    raise ValueError(case)


# Host -> the hand changes made on it; every case of the issue in one release cycle.
HAND_CHANGES = {"web1": ["edit", "chmod"], "web2": ["same-size-edit", "delete"], "web3": ["add"]}


def drift_of(changes: list[str], world, host: str) -> dict:
    """Apply the changes to a host and return the drift lists expected for it."""
    want: dict = {"added": [], "modified": [], "deleted": []}
    for case in changes:
        for kind, names in hand_edit(world, host, case).items():
            want[kind] = sorted(want[kind] + names)
    return want


@pytest.mark.parametrize("mode", ["atomic", "inplace"])
def test_drift_stops_the_release_and_overwrite_replaces_it(flow, world, app, mode):
    """Hand edits (content, same size + mtime, chmod +x, delete, add): the next release fails naming each host's
    files and no host switches; a retry overwriting drift re-stages every host and leaves them in sync."""
    world.project.deploy_mode = mode
    db.session.commit()
    flow.ship({"index.html": "<h1>v1</h1>\n"}, "v1")
    assert verify(app)[0] == 0
    want = {h: drift_of(cases, world, h) for h, cases in HAND_CHANGES.items()}
    changed = {h: tree_of(live_dir(world, h)) for h in world.hosts.roots}

    world.svn.commit({"css/site.css": "body { color: blue; }\n"}, "v2")
    tid = flow.staged(reason="v2")
    flow.approve(tid)
    t = flow.release(tid)
    assert t["state"] == "release_failed"
    error = t["last_error"]
    assert error.startswith("drift on 3 host(s), nothing was switched"), error
    for h, lists in want.items():
        for kind, names in lists.items():
            assert all(f"{h}: " in error and n in error for n in names), (h, kind, error)
    # Nothing switched or synced: every host serves exactly what it served before the release.
    if mode == "atomic":
        assert set(served(world).values()) == {"releases/1"}
        assert not any((root / "releases" / "2").exists() for root in world.hosts.roots.values())
    for h in world.hosts.roots:
        assert tree_of(live_dir(world, h)) == changed[h]
    rows = states(world.project.id)
    assert {h: (r.state, r.version, r.drift) for h, r in rows.items()} == {h: ("drifted", 1, want[h]) for h in want}

    code, out = verify(app)
    assert code == 1, out
    for h in want:
        assert f"{h} " in out and "drifted" in out
    assert "shell.php" in out and "css/site.css" in out
    assert {h: r.drift for h, r in states(world.project.id).items()} == want
    assert {h: {k: d[k] for k in want[h]} for h, d in flow.get(tid)["drift"].items()} == want  # the API says it too

    # Overwrite: from the page (atomic) or the API (in place).
    if mode == "atomic":
        page = login(app, "dev")
        html = page.get(f"/tickets/{tid}").get_data(as_text=True)
        assert "Retry, overwriting drift" in html and "shell.php" in html
        r = page.post(f"/tickets/{tid}/retry", data={"overwrite_drift": "1", "expected_state": "release_failed"})
        assert r.status_code == 303
    else:
        flow.act(tid, "retry", overwrite_drift=True)
    world.work()
    t = flow.get(tid)
    assert t["state"] == "released", t["last_error"]
    run = db.session.scalars(select(Run).where(Run.ticket_id == tid).order_by(Run.id.desc())).first()
    assert run.overwrite_drift and run.only_hosts == []  # after a drift failure no host staged: all re-stage
    history = db.session.scalars(select(TicketEvent).where(TicketEvent.ticket_id == tid)).all()
    retry = [e.comment for e in history if e.action == "retry"][-1]
    assert retry.startswith("retry overwriting drift on web1: modified about/index.html, index.html"), retry
    assert "web3: added shell.php" in retry
    if mode == "atomic":
        assert set(served(world).values()) == {"releases/2"}
    trees = {h: tree_of(live_dir(world, h)) for h in world.hosts.roots}
    assert trees["web1"] == trees["web2"] == trees["web3"]
    assert "shell.php" not in trees["web3"]
    assert trees["web2"]["css/site.css"] == (b"body { color: blue; }\n", False)
    assert trees["web2"]["index.html"] == trees["web1"]["index.html"] == (b"<h1>v1</h1>\n", False)
    assert trees["web1"]["about/index.html"][1] is False
    if mode == "atomic":  # the hand-edited inode of release 1 was not hard-linked into release 2
        for h in ("web1", "web2"):
            r1, r2 = world.hosts.roots[h] / "releases" / "1", world.hosts.roots[h] / "releases" / "2"
            assert (r1 / "index.html").stat().st_ino != (r2 / "index.html").stat().st_ino
    assert {(r.state, r.version) for r in states(world.project.id).values()} == {("in_sync", 2)}
    assert verify(app)[0] == 0


def test_verify_reports_new_in_sync_drifted_and_unreachable_with_exit_codes(flow, world, app, client):
    """`flask verify`: never released → every host new; then in_sync (a touched file is not drift), a hidden edit
    seen only with --checksum, a host whose `current` is broken → unreachable, a host added later → new."""
    code, out = verify(app)
    assert code == 1 and out.count(" new ") == 3, out  # nothing released: nothing is in sync yet
    assert {r.state for r in states(world.project.id).values()} == {"new"}

    flow.ship({"index.html": "<h1>v1</h1>\n"}, "v1")
    hand_edit(world, "web1", "touch")
    code, out = verify(app)
    assert code == 0, out
    rows = states(world.project.id)
    assert {h: (r.state, r.version) for h, r in rows.items()} == dict.fromkeys(world.hosts.roots, ("in_sync", 1))

    hand_edit(world, "web2", "hidden-edit")
    assert verify(app)[0] == 0  # the fast path (size + mtime) cannot see it ...
    result = app.test_cli_runner().invoke(verify_cmd, ["site", "--checksum"])
    assert result.exit_code == 1 and "modified index.html" in result.output, result.output  # ... content can
    assert states(world.project.id)["web2"].drift == {"added": [], "modified": ["index.html"], "deleted": []}

    current = world.hosts.roots["web3"] / "current"
    current.unlink()
    current.symlink_to("releases/99")  # served by hand: not what Ferry records
    blocker = world.hosts.roots["web3"].parent / "a-file"
    blocker.write_text("a file where web4's deploy root's parent should be\n")
    web5 = world.hosts.roots["web3"].parent / "web5"
    web5.mkdir()
    new_hosts = {"web4": f"{blocker}/www", "web5": web5}
    added = "".join(f"{h} ansible_connection=local deploy_root={r}\n" for h, r in new_hosts.items())
    inventory = world.hosts.inventory
    inventory.write_text(inventory.read_text().replace("[web:vars]", added + "[web:vars]"))
    code, out = verify(app)
    assert code == 2, out  # a host could not be checked
    rows = states(world.project.id)
    assert rows["web1"].state == "in_sync"
    assert rows["web2"].state == "in_sync"  # fast path again
    assert (rows["web3"].state, rows["web3"].version) == ("drifted", 99)
    assert rows["web3"].message == "drift: serves version 99, Ferry records 1"
    assert rows["web4"].state == "unreachable" and rows["web4"].version is None
    assert "is not a directory" in rows["web4"].message, rows["web4"].message
    assert rows["web5"].state == "new" and rows["web5"].version is None

    # The same table over the API, from the last verify.
    body = client.get("/api/projects/site/hosts", headers=world.headers("dev")).get_json()
    assert set(body) >= {"checked_at", "hosts"} and body["checked_at"]
    assert [h["host"] for h in body["hosts"]] == ["web1", "web2", "web3", "web4", "web5"]
    assert body["hosts"][3] | {"message": "", "checked_at": ""} == {
        "host": "web4",
        "version": None,
        "state": "unreachable",
        "drift": {"added": [], "modified": [], "deleted": []},
        "message": "",
        "checked_at": "",
    }


def test_hosts_api_shapes_and_permissions(flow, world, app, client):
    """GET for every member, POST (queues a verify, 202) for leads and admins only; others get 403/404."""
    flow.ship({"index.html": "<h1>v1</h1>\n"}, "v1")
    (live_dir(world, "web2") / "index.html").write_text("hotfix\n")
    url = "/api/projects/site/hosts"
    body = client.get(url, headers=world.headers("dev")).get_json()
    assert [(h["host"], h["state"], h["version"]) for h in body["hosts"]] == [
        ("web1", "in_sync", 1),
        ("web2", "in_sync", 1),
        ("web3", "in_sync", 1),
    ]  # recorded by the release itself
    assert client.post(url, headers=world.headers("dev")).status_code == 403
    assert client.post(url, headers=world.headers("other")).status_code == 404
    assert client.get(url, headers=world.headers("other")).status_code == 404
    assert client.get(url).status_code == 401
    assert client.post(url, json={"checksum": "yes"}, headers=world.headers("lead")).status_code == 400
    r = client.post(url, headers=world.headers("lead"))
    assert r.status_code == 202 and r.get_json()["verify_pending"] is True
    assert client.post(url, headers=world.headers("admin")).status_code == 202  # already queued: not twice
    world.work()
    body = client.get(url, headers=world.headers("dev")).get_json()
    assert body["verify_pending"] is False
    web2 = {h["host"]: h for h in body["hosts"]}["web2"]
    assert web2["state"] == "drifted" and web2["drift"]["modified"] == ["index.html"] and web2["version"] == 1
    assert web2["message"].startswith("drift: modified index.html")

    # The project page: the fleet table for everyone, the button for leads.
    dev_page = login(app, "dev").get("/projects/site").get_data(as_text=True)
    assert 'id="fleet"' in dev_page and "drifted" in dev_page and 'id="verify-hosts"' not in dev_page
    assert login(app, "dev").post("/projects/site/verify").status_code == 403
    lead = login(app, "lead")
    assert 'id="verify-hosts"' in lead.get("/projects/site").get_data(as_text=True)
    assert lead.post("/projects/site/verify").status_code == 303
    world.work()
    assert states(world.project.id)["web2"].state == "drifted"


def stage_checks(ticket_id: int) -> dict[str, dict]:
    """Return each host's drift check as its stage result recorded it, for the ticket's newest release run."""
    run = db.session.scalars(
        select(Run).where(Run.ticket_id == ticket_id, Run.stage == "release").order_by(Run.id.desc())
    ).first()
    out = {}
    for path in Path(run.run_dir).glob("artifacts/*/job_events/*.json"):
        event = json.loads(path.read_text())
        data = event.get("event_data") or {}
        if event.get("event") == "runner_on_ok" and data.get("task") == "Stage release":
            ferry = data["res"]["ferry"]
            for host, item in (ferry.get("sync") or {}).items():
                out[host] = {**(item["stage"].get("check") or {}), "delta": item["stage"].get("delta", False)}
            for host, item in (ferry.get("check") or {}).items():  # in place: checked, then held, not staged
                out[host] = {**item, "held": True}
    return out


@pytest.mark.parametrize("mode", ["atomic", "inplace"])
def test_hosts_in_sync_take_the_fast_path(flow, world, mode):
    """An unchanged host is found in sync by its listing digest alone (no dry run), inside the stage task."""
    world.project.deploy_mode = mode
    db.session.commit()
    flow.ship({"index.html": "<h1>v1</h1>\n"}, "v1")
    checks = stage_checks(flow.ship({"index.html": "<h1>v2</h1>\n"}, "v2")["id"])
    assert set(checks) == set(world.hosts.roots)
    for host, check in checks.items():
        assert (check["state"], check["version"], check.get("fast")) == ("in_sync", 1, True), (host, check)
        if mode == "inplace":  # behind the barrier: every host checked before any host wrote
            assert {"check", "wait", "host", "controller"} <= set(check["seconds"]), check
        # In place, a host found holding exactly the live tree gets only what changed (and still ends exact).
        assert check["delta"] is (mode == "inplace"), (host, check)
    trees = {h: tree_of(live_dir(world, h)) for h in world.hosts.roots}
    assert all(t["index.html"] == (b"<h1>v2</h1>\n", False) for t in trees.values())
    assert len({repr(sorted(t.items())) for t in trees.values()}) == 1


@pytest.mark.parametrize("forks", [3, 1])
def test_inplace_one_drifted_host_stops_every_host(flow, world, app, forks):
    """In place, one host changed by hand: no host is synced, whether the stage task checks behind a barrier on
    the controller (forks >= hosts) or a play of its own checks first (forks < hosts: hosts cannot all wait)."""
    world.project.deploy_mode, world.project.forks = "inplace", forks
    db.session.commit()
    flow.ship({"index.html": "<h1>v1</h1>\n"}, "v1")
    want = drift_of(["add"], world, "web2")
    before = {h: tree_of(live_dir(world, h)) for h in world.hosts.roots}

    world.svn.commit({"css/site.css": "body { color: red; }\n"}, "v2")
    tid = flow.staged(reason="v2")
    flow.approve(tid)
    t = flow.release(tid)
    assert t["state"] == "release_failed"
    assert t["last_error"].startswith("drift on 1 host(s), nothing was switched"), t["last_error"]
    assert "web2: added shell.php" in t["last_error"]
    for h in world.hosts.roots:
        assert tree_of(live_dir(world, h)) == before[h], h
    assert {h: r.drift for h, r in states(world.project.id).items() if r.state == "drifted"} == {"web2": want}
    run = db.session.scalars(select(Run).where(Run.ticket_id == tid).order_by(Run.id.desc())).first()
    extravars = json.loads((Path(run.run_dir) / "env" / "extravars").read_text())
    assert extravars["check_in_stage"] is (forks >= 3)

    flow.act(tid, "retry", overwrite_drift=True)
    world.work()
    assert flow.get(tid)["state"] == "released"
    css = {tree_of(live_dir(world, h))["css/site.css"] for h in world.hosts.roots}
    assert css == {(b"body { color: red; }\n", False)}


@pytest.mark.parametrize("mode", ["atomic", "inplace"])
def test_drift_over_ssh_fails_release_verify_reports_unreachable_and_overwrite_heals(make_world, app, mode):  # noqa: F811
    """SSH hosts: an edit and a delete on two hosts stop the release (nothing switched or synced); a plain retry
    checks again and fails again; verify names each host (one unreachable, exit 2); overwrite → all in sync."""
    s = make_world(deploy_mode=mode)
    flow, world = s.flow, s.world
    flow.ship({"index.html": "<h1>v1</h1>\n"}, "v1")
    assert verify(app)[0] == 0
    a, b, c = s.names
    want = {a: drift_of(["edit"], world, a), b: drift_of(["delete", "add"], world, b)}
    before = {h: tree_of(live_dir(world, h)) for h in s.names}

    world.svn.commit({"css/site.css": "body { color: green; }\n"}, "v2")
    tid = flow.staged(reason="v2")
    flow.approve(tid)
    t = flow.release(tid)
    assert t["state"] == "release_failed"
    assert f"{a}: modified index.html" in t["last_error"], t["last_error"]
    assert f"{b}: deleted css/site.css; added shell.php" in t["last_error"], t["last_error"]
    # The host in sync took the fast path over ssh. Atomic: the guard inside the stage's session matched, and
    # releases/2 began as a hard-linked copy of current, only the delta travelling. In place: it was checked,
    # found in sync, and held back (other hosts drifted), so nothing was written there.
    check = stage_checks(tid)[c]
    if mode == "inplace":
        assert check["held"] and check["state"] == "in_sync" and "not staged" in check["message"], check
    else:
        assert check["delta"] is True and check.get("guarded"), check
        r1, r2 = s.roots[c] / "releases" / "1", s.roots[c] / "releases" / "2"
        assert (r1 / "index.html").stat().st_ino == (r2 / "index.html").stat().st_ino  # unchanged: linked
        assert (r2 / "css" / "site.css").read_text() == "body { color: green; }\n"
        assert (r1 / "css" / "site.css").read_text() != "body { color: green; }\n"  # changed: a new inode
    for h in s.names:
        assert tree_of(live_dir(world, h)) == before[h]
        if mode == "atomic":
            assert s.live(h) == "releases/1"  # nothing switched
            # Atomic mode checks inside the stage task: an in-sync host may hold an (invisible) releases/2.
            if h in want:
                assert not (s.roots[h] / "releases/2").exists()
    assert {h: r.drift for h, r in states(world.project.id).items() if r.state == "drifted"} == want

    s.hostset.stop_sshd(c)
    try:
        code, out = verify(app)
        t = flow.act(tid, "retry")
        world.work()
        t = flow.get(tid)
    finally:
        s.hostset.start_sshd(c)
    assert code == 2, out
    rows = states(world.project.id)
    assert rows[c].state == "unreachable" and "Connection refused" in rows[c].message, rows[c].message
    assert {h: rows[h].drift for h in (a, b)} == want
    assert t["state"] == "release_failed" and "drift on 2 host(s)" in t["last_error"]

    flow.act(tid, "retry", overwrite_drift=True)
    world.work()
    t = flow.get(tid)
    assert t["state"] == "released", t["last_error"]
    trees = {h: tree_of(live_dir(world, h)) for h in s.names}
    assert trees[a] == trees[b] == trees[c]
    assert trees[b]["css/site.css"] == (b"body { color: green; }\n", False) and "shell.php" not in trees[b]
    assert verify(app)[0] == 0
    assert {(r.state, r.version) for r in states(world.project.id).values()} == {("in_sync", 2)}

    # A host whose deploy root is gone (rebuilt) is new, not drifted: the next release gives it everything.
    shutil.rmtree(s.roots[c])
    code, out = verify(app)
    assert code == 1 and (states(world.project.id)[c].state, states(world.project.id)[c].version) == ("new", None)


@pytest.mark.parametrize("mode", ["atomic", "inplace"])
def test_shared_paths_are_never_drift(flow, world, app, mode):
    """What hosts write into their shared paths (uploads) is theirs: not drift, not touched, in both modes."""
    world.project.deploy_mode = mode
    world.project.shared_paths = ["uploads"]
    db.session.commit()
    flow.ship({"index.html": "<h1>v1</h1>\n", "uploads/.keep": ""}, "v1")
    for root in world.hosts.roots.values():
        base = root / "shared" if mode == "atomic" else root
        (base / "uploads" / "avatar.png").write_bytes(b"\x89PNG user data")
    assert verify(app)[0] == 0
    t = flow.ship({"index.html": "<h1>v2</h1>\n"}, "v2")
    assert t["version"] == 2
    for h in world.hosts.roots:
        assert (live_dir(world, h) / "uploads" / "avatar.png").read_bytes() == b"\x89PNG user data"
    assert verify(app)[0] == 0
