"""Read-only questions about a project's staging snapshot repository (git): ancestry, exact changes, diffs."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

MAX_FILES = 2000
MAX_DIFF_FILES = 40
MAX_DIFF_BYTES = 20_000
STATUS = {"A": "added", "M": "modified", "D": "deleted", "T": "modified"}


def _load_tree_module():
    """Load playbooks/lib/ferry_tree.py: the one definition of how Ferry keeps trees exact in git."""
    path = Path(__file__).resolve().parent.parent / "playbooks" / "lib" / "ferry_tree.py"
    spec = importlib.util.spec_from_file_location("ferry_tree", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ferry_tree = _load_tree_module()


def is_ancestor(git_dir: Path, older: str, newer: str) -> bool:
    """Tell whether commit `older` is contained in `newer` (equal counts)."""
    proc = ferry_tree.git("merge-base", "--is-ancestor", older, newer, git_dir=str(git_dir), check=False)
    return proc.returncode == 0


def changed_files(git_dir: Path, base: str | None, target: str) -> list[dict]:
    """List every file and empty directory added/modified/deleted from `base` (None: nothing) to `target`.

    Names come out as they are (no git quoting: `ü.html`, not `"\\303\\274.html"`); a mode change (exec bit)
    or a file that became a symlink counts as modified.
    """
    return list(_changed(str(git_dir), base, target))


@lru_cache(maxsize=256)
def _changed(git_dir: str, base: str | None, target: str) -> tuple[dict, ...]:
    """Cached body of changed_files (commits never change, so neither does their difference)."""
    changes = ferry_tree.tree_changes(git_dir, base, target, check=False)
    rows = [{"status": STATUS.get(status, status), "path": path} for status, path in changes]
    rows.sort(key=lambda r: r["path"])
    return tuple(rows[:MAX_FILES])


def text_diffs(git_dir: Path, base: str | None, target: str) -> list[dict]:
    """Return the diff of each changed text file (at most MAX_DIFF_FILES, each cut at MAX_DIFF_BYTES)."""
    return list(_diffs(str(git_dir), base, target))


@lru_cache(maxsize=64)
def _diffs(git_dir: str, base: str | None, target: str) -> tuple[dict, ...]:
    """Cached body of text_diffs."""
    left = base or ferry_tree.EMPTY_TREE
    stat = ferry_tree.git("diff", "--numstat", "-z", "--no-renames", left, target, git_dir=git_dir, check=False)
    if stat.returncode != 0:
        return ()
    rows = []
    for record in ferry_tree.list_z(stat.stdout):
        added, deleted, path = record.split("\t", 2)
        rows.append({"path": path, "binary": added == "-", "added": added, "deleted": deleted})
    out = []
    for row in rows:
        diff, truncated = "", False
        if not row["binary"] and len(out) < MAX_DIFF_FILES:
            proc = ferry_tree.git(
                "diff",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                "--no-renames",
                left,
                target,
                "--",
                row["path"],
                git_dir=git_dir,
                check=False,
            )
            raw = proc.stdout
            truncated = len(raw) > MAX_DIFF_BYTES
            diff = raw[:MAX_DIFF_BYTES].decode("utf-8", "replace")
        elif not row["binary"]:
            truncated = True
        out.append({**row, "diff": diff, "truncated": truncated})
    return tuple(out)


def commits_between(git_dir: Path, base: str | None, target: str) -> list[str]:
    """Return the commits reachable from `target` and not from `base`."""
    spec = [target] if not base else [f"{base}..{target}"]
    out = ferry_tree.git("rev-list", *spec, git_dir=str(git_dir), check=False)
    return out.stdout.decode().split() if out.returncode == 0 else []
