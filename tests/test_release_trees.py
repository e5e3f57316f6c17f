"""The controller's two trees of a release (ferry_tag): release/ (the version being shipped) and live/ (the
version the hosts serve, for the drift check and an in-place switch-back). live/ is taken over from release/
by renames or a hard-linked copy instead of a checkout; neither tree may ever see the other's changes.
Real svn and git through the action plugins' own functions (no ansible)."""

from __future__ import annotations

import os

import pytest

from tests.support.plugins import load_plugin
from tests.support.realtree import commit_raw, make_php_repo, snapshot, versioned_tree

pytestmark = pytest.mark.integration


staging_plugin = load_plugin("ferry_staging")
tag = load_plugin("ferry_tag")


@pytest.fixture
def versions(tmp_path):
    """Three tagged versions of the PHP tree (each changes, adds and deletes files); {version: svn export}."""
    repo = make_php_repo(tmp_path / "svn")
    snap = str(tmp_path / "snap.git")
    staging = staging_plugin.Staging(
        {"svn_url": repo.url, "staging_dir": str(tmp_path / "staging"), "snapshot_git_dir": snap}
    )
    staging.checkout_if_missing()
    wants = {}
    changes = [
        {},
        {"files": {"index.php": b"<?php echo 2;\r\n", "new/two.php": b"2"}, "delete": ["windows.txt"]},
        {"files": {"index.php": b"<?php echo 3;\n", "three.txt": b"3\r\n"}, "delete": ["new/two.php"]},
    ]
    for version, change in enumerate(changes, start=1):
        if change:
            commit_raw(repo, f"v{version}", **change)
        staging.update()
        staging.ensure_git()
        tag.tag_version(snap, staging.commit()["commit"], version)
        wants[version] = versioned_tree(tmp_path / "staging", tmp_path / f"export-{version}")
    return snap, tmp_path / "release", tmp_path / "live", wants


def test_live_tree_is_taken_over_from_the_release_tree_and_never_shares_a_change(versions):
    """v1 released → live/ by hard links; v2 checked out leaves live/ at v1; v2 live → swap; v3; a lost marker."""
    snap, release, live, wants = versions
    tag.checkout_release(snap, str(release), 1)
    assert snapshot(release) == wants[1]

    _, how = tag.prepare_live(snap, str(release), str(live), 1)
    assert how == "hard-linked from the release tree"
    tag.checkout_release(snap, str(release), 2)
    assert snapshot(live) == wants[1], "checking out v2 changed the live tree's files"
    assert snapshot(release) == wants[2]

    # v2 went live: release/ holds it, so it becomes live/ by renames and the old live tree is checked out to v3.
    _, how = tag.prepare_live(snap, str(release), str(live), 2)
    assert how == "swapped with the release tree"
    tag.checkout_release(snap, str(release), 3)
    assert (snapshot(live), snapshot(release)) == (wants[2], wants[3])
    assert tag.prepare_live(snap, str(release), str(live), 2)[1] == "kept"
    assert not (live.parent / "live.swap").exists()

    # A tree whose marker is gone (a checkout that died half-way) is checked out again, never trusted.
    (live / ".git" / tag.ferry_tree.EXACT_MARK).unlink()
    (live / "index.php").write_bytes(b"half-written")
    assert tag.prepare_live(snap, str(release), str(live), 2)[1] == "checked out"
    assert snapshot(live) == wants[2]


def test_renames_interrupted_half_way_are_recovered(versions):
    """A run that died between the renames left live.swap and no live/: the next run rebuilds live/ exactly."""
    snap, release, live, wants = versions
    tag.checkout_release(snap, str(release), 1)
    tag.prepare_live(snap, str(release), str(live), 1)
    tag.checkout_release(snap, str(release), 2)
    os.rename(live, live.parent / "live.swap")  # first rename done, then the worker died
    assert tag.prepare_live(snap, str(release), str(live), 2)[1] == "hard-linked from the release tree"
    tag.checkout_release(snap, str(release), 3)
    assert (snapshot(live), snapshot(release)) == (wants[2], wants[3])
    assert not (live.parent / "live.swap").exists()
