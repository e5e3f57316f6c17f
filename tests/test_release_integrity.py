"""Ship exactly what was tested, never backwards: two tickets interleaved in every order."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.flow import Flow
from tests.support.site import tree_of
from webapp.extensions import db
from webapp.models import Ticket
from webapp.releases import snapshot_git_dir

pytestmark = pytest.mark.integration


@pytest.fixture
def flow(client, world):
    """Return API shortcuts for the world."""
    return Flow(client, world)


def host_trees(world) -> list[dict]:
    """Return the live tree of every host."""
    return [tree_of(world.hosts.live_tree(h)) for h in world.hosts.roots]


def commit_tree(world, commit: str, tmp_path) -> dict:
    """Return the tree of a snapshot commit, exported with git archive."""
    out = tmp_path / f"export-{commit[:8]}"
    out.mkdir()
    git_dir = snapshot_git_dir(world.project)
    archive = subprocess.run(["git", f"--git-dir={git_dir}", "archive", commit], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return tree_of(out)


def two_tickets(flow, world):
    """Stage A (a.html) then B (b.html) on the same staging; return (A, B) ids, both in testing."""
    world.svn.commit({"a.html": "A\n"}, "A")
    a = flow.staged(reason="A")
    world.svn.commit({"b.html": "B\n"}, "B")
    b = flow.staged(reason="B")
    return a, b


def test_release_ships_the_tested_commit_not_what_staging_holds_now(flow, world, tmp_path):
    """A passes on a tree without B's change; B is staged later; releasing A ships A's tree only."""
    world.svn.commit({"a.html": "A\n"}, "A")
    a = flow.staged(reason="A")
    flow.approve(a)
    tested = flow.get(a)["tested_commit"]
    world.svn.commit({"b.html": "B\n"}, "B")
    flow.staged(reason="B")  # staging now holds B too
    assert (world.staging_dir / "b.html").exists()
    t = flow.release(a)
    assert t["state"] == "released" and t["version"] == 1
    expected = commit_tree(world, tested, tmp_path)
    for tree in host_trees(world):
        assert "a.html" in tree and "b.html" not in tree
        assert tree == expected


def test_release_newer_then_older_marks_older_as_contained(flow, world):
    """Release B (which carries A) first; releasing A afterwards ships nothing and records version 1."""
    a, b = two_tickets(flow, world)
    flow.approve(a)
    flow.approve(b)
    assert flow.get(b, user="lead")["changes"]["included_tickets"][0]["id"] == a
    assert flow.release(b)["version"] == 1
    before = host_trees(world)
    t = flow.release(a)
    assert t["state"] == "released" and t["version"] == 1
    assert "already part of live version 1" in t["history"][-1]["comment"]
    assert host_trees(world) == before
    assert all("b.html" in tree for tree in before)


def test_release_older_then_newer_moves_forward(flow, world):
    """A passes before B is staged, B after: A ships version 1 without B, B ships version 2 with both."""
    world.svn.commit({"a.html": "A\n"}, "A")
    a = flow.staged(reason="A")
    flow.approve(a)
    world.svn.commit({"b.html": "B\n"}, "B")
    b = flow.staged(reason="B")
    flow.approve(b)
    assert flow.release(a)["version"] == 1
    assert all("b.html" not in tree for tree in host_trees(world))
    assert flow.release(b)["version"] == 2
    assert all({"a.html", "b.html"} <= set(tree) for tree in host_trees(world))


def test_passing_after_another_update_ships_what_the_tester_saw(flow, world):
    """A and B staged, then A passes: the tester saw B's change too, so A's release carries B (listed)."""
    a, b = two_tickets(flow, world)
    flow.approve(a)
    t = flow.get(a, user="lead")
    assert t["tested_commit"] == flow.get(b)["staging_commit"]
    assert [x["id"] for x in t["changes"]["included_tickets"]] == [b]
    assert flow.release(a)["version"] == 1
    assert all({"a.html", "b.html"} <= set(tree) for tree in host_trees(world))
    flow.approve(b)
    t = flow.release(b)
    assert t["state"] == "released" and t["version"] == 1  # already live: nothing shipped


def test_pass_a_update_b_release_b_release_a(flow, world):
    """Pass A, then B is updated and released; A's release is contained in it and ships nothing older."""
    world.svn.commit({"a.html": "A\n"}, "A")
    a = flow.staged(reason="A")
    flow.approve(a)
    world.svn.commit({"b.html": "B\n"}, "B")
    b = flow.staged(reason="B")
    flow.approve(b)
    assert flow.release(b)["version"] == 1
    t = flow.release(a)
    assert t["version"] == 1 and t["state"] == "released"
    assert all({"a.html", "b.html"} <= set(tree) for tree in host_trees(world))


def test_release_refused_when_live_is_not_an_ancestor(flow, world):
    """A tested commit that does not descend from the live one is refused and goes back to testing."""
    flow.ship({"a.html": "A\n"}, "A")
    b = flow.staged(reason="B")
    flow.approve(b)
    git_dir = snapshot_git_dir(world.project)
    orphan = subprocess.run(
        [
            "git",
            f"--git-dir={git_dir}",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit-tree",
            "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
            "-m",
            "odd history",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ticket = db.session.get(Ticket, b)
    ticket.tested_commit = orphan
    db.session.commit()
    before = host_trees(world)
    t = flow.release(b)
    assert t["state"] == "testing"
    assert "not an ancestor" in t["last_error"]
    assert host_trees(world) == before
