"""The drift check's fast path (playbooks/lib/ferry_listing.py): a tree's listing digest changes with every
change rsync's quick check sees and with nothing it ignores. Real find, sort and sha1sum; no ansible."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.realtree import EXECUTABLES, PHP_TREE, SYMLINKS, write_tree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "playbooks" / "lib"))
import ferry_listing  # noqa: E402
import ferry_tree  # noqa: E402

SHARED = ["uploads", "config/local.php"]


def _copy(src: Path, dest: Path) -> Path:
    """Copy a tree as rsync -a does (times, modes, links)."""
    subprocess.run(["rsync", "-a", f"{src}/", f"{dest}/"], check=True)
    return dest


@pytest.fixture
def trees(tmp_path):
    """A PHP-like tree with a shared path's content, and an rsync -a copy of it (a host's live tree)."""
    src = tmp_path / "live"
    write_tree(src, PHP_TREE, EXECUTABLES, SYMLINKS)
    (src / "config" / "local.php").write_text("<?php // this host's own\n")
    for path in [src, *src.rglob("*")]:  # whole-second times in the past, as a release tree's commit times
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    return src, _copy(src, tmp_path / "host")


def _digest(tree: Path) -> str:
    return ferry_listing.local_digest(str(tree), SHARED)


CHANGES = {
    "content, same size, new mtime": lambda t: (t / "index.php").write_bytes((t / "index.php").read_bytes().upper()),
    "time only": lambda t: os.utime(t / "index.php", (1, 1)),
    "exec bit": lambda t: (t / "index.php").chmod(0o755),
    "added file": lambda t: (t / "shell.php").write_text("<?php\n"),
    "deleted file": lambda t: (t / "windows.txt").unlink(),
    "deleted empty dir": lambda t: (t / "cache" / "views").rmdir(),
    "symlink retargeted": lambda t: ((t / "latest.php").unlink(), os.symlink("mixed.php", t / "latest.php")),
    "file became a dir": lambda t: ((t / "ü.html").unlink(), (t / "ü.html").mkdir()),
    "dir mode": lambda t: (t / "bin").chmod(0o700),
}
IGNORED = {
    "shared path content": lambda t: (t / "uploads" / "cat.jpg").write_bytes(b"jpeg"),
    "per-host config": lambda t: (t / "config" / "local.php").write_text("<?php // edited\n"),
    "directory time": lambda t: os.utime(t / "bin", (1, 1)),
    "a .svn dir": lambda t: (t / ".svn").mkdir(),
}


def test_equal_trees_have_equal_digests(trees):
    src, host = trees
    assert _digest(src) == _digest(host) != ""


@pytest.mark.parametrize("case", sorted(CHANGES))
def test_every_change_a_dry_run_sees_changes_the_digest(trees, case):
    src, host = trees
    CHANGES[case](host)
    assert _digest(host) != _digest(src)


@pytest.mark.parametrize("case", sorted(IGNORED))
def test_what_the_check_ignores_leaves_the_digest(trees, case):
    src, host = trees
    IGNORED[case](host)
    assert _digest(host) == _digest(src)


def test_a_failing_find_never_digests_like_a_tree(tmp_path):
    """A find that fails prints no OK line: its digest differs even from an empty tree's."""
    empty = tmp_path / "empty"
    empty.mkdir()
    script = ferry_listing.script(str(empty), [])
    assert "find . " in script
    failed = subprocess.run(["sh", "-c", script.replace("find . ", "find ./gone ")], capture_output=True, text=True)
    assert failed.stdout.strip() and failed.stdout.strip() != _digest(empty)


def test_expected_digest_is_cached_per_exact_commit(trees):
    """The controller computes a tree's digest once per exact commit; a new commit means a new digest."""
    src, _ = trees
    (src / ".git").mkdir()
    ferry_tree.mark_exact(str(src), "a" * 40)
    first = ferry_listing.expected(str(src), SHARED)
    (src / "index.php").write_text("changed behind the marker's back\n")
    assert ferry_listing.expected(str(src), SHARED) == first  # cached: Ferry's trees only change with the marker
    ferry_tree.mark_exact(str(src), "b" * 40)
    assert ferry_listing.expected(str(src), SHARED) != first
    shutil.rmtree(src / ".git")
    assert ferry_listing.expected(str(src), SHARED) == _digest(src)  # no marker: never cached


def test_glob_characters_in_shared_paths_skip_the_fast_path():
    assert ferry_listing.usable(["uploads", "config/local.php"])
    assert not ferry_listing.usable(["cache/*"])


def _apply(delta: list[bytes], src: Path, dest: Path) -> subprocess.CompletedProcess:
    """Sync only the delta's paths, as ferry_sync's in-place delta stage does."""
    listing = dest.parent / "delta"
    listing.write_bytes(b"".join(p + b"\0" for p in delta))
    argv = [
        "rsync",
        "-a",
        "-i",
        "--ignore-times",
        f"--files-from={listing}",
        "--from0",
        "--delete-missing-args",
        "--force",
    ]
    argv += ["--exclude=.git", "--exclude=.svn", *[f"--exclude=/{p}" for p in SHARED], f"{src}/", f"{dest}/"]
    return subprocess.run(argv, capture_output=True, text=True)


def _differences(src: Path, dest: Path) -> list[str]:
    """What a full rsync -a --delete would still change (directory times aside)."""
    argv = ["rsync", "-a", "-i", "--dry-run", "--delete", "--omit-dir-times", "--exclude=.git", "--exclude=.svn"]
    argv += [*[f"--exclude=/{p}" for p in SHARED], f"{src}/", f"{dest}/"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()


NEXT_VERSION = {
    **CHANGES,
    "dir deleted with its content": lambda t: shutil.rmtree(t / "usr"),
    "dir became a file": lambda t: (shutil.rmtree(t / "img"), (t / "img").write_text("now a file\n")),
    "new nested dirs": lambda t: (t / "a" / "b").mkdir(parents=True) or (t / "a" / "b" / "c.php").write_text("c"),
    "nothing": lambda t: None,
}


@pytest.mark.parametrize("case", sorted(NEXT_VERSION))
def test_delta_turns_a_host_holding_the_live_tree_into_the_next_version(tmp_path, trees, case):
    """live (on the host, exactly) + delta(next, live) synced = next, for every kind of change; shared kept."""
    live, host = trees
    nxt = _copy(live, tmp_path / "next")
    NEXT_VERSION[case](nxt)
    (host / "uploads" / "cat.jpg").write_bytes(b"the host's own")
    proc = _apply(ferry_listing.delta(str(nxt), str(live), SHARED), nxt, host)
    assert proc.returncode == 0, proc.stderr
    assert _differences(nxt, host) == []
    assert (host / "uploads" / "cat.jpg").read_bytes() == b"the host's own"
    assert _digest(host) == _digest(nxt)


@pytest.mark.parametrize("case", sorted(NEXT_VERSION))
def test_delta_into_a_hard_linked_copy_never_changes_the_live_tree(tmp_path, trees, case):
    """Atomic: releases/N = cp -al of the live release + the delta; the live release keeps every byte and mode."""
    live, host_live = trees
    nxt = _copy(live, tmp_path / "next")
    NEXT_VERSION[case](nxt)
    before = _differences(live, host_live), _digest(host_live)
    staged = tmp_path / "releases-N"
    subprocess.run(["cp", "-al", f"{host_live}/.", str(staged)], check=True)
    proc = _apply(ferry_listing.delta(str(nxt), str(live), SHARED), nxt, staged)
    assert proc.returncode == 0, proc.stderr
    assert _differences(nxt, staged) == []
    assert (_differences(live, host_live), _digest(host_live)) == before  # the live release did not move
