"""Production serves exactly the tested tree, and production's own data survives: a PHP-like tree with its own
.gitignore/.gitattributes, CRLF files, unicode names, empty dirs, symlinks and exec bits, through staging,
release, a partial-path release, rollback and retry, in both modes, on local and SSH hosts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import build_world
from tests.support.flow import Flow
from tests.support.realtree import commit_raw, make_php_repo, snapshot, versioned_tree
from tests.test_ssh_release import make_world  # noqa: F401  (fixture)
from webapp.extensions import db
from webapp.models import Project, Run

pytestmark = pytest.mark.integration

SHARED = ["uploads", "config/local.php"]
RUNTIME_ON_STAGING = {
    "cache/views/compiled.php": b"<?php // compiled by the staging site\n",
    "logs/error.log": b"PHP Warning\n",
    "uploads/tester.jpg": b"\xff\xd8 test upload",
    "tmp-session/sess_1": b"x",
}


class Cycle:
    """One project on some hosts, driven through the API, with the checks every step repeats."""

    def __init__(self, world, flow: Flow, roots: dict[str, Path], mode: str, tmp_path: Path) -> None:
        """Point the world's project at the PHP repository, in `mode`, with shared paths; seed host data."""
        self.world, self.flow, self.roots, self.mode, self.tmp = world, flow, roots, mode, tmp_path
        world.svn = make_php_repo(tmp_path / "php")
        project = db.session.get(Project, world.project.id)
        project.svn_url, project.deploy_mode, project.shared_paths = world.svn.url, mode, SHARED
        db.session.commit()
        for root in roots.values():
            base = root / "shared" if mode == "atomic" else root
            (base / "uploads").mkdir(parents=True, exist_ok=True)
            (base / "uploads/photo.jpg").write_bytes(b"\xff\xd8 user upload")
            (base / "config").mkdir(parents=True, exist_ok=True)
            (base / "config/local.php").write_bytes(b"<?php return ['host' => 'own'];\n")
        self.n = 0

    def live(self, name: str) -> Path:
        """Return the directory a host serves."""
        root = self.roots[name]
        return root / "current" if self.mode == "atomic" else root

    def staging_tree(self) -> dict:
        """Return the versioned content of the staging working copy now (what testers see), shared paths out."""
        self.n += 1
        return versioned_tree(self.world.staging_dir, self.tmp / f"export-{self.n}", skip=set(SHARED))

    def assert_hosts_serve(self, expected: dict) -> None:
        """Every host serves exactly `expected`, and production's own data is intact."""
        for name in self.roots:
            got = snapshot(self.live(name), skip=set(SHARED))
            assert got == expected, (name, sorted(set(got) ^ set(expected)))
            for path in RUNTIME_ON_STAGING:
                assert not (self.live(name) / path).exists(), (name, path)
            assert (self.live(name) / "uploads/photo.jpg").read_bytes() == b"\xff\xd8 user upload"
            assert (self.live(name) / "config/local.php").read_bytes() == b"<?php return ['host' => 'own'];\n"

    def ship(self, tid: int) -> dict:
        """Pass, approve and release a staged ticket; return it released."""
        self.flow.approve(tid)
        t = self.flow.release(tid)
        assert t["state"] == "released", t["last_error"]
        return t


def run_cycle(c: Cycle) -> None:
    """Release, partial-path release, rollback and another release; hosts always equal the tested tree."""
    flow, world = c.flow, c.world
    first = flow.staged(reason="first staging")
    # The staging site writes runtime files; none of them is versioned, none may ship.
    for rel, data in RUNTIME_ON_STAGING.items():
        (world.staging_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (world.staging_dir / rel).write_bytes(data)
    commit_raw(
        world.svn,
        "plugins, crlf, empty dir, symlink",
        files={
            "windows.txt": b"line one\r\nline two changed\r\n",
            "usr/plugins/Other/Plugin.php": b"<?php class Other {}\n",
            "config/db.php": b"<?php // ignored by .gitignore, versioned in svn\n",
            "notes/readme.txt": b"lf only\n",
        },
        delete=["-dash.html"],
        dirs=["storage/framework"],
        symlinks={"current.php": "index.php"},
    )
    second = flow.staged(reason="second staging")
    t = flow.get(second, user="lead")
    unversioned = set(t["changes"]["unversioned"])
    assert {"logs/error.log", "tmp-session"} <= unversioned, unversioned
    paths = {f["path"] for f in t["changes"]["files"]}
    # Before the first release, the lead sees every file that will ship, with readable names.
    assert {"ü.html", "a b c.html", "usr/plugins/Other/Plugin.php", "config/db.php", "uploads/", "latest.php"} <= paths
    assert not any(p.startswith('"') for p in paths)
    v1 = c.staging_tree()
    assert v1["windows.txt"] == ("f", b"line one\r\nline two changed\r\n", False)
    assert v1["bin/cron.sh"][2] is True and v1["latest.php"] == ("l", "index.php") and v1["storage/framework"] == ("d",)
    c.ship(second)
    c.assert_hosts_serve(v1)
    assert flow.get(first)["state"] == "testing"

    # A partial update: only mixed.php is updated; the new file committed alongside stays out (mixed revision).
    commit_raw(
        world.svn,
        "change mixed.php and add a file",
        files={"mixed.php": b"<?php\r\necho 2;\n", "new/later.php": b"<?php // not updated yet\n"},
        executables=["index.php"],
    )
    third = flow.file(paths=["mixed.php", "index.php"], reason="partial")
    world.work()
    assert flow.get(third)["state"] == "testing", flow.get(third)["last_error"]
    v2 = c.staging_tree()
    assert "new/later.php" not in v2 and v2["mixed.php"][1] == b"<?php\r\necho 2;\n" and v2["index.php"][2] is True
    t = c.ship(third)
    assert t["version"] == 2
    c.assert_hosts_serve(v2)

    rid = flow.rollback(1, "back to one")
    flow.act(rid, "approve", user="lead")
    assert flow.release(rid)["state"] == "released"
    c.assert_hosts_serve(v1)

    commit_raw(world.svn, "three", files={"mixed.php": b"three\r\n"}, delete=["cache/views"])
    fourth = flow.staged(reason="fourth")
    v3 = c.staging_tree()
    assert "cache/views" not in v3 and "new/later.php" in v3
    c.ship(fourth)
    c.assert_hosts_serve(v3)


@pytest.mark.parametrize("mode", ["atomic", "inplace"])
def test_local_hosts_serve_exactly_the_tested_tree(client, app, tmp_path, mode):
    """Local hosts: every step ships the versioned staging tree byte for byte; host data survives."""
    world = build_world(app, tmp_path)
    run_cycle(Cycle(world, Flow(client, world), world.hosts.roots, mode, tmp_path))


@pytest.mark.ssh
@pytest.mark.parametrize("mode", ["atomic", "inplace"])
def test_ssh_hosts_serve_exactly_the_tested_tree(make_world, tmp_path, mode):  # noqa: F811
    """SSH hosts (netns + sshd): the same cycle over real ssh."""
    s = make_world()
    for root in s.roots.values():
        root.mkdir(parents=True, exist_ok=True)
    run_cycle(Cycle(s.world, s.flow, s.roots, mode, tmp_path))


def test_retry_after_a_failed_host_ships_the_same_exact_tree(client, app, tmp_path):
    """A host that fails staging, then retry: the retried host gets the same exact tree as the others."""
    world = build_world(app, tmp_path)
    c = Cycle(world, Flow(client, world), world.hosts.roots, "atomic", tmp_path)
    c.ship(c.flow.staged(reason="one"))
    broken = world.hosts.roots["web2"]
    (broken / "releases").rename(broken / "releases.saved")
    (broken / "releases").write_text("in the way\n")
    commit_raw(world.svn, "two", files={"windows.txt": b"two\r\n"}, dirs=["fresh/empty"])
    tid = c.flow.staged(reason="two")
    expected = c.staging_tree()
    c.flow.approve(tid)
    assert c.flow.release(tid)["state"] == "release_failed"
    (broken / "releases").unlink()
    (broken / "releases.saved").rename(broken / "releases")
    c.flow.act(tid, "retry")
    world.work()
    assert c.flow.get(tid)["state"] == "released"
    c.assert_hosts_serve(expected)


def test_failed_staging_run_records_what_staging_serves_and_the_next_ticket_lists_it(flow_world):
    """svn updates one path, then fails on another: the snapshot still records staging; the next ticket carries it."""
    flow, world = flow_world
    world.svn.commit({"half.html": "updated before the failure\n"}, "half")
    bad = flow.file(paths=["half.html", "no/such/path.html"], reason="half way")
    world.work()
    t = flow.get(bad)
    assert t["state"] == "staging_failed" and "no/such/path.html" in t["last_error"]
    assert "recorded as snapshot" in t["last_error"]
    failed_run = db.session.scalars(db.select(Run).where(Run.ticket_id == bad)).all()[-1]
    assert failed_run.commit and (world.staging_dir / "half.html").exists()
    project = db.session.get(Project, world.project.id)
    assert project.staging_commit == failed_run.commit
    world.svn.commit({"other.html": "other\n"}, "other")
    nxt = flow.staged(paths=["other.html"], reason="next")
    changes = flow.get(nxt, user="lead")["changes"]
    assert [t["id"] for t in changes["included_tickets"]] == [bad]
    assert {"half.html", "other.html"} <= {f["path"] for f in changes["files"]}


def test_test_passed_records_the_snapshot_staging_serves(flow_world, client):
    """A passes after B was staged: A ships B's snapshot (what the tester saw); later updates do not ride along."""
    flow, world = flow_world
    world.svn.commit({"a.html": "A\n"}, "A")
    a = flow.staged(reason="A")
    world.svn.commit({"b.html": "B\n"}, "B")
    b = flow.staged(reason="B")
    flow.act(a, "test-passed")
    ta, tb = flow.get(a), flow.get(b)
    assert ta["tested_commit"] == tb["staging_commit"] != ta["staging_commit"]
    assert ta["changes"]["staging_moved_on"] is False
    world.svn.commit({"c.html": "C\n"}, "C")
    flow.staged(reason="C")
    ta = flow.get(a)
    assert ta["changes"]["staging_moved_on"] is True and ta["changes"]["target"] == ta["tested_commit"]
    page = client.get(f"/tickets/{a}", headers=world.headers("dev"))
    assert page.status_code in (200, 302)


def test_lead_sees_text_diffs_of_what_changes(flow_world):
    """The changes list carries a text diff per changed text file (binary ones flagged), against the live tree."""
    flow, world = flow_world
    flow.ship({"index.html": "<h1>one</h1>\n"}, "one")
    world.svn.commit({"index.html": "<h1>two</h1>\n"}, "two")
    tid = flow.staged(reason="two")
    changes = flow.get(tid, user="lead")["changes"]
    assert [f["path"] for f in changes["files"]] == ["index.html"]
    (diff,) = changes["diffs"]
    assert "-<h1>one</h1>" in diff["diff"] and "+<h1>two</h1>" in diff["diff"] and not diff["binary"]


@pytest.fixture
def flow_world(client, world):
    """Return (Flow, world) on local hosts."""
    return Flow(client, world), world


def test_hook_failure_switches_every_host_back(flow_world):
    """A post-switch hook failing on one host puts every host back on the live version; record = fleet."""
    flow, world = flow_world
    flow.ship({"index.html": "<h1>one</h1>\n"}, "one")
    project = db.session.get(Project, world.project.id)
    project.hook_tasks = "hooks/fail_when_marked.yml"
    db.session.commit()
    inv = world.hosts.inventory
    inv.write_text(
        inv.read_text().replace("web2 ansible_connection=local", "web2 ansible_connection=local ferry_hook_fail=1")
    )
    world.svn.commit({"index.html": "<h1>two</h1>\n"}, "two")
    tid = flow.staged(reason="two")
    flow.approve(tid)
    t = flow.release(tid)
    assert t["state"] == "release_failed"
    assert "reload refused on web2" in t["last_error"] and "every host is back on version 1" in t["last_error"]
    for root in world.hosts.roots.values():
        assert os.readlink(root / "current") == "releases/1"
        assert (root / "current/index.html").read_text() == "<h1>one</h1>\n"
    db.session.expire_all()
    assert db.session.get(Project, world.project.id).live_version == 1
    inv.write_text(inv.read_text().replace(" ferry_hook_fail=1", ""))
    flow.act(tid, "retry")
    world.work()
    t = flow.get(tid)
    assert t["state"] == "released" and t["version"] == 2, t["last_error"]
    for root in world.hosts.roots.values():
        assert os.readlink(root / "current") == "releases/2"


def test_switch_failing_on_one_host_switches_the_others_back(flow_world):
    """When `current` cannot be switched on one host, the hosts that did switch go back: never a mixed fleet."""
    flow, world = flow_world
    flow.ship({"index.html": "<h1>one</h1>\n"}, "one")
    web2 = world.hosts.roots["web2"]
    # A directory where the switch builds its new symlink: `rm -f` refuses it, so the switch fails on web2
    # (the drift check before staging looks at current/ only, which is fine).
    (web2 / ".current.tmp-2").mkdir()
    world.svn.commit({"index.html": "<h1>two</h1>\n"}, "two")
    tid = flow.staged(reason="two")
    flow.approve(tid)
    t = flow.release(tid)
    assert t["state"] == "release_failed" and "Is a directory" in t["last_error"], t["last_error"]
    for name in ("web1", "web3"):
        assert os.readlink(world.hosts.roots[name] / "current") == "releases/1"
    assert db.session.get(Project, world.project.id).live_version == 1


def test_inplace_first_release_never_deletes_what_the_web_root_already_holds(flow_world):
    """Adopting a web root in place: files neither released nor shared are reported, kept, deleted only on overwrite."""
    flow, world = flow_world
    project = db.session.get(Project, world.project.id)
    project.deploy_mode, project.shared_paths = "inplace", ["uploads"]
    db.session.commit()
    for root in world.hosts.roots.values():
        (root / "legacy.php").write_text("<?php // the site before Ferry\n")
        (root / "uploads").mkdir()
        (root / "uploads/photo.jpg").write_bytes(b"\xff\xd8")
    world.svn.commit({"index.html": "<h1>one</h1>\n"}, "one")
    tid = flow.staged(reason="one")
    flow.approve(tid)
    t = flow.release(tid)
    assert t["state"] == "release_failed" and "legacy.php" in t["last_error"], t["last_error"]
    for root in world.hosts.roots.values():
        assert (root / "legacy.php").exists() and not (root / "index.html").exists()  # nothing changed
    flow.act(tid, "retry", overwrite_drift=True)
    world.work()
    t = flow.get(tid)
    assert t["state"] == "released", t["last_error"]
    for root in world.hosts.roots.values():
        assert not (root / "legacy.php").exists() and (root / "index.html").exists()
        assert (root / "uploads/photo.jpg").read_bytes() == b"\xff\xd8"
