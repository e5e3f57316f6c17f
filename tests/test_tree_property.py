"""Property: for random trees (and a random change of them), staging snapshot → release checkout equals the
versioned content of the staging working copy (`svn export`), byte for byte, whatever the tree's own
.gitignore/.gitattributes say. Runs the action plugins' own functions with real svn and git (no ansible)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.plugins import load_plugin
from tests.support.realtree import snapshot, write_tree

pytestmark = pytest.mark.integration


staging_plugin = load_plugin("ferry_staging")
tag_plugin = load_plugin("ferry_tag")

NAME = st.text(alphabet="abü -._ñ", min_size=1, max_size=5).filter(
    lambda n: n not in (".", "..") and n.lower() not in (".git", ".svn") and n.strip() == n
)
CONTENT = st.lists(st.sampled_from([b"a", b"\r\n", b"\n", b"\r", b"\x00", "ü".encode(), b"<?php "]), max_size=8).map(
    b"".join
)
RULES = st.sampled_from(
    [b"*\n", b"* text=auto\n", b"* eol=crlf\n", b"*.a -text\n* text eol=crlf\n", b"* filter=lfs ident\n", b"a*\n!b\n"]
)


@st.composite
def trees(draw):
    """Draw (files, executables, symlinks): paths up to two levels deep, empty dirs, ignore/attribute files."""
    files: dict[str, bytes | None] = {}
    dirs = draw(st.lists(NAME, max_size=3, unique=True))
    for parent in ["", *dirs]:
        for name in draw(st.lists(NAME, max_size=4, unique=True)):
            path = f"{parent}/{name}" if parent else name
            if path in dirs or any(d.startswith(path + "/") for d in files):
                continue
            files[path] = draw(st.one_of(CONTENT, st.none()))  # None: an empty directory
        if draw(st.booleans()):
            files[f"{parent}/.gitignore" if parent else ".gitignore"] = draw(RULES)
        if draw(st.booleans()):
            files[f"{parent}/.gitattributes" if parent else ".gitattributes"] = draw(RULES)
    files = {p: c for p, c in files.items() if not any(q.startswith(p + "/") for q in files if files[p] is not None)}
    regular = [p for p, c in files.items() if c is not None]
    executables = set(draw(st.lists(st.sampled_from(regular), max_size=2))) if regular else set()
    symlinks = {}
    if regular and draw(st.booleans()):
        name = "link-" + draw(NAME)
        if name not in files:
            symlinks[name] = draw(st.sampled_from([*regular, "missing-target"]))
    return files, executables, symlinks


def _svn(*argv: str, cwd: Path | None = None) -> None:
    """Run svn quietly and fail loudly."""
    proc = subprocess.run(["svn", "--non-interactive", *argv], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _stage_and_checkout(base: Path, url: str, version: int) -> tuple[dict, dict]:
    """Update staging, snapshot, tag `version`, check out; return (svn export of staging, release tree)."""
    st_ = staging_plugin.Staging(
        {"svn_url": url, "staging_dir": str(base / "staging"), "snapshot_git_dir": str(base / "snap.git")}
    )
    st_.checkout_if_missing()
    st_.update()
    st_.ensure_git()
    sha = st_.commit()["commit"]
    tag_plugin.tag_version(str(base / "snap.git"), sha, version)
    tag_plugin.checkout_release(str(base / "snap.git"), str(base / "release"), version, sha)
    export = base / f"export-{version}"
    _svn("export", "-q", str(base / "staging"), str(export))
    return snapshot(export), snapshot(base / "release")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=trees(), second=trees())
def test_release_tree_equals_versioned_staging_tree(tmp_path_factory, first, second):
    """Stage + release of a random tree, then of a random replacement of it: always equal to `svn export`."""
    base = tmp_path_factory.mktemp("prop")
    os.environ.setdefault("ANSIBLE_HOME", str(base / ".ansible"))
    repo = base / "repo"
    _svn("-q", "--version")
    subprocess.run(["svnadmin", "create", str(repo)], check=True)
    url = f"file://{repo}/trunk"
    src = base / "import"
    write_tree(src, *first)
    src.mkdir(exist_ok=True)
    _svn("import", "-q", "--no-ignore", "-m", "one", str(src), url)
    want, got = _stage_and_checkout(base, url, 1)
    assert got == want

    wc = base / "dev"
    _svn("checkout", "-q", url, str(wc))
    for entry in os.listdir(wc):
        if entry != ".svn":
            _svn("rm", "-q", "--force", "--", str(wc / entry))
    write_tree(wc, *second)
    for entry in os.listdir(wc):
        if entry != ".svn":
            _svn("add", "-q", "--force", "--no-ignore", "--", str(wc / entry))
    _svn("commit", "-q", "-m", "two", str(wc))
    want, got = _stage_and_checkout(base, url, 2)
    assert got == want
    shutil.rmtree(base, ignore_errors=True)
