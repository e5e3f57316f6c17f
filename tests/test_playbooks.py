"""staging_update.yml and release.yml against real svn, git, rsync and ansible-runner (local "hosts")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.playbook_env import EXECUTABLE, Env, git_tree, make_env, sh, tree_of

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not all(os.path.exists(f"/usr/bin/{t}") for t in ("svn", "svnadmin", "git", "rsync")),
        reason="needs svn, svnadmin, git and rsync",
    ),
]


# ---------------------------------------------------------------- staging_update.yml


def test_staging_whole_tree_then_change(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    first = env.staging()
    assert first.status == "successful", first.error
    assert first.hosts["localhost"].status == "changed"
    out1 = dict(first.outputs)
    assert out1["svn_revision"] == 1 and len(out1["commit"]) == 40
    assert "A index.html" in out1["changed"]
    assert not (env.staging_dir / ".git").exists()  # snapshot git dir lives outside the working copy
    tree = git_tree(env.snapshot_git_dir, out1["commit"], tmp_path / "export1")
    assert tree[EXECUTABLE][1] is True and tree["index.html"][0] == b"<h1>hello</h1>\n"
    assert not any(p.startswith(".svn") for p in tree)

    env.commit_change("index.html", "<h1>v2</h1>\n")
    second = env.staging()
    assert second.status == "successful", second.error
    assert second.outputs["svn_revision"] == 2
    assert second.outputs["commit"] != out1["commit"]
    assert second.outputs["changed"] == ["M index.html"]
    parent = sh("git", f"--git-dir={env.snapshot_git_dir}", "rev-parse", f"{second.outputs['commit']}^")
    assert parent.strip() == out1["commit"]  # linear staging history
    assert sh("git", f"--git-dir={env.snapshot_git_dir}", "show", f"{second.outputs['commit']}:index.html") == (
        "<h1>v2</h1>\n"
    )

    # No svn change: still a new commit, so every staging update has its own id.
    third = env.staging()
    assert third.status == "successful" and third.outputs["commit"] != second.outputs["commit"]
    assert third.outputs["changed"] == []


def test_staging_named_paths_only(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    assert env.staging().status == "successful"
    env.commit_change("sub/page.html", "<p>new page</p>\n")
    env.commit_change("index.html", "<h1>not yet</h1>\n")
    env.commit_change("sub/added/new.txt", "brand new\n")  # new dir: needs svn update --parents
    res = env.staging(["sub/page.html", "sub/added/new.txt"])
    assert res.status == "successful", res.error
    assert sorted(res.outputs["changed"]) == ["A sub/added/new.txt", "M sub/page.html"]
    assert (env.staging_dir / "index.html").read_text() == "<h1>hello</h1>\n"  # not requested


def test_staging_nonexistent_path_fails_with_svn_message(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    assert env.staging().status == "successful"
    res = env.staging(["no/such/file.txt"])
    assert res.status == "failed"
    assert "Skipped" in res.error or "non-existent" in res.error
    res = env.staging(["missing.txt"])  # a direct child: plain svn update only says "At revision"
    assert res.status == "failed"
    assert "non-existent" in res.error and "missing.txt" in res.error
    assert res.hosts["localhost"].status == "failed"


def test_staging_unreachable_repository_fails(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    assert env.staging().status == "successful"
    (tmp_path / "svnrepo").rename(tmp_path / "svnrepo-gone")
    res = env.staging()
    assert res.status == "failed" and "svn update failed" in res.error


def test_staging_pinned_revision(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    env.commit_change("index.html", "<h1>r2</h1>\n")
    res = env.staging(revision=1)
    assert res.status == "successful", res.error
    assert res.outputs["svn_revision"] == 1
    assert (env.staging_dir / "index.html").read_text() == "<h1>hello</h1>\n"
    res = env.staging()
    assert res.outputs["svn_revision"] == 2
    assert (env.staging_dir / "index.html").read_text() == "<h1>r2</h1>\n"


# ---------------------------------------------------------------- release.yml


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Env, str, str]:
    """An environment with two staging commits: c1 (initial site) and c2 (changed, added, deleted files)."""
    env = make_env(tmp_path_factory.mktemp("release"))
    c1 = env.staging().outputs["commit"]
    env.commit_change("index.html", "<h1>v2</h1>\n")
    env.commit_change("sub/new.txt", "new in v2\n")
    env.commit_change("robots.txt", None)
    res = env.staging()
    assert res.status == "successful", res.error
    return env, c1, res.outputs["commit"]


def _live(root: Path) -> str:
    """Return the target of current."""
    return os.readlink(root / "current")


def _releases(root: Path) -> list[int]:
    """Return the staged release numbers on a host."""
    return sorted(int(p.name) for p in (root / "releases").iterdir())


def test_release_atomic_forward_rollback_prune(rel: tuple[Env, str, str], tmp_path: Path) -> None:
    env, c1, c2 = rel
    names = ["h1", "h2", "h3"]
    inv = env.write_inventory(names)
    r1 = env.release(inv, 1, c1)
    assert r1.status == "successful", r1.error
    assert r1.outputs["release"] == {"version": 1, "commit": c1, "tag_created": True}
    assert {h: r1.hosts[h].changed_files for h in names} == dict.fromkeys(names, 5)

    r2 = env.release(inv, 2, c2)
    assert r2.status == "successful", r2.error
    assert all(r2.hosts[h].status == "changed" for h in names)
    # index.html and sub/new.txt; robots.txt is simply not linked into the fresh releases/2.
    assert r2.hosts["h1"].changed_files == 2
    want = git_tree(env.snapshot_git_dir, "2", tmp_path / "tag2")
    for h in names:
        root = env.hosts[h]
        assert _live(root) == "releases/2"
        assert tree_of(root / "current") == want  # content and exec bit, nothing else
        # Unchanged files are hard links to the previous release.
        assert (root / "releases/1/sub/page.html").stat().st_ino == (root / "releases/2/sub/page.html").stat().st_ino
        assert (root / "releases/1/index.html").stat().st_ino != (root / "releases/2/index.html").stat().st_ino
        assert not (root / ".current.tmp-2").exists()

    # Rollback: re-running v1 re-stages the kept releases/1 and switches back.
    back = env.release(inv, 1, c1)
    assert back.status == "successful", back.error
    assert back.outputs["release"]["tag_created"] is False
    assert all(_live(env.hosts[h]) == "releases/1" for h in names)
    assert tree_of(env.hosts["h1"] / "current") == git_tree(env.snapshot_git_dir, "1", tmp_path / "tag1")

    # Tag N already on another commit: refuse before touching any host.
    clash = env.release(inv, 2, c1)
    assert clash.status == "failed" and "already exists" in clash.error
    assert all(_live(env.hosts[h]) == "releases/1" for h in names)

    # Prune: keep the newest K, never the live or a protected release.
    assert env.release(inv, 3, c2, keep=2, protect_versions=[1]).status == "successful"
    assert _releases(env.hosts["h1"]) == [1, 2, 3]  # 1 is beyond keep=2 but protected
    assert env.release(inv, 4, c1, keep=2).status == "successful"
    assert _releases(env.hosts["h2"]) == [3, 4]
    back3 = env.release(inv, 3, c2, keep=1)
    assert back3.status == "successful", back3.error
    assert back3.hosts["h3"].changed_files == 0  # re-staging a kept release transfers nothing
    assert _releases(env.hosts["h3"]) == [3, 4]  # 3 is live, so kept although keep=1
    assert _live(env.hosts["h3"]) == "releases/3"
    assert back3.outputs["sync"]["h3"]["prune"]["removed"] == []


def test_release_failing_host_switches_no_host(rel: tuple[Env, str, str]) -> None:
    env, c1, c2 = rel
    good = env.write_inventory(["f1", "f3"])
    assert env.release(good, 1, c1).status == "successful"
    blocker = env.root / "not-a-dir"
    blocker.write_text("a file where a directory should be\n")
    env.hosts["fbad"] = blocker / "www"  # mkdir/rsync fail: "Not a directory" (root ignores chmod)
    conn = {"u1": "ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=1 ansible_user=nobody"}
    inv = env.write_inventory(["f1", "fbad", "f3", "u1"], conn)
    res = env.release(inv, 2, c2)
    assert res.status == "failed"
    assert res.hosts["fbad"].status == "failed"
    assert "Not a directory" in res.hosts["fbad"].message
    assert res.hosts["u1"].status == "unreachable"
    for h in ("f1", "f3"):
        assert res.hosts[h].status in ("ok", "changed")  # staged fine ...
        assert _live(env.hosts[h]) == "releases/1"  # ... but not switched
        assert (env.hosts[h] / "releases/2/index.html").exists()


def test_release_shared_paths(rel: tuple[Env, str, str]) -> None:
    env, c1, c2 = rel
    inv = env.write_inventory(["s1"])
    res = env.release(inv, 1, c1, shared_paths=["uploads", "sub/deep"])
    assert res.status == "successful", res.error
    root = env.hosts["s1"]
    assert os.readlink(root / "releases/1/uploads") == str(root / "shared/uploads")
    assert (root / "shared/sub/deep/data.txt").exists()  # seeded once from the release
    (root / "shared/uploads/photo.jpg").write_text("jpeg")
    res = env.release(inv, 2, c2, shared_paths=["uploads", "sub/deep"])
    assert res.status == "successful", res.error
    assert (root / "current/uploads/photo.jpg").read_text() == "jpeg"


def test_release_inplace(rel: tuple[Env, str, str], tmp_path: Path) -> None:
    env, c1, c2 = rel
    inv = env.write_inventory(["i1", "i2"])
    res = env.release(inv, 1, c1, mode="inplace")
    assert res.status == "successful", res.error
    (env.hosts["i1"] / "stray.txt").write_text("not in the release\n")
    # No live_version/check_drift given here: the drift gate (its own tests) would stop on stray.txt; this test
    # is about what an in-place sync does once a release is allowed to overwrite the web root.
    res = env.release(inv, 2, c2, mode="inplace", hook_tasks="hooks/example_reload.yml", check_drift=False)
    assert res.status == "successful", res.error
    want = git_tree(env.snapshot_git_dir, "2", tmp_path / "tag2")
    for h in ("i1", "i2"):
        root = env.hosts[h]
        assert not (root / "current").exists() and not (root / "releases").exists()
        assert (root / ".ferry-live").read_text() == "2\n"  # the example hook ran
        (root / ".ferry-live").unlink()
        assert tree_of(root) == want  # robots.txt and stray.txt deleted
