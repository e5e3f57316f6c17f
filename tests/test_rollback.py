"""Atomic release directories and rollback tickets on local hosts, with real ansible-runner + rsync + git."""

from __future__ import annotations

import os

import pytest

from tests.support.flow import Flow
from tests.support.site import tree_of
from webapp.extensions import db

pytestmark = pytest.mark.integration


@pytest.fixture
def flow(client, world):
    """Return API shortcuts for the world."""
    return Flow(client, world)


def current_version(root) -> int:
    """Return the version `current` points to on a host."""
    return int(os.readlink(root / "current").rstrip("/").rsplit("/", 1)[-1])


def test_release_three_versions_then_roll_back_to_v1(flow, world, client):
    """v1, v2, v3 live; rollback to v1 is a symlink switch to a tree byte-identical to v1; v3 is marked bad."""
    flow.ship({"index.html": "<h1>one</h1>\n"}, "one")
    v1_trees = {h: tree_of(world.hosts.live_tree(h)) for h in world.hosts.roots}
    flow.ship({"index.html": "<h1>two</h1>\n", "bin/run.sh": "#!/bin/sh\necho two\n"}, "two")
    flow.ship({"index.html": "<h1>three</h1>\n", "gone.html": "x\n"}, "three")
    for root in world.hosts.roots.values():
        assert current_version(root) == 3
        assert sorted(os.listdir(root / "releases")) == ["1", "2", "3"]
        # Unchanged files are hard links to the previous release.
        assert os.stat(root / "releases/3/css/site.css").st_ino == os.stat(root / "releases/2/css/site.css").st_ino

    history = client.get("/api/projects/site/releases", headers=world.headers("dev")).get_json()["items"]
    assert [r["version"] for r in history] == [3, 2, 1]
    assert history[0]["live"] and set(history[0]["hosts"]) == {"web1", "web2", "web3"}

    # A ticket approved on top of v3 loses its approval when v3 is rolled back.
    world.svn.commit({"four.html": "4\n"}, "four")
    pending = flow.staged(reason="four")
    flow.approve(pending)

    rid = flow.rollback(1, "three broke checkout")
    t = flow.get(rid)
    assert (t["kind"], t["state"], t["version"]) == ("rollback", "pending_approval", 1)
    assert {f["path"] for f in t["changes"]["files"]} >= {"index.html", "gone.html"}
    flow.act(rid, "approve", user="dev", expect=403)  # not a lead
    flow.act(rid, "approve", user="lead")
    t = flow.release(rid)
    assert t["state"] == "released", t["last_error"]
    for h, root in world.hosts.roots.items():
        assert current_version(root) == 1
        assert tree_of(world.hosts.live_tree(h)) == v1_trees[h]
        assert (root / "releases/3").is_dir()  # not deleted at once
    history = client.get("/api/projects/site/releases", headers=world.headers("dev")).get_json()["items"]
    assert [(r["version"], r["live"], r["bad"]) for r in history] == [
        (3, False, True),
        (2, False, False),
        (1, True, False),
    ]
    voided = flow.get(pending)
    assert voided["state"] == "testing"
    assert "abandoned version 3" in voided["history"][-1]["comment"]


def test_prune_keeps_k_and_rollback_to_pruned_version_restages_from_tag(flow, world):
    """With keep=2 old releases are pruned on hosts; rolling back to a pruned version re-stages it from its tag."""
    world.project.keep_releases = 2
    db.session.commit()
    flow.ship({"index.html": "<h1>one</h1>\n"}, "one")
    v1 = {h: tree_of(world.hosts.live_tree(h)) for h in world.hosts.roots}
    flow.ship({"index.html": "<h1>two</h1>\n"}, "two")
    flow.ship({"index.html": "<h1>three</h1>\n"}, "three")
    for root in world.hosts.roots.values():
        assert sorted(os.listdir(root / "releases")) == ["2", "3"]
    rid = flow.rollback(1)
    flow.act(rid, "approve", user="lead")
    t = flow.release(rid)
    assert t["state"] == "released", t["last_error"]
    for h, root in world.hosts.roots.items():
        assert current_version(root) == 1
        assert tree_of(world.hosts.live_tree(h)) == v1[h]
        assert "3" in os.listdir(root / "releases")  # the abandoned live release survives this prune


def test_failed_host_leaves_every_host_on_old_version_and_retry_switches_all(flow, world):
    """A host whose staging fails keeps every host on v1; after fixing it, retry re-stages it only and switches all."""
    flow.ship({"index.html": "<h1>one</h1>\n"}, "one")
    broken = world.hosts.roots["web2"]
    # Root ignores chmod; a file in the way fails staging's mkdir (the drift check before it, which reads
    # only current/, passes: this host is broken for staging, not changed by hand).
    (broken / "shared").rmdir()
    (broken / "shared").write_text("not a directory\n")
    world.svn.commit({"index.html": "<h1>two</h1>\n"}, "two")
    tid = flow.staged(reason="two")
    flow.approve(tid)
    t = flow.release(tid)
    assert t["state"] == "release_failed"
    hosts = {h["host"]: h for h in t["hosts"]}
    assert hosts["web2"]["status"] == "failed" and hosts["web2"]["message"]
    for name, root in world.hosts.roots.items():
        if name != "web2":
            assert (root / "releases/2").is_dir()  # staged
            assert (root / "current").resolve().name == "1"  # but not switched
    assert "retry" in t["allowed_actions"]
    (broken / "shared").unlink()
    (broken / "shared").mkdir()
    web1_mtime = os.stat(world.hosts.roots["web1"] / "releases/2").st_mtime_ns
    flow.act(tid, "retry")
    world.work()
    t = flow.get(tid)
    assert t["state"] == "released" and t["version"] == 2, t["last_error"]
    for root in world.hosts.roots.values():
        assert (root / "current").resolve().name == "2"
        assert (root / "current/index.html").read_text() == "<h1>two</h1>\n"
    assert os.stat(world.hosts.roots["web1"] / "releases/2").st_mtime_ns == web1_mtime  # not re-staged


def test_inplace_mode_syncs_into_the_web_root(flow, world):
    """In-place projects rsync straight into deploy_root and delete removed files; rollback re-syncs the tag."""
    world.project.deploy_mode = "inplace"
    db.session.commit()
    flow.ship({"old.html": "old\n"}, "one")
    for root in world.hosts.roots.values():
        assert (root / "old.html").exists() and not (root / "current").exists()
    flow.ship({"old.html": None, "index.html": "<h1>two</h1>\n"}, "two")
    for root in world.hosts.roots.values():
        assert not (root / "old.html").exists()
        assert (root / "index.html").read_text() == "<h1>two</h1>\n"
    rid = flow.rollback(1)
    flow.act(rid, "approve", user="lead")
    assert flow.release(rid)["state"] == "released"
    for root in world.hosts.roots.values():
        assert (root / "old.html").exists()


def test_rollback_input_errors(flow, world, client):
    """Rolling back to an unknown or the live version is refused; the live version cannot be a target."""
    flow.ship({"index.html": "<h1>one</h1>\n"}, "one")
    h = world.headers("dev")
    r = client.post("/api/rollbacks", json={"project": "site", "version": 9, "reason": "x"}, headers=h)
    assert r.status_code == 404
    r = client.post("/api/rollbacks", json={"project": "site", "version": 1, "reason": "x"}, headers=h)
    assert r.status_code == 409
    r = client.post("/api/rollbacks", json={"project": "site", "version": "1", "reason": "x"}, headers=h)
    assert r.status_code == 400
    r = client.post(
        "/api/rollbacks", json={"project": "site", "version": 1, "reason": "x"}, headers=world.headers("other")
    )
    assert r.status_code == 404


def test_failing_hook_is_reported_per_host(flow, world, tmp_path):
    """A post-switch hook that fails on a host marks that host failed with the hook's message."""
    inventory = world.hosts.inventory  # hooks come only from playbooks/hooks/: this one fails on marked hosts
    inventory.write_text(
        inventory.read_text().replace(
            "web2 ansible_connection=local", "web2 ferry_hook_fail=1 ansible_connection=local"
        )
    )
    world.project.hook_tasks = "hooks/fail_when_marked.yml"
    db.session.commit()
    world.svn.commit({"index.html": "<h1>hooked</h1>\n"}, "hooked")
    tid = flow.staged(reason="hooked")
    flow.approve(tid)
    t = flow.release(tid)
    assert t["state"] == "release_failed"
    hosts = {h["host"]: h for h in t["hosts"]}
    assert hosts["web2"]["status"] == "failed" and "reload refused" in hosts["web2"]["message"]
    assert hosts["web1"]["status"] != "failed"
