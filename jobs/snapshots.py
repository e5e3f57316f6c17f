"""Read-only questions about a project's staging snapshot repository (git)."""

from __future__ import annotations

import subprocess
from pathlib import Path

MAX_FILES = 500


def _git(git_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run a git command against a bare-style git dir."""
    return subprocess.run(
        ["git", "-c", "safe.directory=*", f"--git-dir={git_dir}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def is_ancestor(git_dir: Path, older: str, newer: str) -> bool:
    """Tell whether commit `older` is contained in `newer` (equal counts)."""
    return _git(git_dir, "merge-base", "--is-ancestor", older, newer).returncode == 0


def changed_files(git_dir: Path, base: str | None, target: str) -> list[dict]:
    """List files added/modified/deleted from `base` (None: empty tree) to `target`."""
    if base:
        out = _git(git_dir, "diff", "--name-status", "--no-renames", base, target)
    else:
        out = _git(git_dir, "show", "--name-status", "--no-renames", "--format=", "--root", target)
    names = {"A": "added", "M": "modified", "D": "deleted", "T": "modified"}
    rows = []
    for line in out.stdout.splitlines()[:MAX_FILES]:
        status, _, path = line.partition("\t")
        if path:
            rows.append({"status": names.get(status[:1], status), "path": path})
    return rows


def commits_between(git_dir: Path, base: str | None, target: str) -> list[str]:
    """Return the commits reachable from `target` and not from `base`."""
    spec = [target] if not base else [f"{base}..{target}"]
    out = _git(git_dir, "rev-list", *spec)
    return out.stdout.split() if out.returncode == 0 else []
