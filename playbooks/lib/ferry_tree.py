"""Exact trees in git: what Ferry stores is the bytes, modes and directories it was given, nothing reinterpreted.

Git is Ferry's snapshot and tag store, but git on its own reinterprets trees: a `.gitignore` inside the tree
hides versioned files, a `.gitattributes` (or core.autocrlf in a global config) converts line endings on add
and on checkout, filters rewrite content, and git keeps no empty directories. Everything here switches that
off, so the store is exact:
- Ferry adds an explicit list of paths (never `git add -A`), with `-f` (ignore rules do not apply);
- `$GIT_DIR/info/attributes` (which outranks every `.gitattributes` in the tree) unsets every attribute
  that changes content (text, eol, filter, ident, working-tree-encoding), and system/global git config is
  not read at all (GIT_CONFIG_NOSYSTEM, GIT_CONFIG_GLOBAL=/dev/null);
- directories that hold no file are recorded in the commit message (`ferry-tree: {...}` line) and made
  again on every checkout.
Used by the action plugins (in the run dir, for replays) and by jobs/snapshots.py (loaded by path).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess

# Unset every attribute that changes bytes on add or checkout; info/attributes outranks the tree's own files.
EXACT_ATTRIBUTES = "* -text -crlf -eol -filter -ident -working-tree-encoding\n"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
TREE_MARK = "ferry-tree: "
EXACT_MARK = "ferry-exact"  # in a release tree's .git: the commit its work tree holds exactly (written last)
CONFIG = {
    "core.autocrlf": "false",
    "core.safecrlf": "false",
    "core.fileMode": "true",
    "core.symlinks": "true",
    "core.ignoreCase": "false",
    "core.precomposeUnicode": "false",
    "core.protectNTFS": "false",
    "core.quotePath": "false",
    "core.excludesFile": os.devnull,
    "core.attributesFile": os.devnull,
    "core.hooksPath": os.devnull,
    "core.fsmonitor": "false",
    "core.untrackedCache": "false",
    "core.sparseCheckout": "false",
    "safe.directory": "*",
    "gc.auto": "0",
    "user.name": "Ferry",
    "user.email": "ferry@localhost",
}


class TreeError(Exception):
    """A git step failed; the message is shown on the ticket."""


def git_env() -> dict[str, str]:
    """Return the environment for git: no system or global config, literal pathspecs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_ATTR_NOSYSTEM="1",
        GIT_LITERAL_PATHSPECS="1",
        GIT_TERMINAL_PROMPT="0",
    )
    return env


def git_argv(*argv: str, git_dir: str | None = None, work_tree: str | None = None) -> list[str]:
    """Build a git argv with Ferry's fixed configuration."""
    out = ["git"]
    for key, value in CONFIG.items():
        out += ["-c", f"{key}={value}"]
    if git_dir:
        out.append(f"--git-dir={git_dir}")
    if work_tree:
        out.append(f"--work-tree={work_tree}")
    return out + list(argv)


def git(
    *argv: str,
    git_dir: str | None = None,
    work_tree: str | None = None,
    stdin: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run git (argv only) with bytes in and out; raise TreeError with git's stderr when check fails."""
    proc = subprocess.run(
        git_argv(*argv, git_dir=git_dir, work_tree=work_tree),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        env=git_env(),
        check=False,
    )
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip()
        raise TreeError(f"git {argv[0] if argv else ''} failed: {err[-2048:]}")
    return proc


def make_exact(git_dir: str) -> bool:
    """Write info/attributes that disable content conversion; return True when it was missing or different."""
    path = os.path.join(git_dir, "info", "attributes")
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == EXACT_ATTRIBUTES:
                return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Write aside and rename: a tree copied with hard links (ferry_tag's live tree) must not change its twin.
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(EXACT_ATTRIBUTES)
    os.replace(path + ".tmp", path)
    # Stat data in an old index may describe files written under other rules: forget it, git rehashes.
    index = os.path.join(git_dir, "index")
    if os.path.exists(index):
        os.unlink(index)
    return True


def exact_at(tree: str) -> str | None:
    """Return the commit a release tree holds exactly (its marker), or None when unknown or being changed."""
    try:
        with open(os.path.join(tree, ".git", EXACT_MARK), encoding="ascii") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def mark_exact(tree: str, sha: str | None) -> None:
    """Record (sha) or forget (None) the commit a tree holds exactly; renamed into place, never edited."""
    path = os.path.join(tree, ".git", EXACT_MARK)
    if sha is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    with open(path + ".tmp", "w", encoding="ascii") as fh:
        fh.write(sha + "\n")
    os.replace(path + ".tmp", path)


def tree_line(empty_dirs: list[str]) -> str:
    """Return the commit message line that records the tree's empty directories."""
    return TREE_MARK + json.dumps({"empty_dirs": sorted(empty_dirs)}, ensure_ascii=True)


def read_tree_info(git_dir: str, commit: str) -> dict:
    """Return the `ferry-tree` record of a commit ({"empty_dirs": [...]}), empty for older commits."""
    proc = git("log", "-1", "--format=%B", commit, "--", git_dir=git_dir, check=False)
    body = proc.stdout.decode("utf-8", "replace") if proc.returncode == 0 else ""
    for line in reversed(body.splitlines()):
        if line.startswith(TREE_MARK):
            try:
                info = json.loads(line[len(TREE_MARK) :])
            except ValueError:
                return {}
            return info if isinstance(info, dict) else {}
    return {}


def empty_dirs_of(git_dir: str, commit: str) -> list[str]:
    """Return the directories of a commit's tree that hold no file (git itself keeps none)."""
    dirs = read_tree_info(git_dir, commit).get("empty_dirs") or []
    return [d for d in dirs if isinstance(d, str) and d and not d.startswith("/") and ".." not in d.split("/")]


def tree_changes(
    git_dir: str, base: str | None, target: str, target_empty: list[str] | None = None, check: bool = True
) -> list[tuple[str, str]]:
    """Return (git status letter, path) from `base` (None: nothing) to `target`, empty directories as "d/".

    `target_empty` saves reading the target's empty directories when the caller just recorded them.
    """
    proc = git(
        "diff-tree",
        "-r",
        "-z",
        "--no-renames",
        "--name-status",
        base or EMPTY_TREE,
        target,
        git_dir=git_dir,
        check=check,
    )
    parts = list_z(proc.stdout) if proc.returncode == 0 else []
    out = [(parts[i][:1], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
    before = set(empty_dirs_of(git_dir, base)) if base else set()
    after = set(empty_dirs_of(git_dir, target) if target_empty is None else target_empty)
    out += [("A", d + "/") for d in sorted(after - before)]
    out += [("D", d + "/") for d in sorted(before - after)]
    return out


def make_dirs(work_tree: str, dirs: list[str]) -> None:
    """Create the recorded empty directories in a checked-out tree."""
    for d in dirs:
        os.makedirs(os.path.join(work_tree, d), exist_ok=True)


def list_z(data: bytes) -> list[str]:
    """Split NUL-terminated git output into paths (surrogateescape keeps any byte)."""
    return [p.decode("utf-8", "surrogateescape") for p in data.split(b"\0") if p]


def encode_z(paths: list[str]) -> bytes:
    """Join paths for git's -z / --pathspec-file-nul input."""
    return b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in paths)
