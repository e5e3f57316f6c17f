"""The drift check's fast path: one digest of a tree's listing, computed by the same shell on both sides.

rsync's quick check (what a dry run compares) looks at each entry's type, size, mtime and permissions, and a
symlink's target. The listing below holds exactly those for every entry of a tree (directory sizes, owners
and directory times left out, as the check ignores them), sorted bytewise, and its SHA-1 is one line: the
host prints it for its live tree, the controller for the live version's tree (once per tree, cached in its
.git next to the exact marker). Equal digests mean a dry run would find nothing; any difference (or a host
whose find cannot print the listing) sends the check to the full rsync dry run, which names the files.
So the digest can only make a check faster, never make a changed host look unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import stat
import subprocess

import ferry_tree

# rsync options that apply a delta (paths from --files-from): listed paths are always sent (--ignore-times:
# rsync's quick check compares whole seconds, the listing nanoseconds), missing ones deleted, whole directories too.
DELTA_ARGS = ["--ignore-times", "--from0", "--delete-missing-args", "--force"]
OK = "ferry-listing-ok"  # printed after find succeeded: a failed find never digests like a good one
GLOB = set("*?[\\")


def shared_paths(args: dict) -> list[str]:
    """A task's `shared_paths` argument as paths relative to the deploy root (no empty ones)."""
    return [p.strip("/") for p in args.get("shared_paths") or [] if p.strip("/")]


def delta_rsync_args(delta_path: str, excludes: list[str], shared: list[str]) -> list[str]:
    """rsync arguments that send only a delta file's paths, with the stage's exclusions."""
    return [f"--files-from={delta_path}", *DELTA_ARGS, *excludes, *[f"--exclude=/{p}" for p in shared]]


def usable(shared: list[str]) -> bool:
    """Whether the listing excludes shared paths as rsync does (rsync and find read glob characters apart)."""
    return not any(GLOB & set(p) for p in shared)


def script(tree: str, shared: list[str]) -> str:
    """Return a POSIX shell command that prints the listing digest of `tree` (40 hex digits)."""
    prune = ["-name .git", "-name .svn", *[f"-path {shlex.quote('./' + p)}" for p in shared]]
    return (
        f"cd {shlex.quote(tree)} && {{ find . -mindepth 1 \\( {' -o '.join(prune)} \\) -prune -o "
        r"\( -type d -printf '%P\td\t%m\0' \) -o \( -type l -printf '%P\tl\t%l\0' \) -o "
        rf"-printf '%P\t%y\t%s\t%T@\t%m\0' && printf '{OK}\0'; }} | LC_ALL=C sort -z | sha1sum | "
        '{ read -r digest rest; echo "$digest"; }'
    )


def local_digest(tree: str, shared: list[str]) -> str:
    """Run the listing on the controller; return the digest line ('' when it failed)."""
    proc = subprocess.run(["sh", "-c", script(tree, shared)], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def expected(tree: str, shared: list[str]) -> str:
    """Return the digest of a controller tree, cached per exact commit and shared paths in the tree's .git.

    The hosts of a release ask at once: a lock lets the first compute it and the others read it.
    """
    sha = ferry_tree.exact_at(tree)
    if sha is None:
        return local_digest(tree, shared)
    key = f"{sha} {json.dumps(sorted(shared))}"
    path = os.path.join(tree, ".git", "ferry-listing")
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache: dict = {}
        with contextlib.suppress(OSError, ValueError):
            with open(path, encoding="utf-8") as fh:
                cache = json.load(fh)
        if key not in cache:
            digest = local_digest(tree, shared)
            if not digest:
                return ""
            cache = {k: v for k, v in cache.items() if k.startswith(sha)}  # older commits' entries go
            cache[key] = digest
            with open(path + ".tmp", "w", encoding="utf-8") as fh:
                json.dump(cache, fh)
            os.replace(path + ".tmp", path)
        return cache[key]


def entries(tree: str, shared: list[str]) -> dict[bytes, tuple]:
    """Map each path of a tree (bytes, relative) to what rsync's quick check compares; same exclusions."""
    root = os.fsencode(tree.rstrip("/"))
    skip = {os.fsencode(p) for p in shared}
    out: dict[bytes, tuple] = {}
    todo = [b""]
    while todo:
        rel_dir = todo.pop()
        with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
            for entry in it:
                if entry.name in (b".git", b".svn"):
                    continue
                rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
                if rel in skip:
                    continue
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    out[rel] = ("l", os.readlink(entry.path))
                elif stat.S_ISDIR(st.st_mode):
                    out[rel] = ("d", stat.S_IMODE(st.st_mode))
                    todo.append(rel)
                else:
                    out[rel] = ("f", stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return out


def delta(new: str, old: str | dict, shared: list[str]) -> list[bytes]:
    """Paths to hand rsync (--files-from, --delete-missing-args) so a copy of `old` becomes `new`.

    Every entry of `new` that `old` lacks or holds differently (type, size, mtime to the nanosecond, mode,
    symlink target; directory times aside, as the drift check ignores them), and every entry only `old`
    has, except below a directory that goes as a whole (rsync deletes it recursively; naming its
    contents too would make rsync report them as vanished).
    """
    a, b = entries(new, shared), (old if isinstance(old, dict) else entries(old, shared))
    out = [p for p, v in a.items() if b.get(p) != v]
    for p in b:
        if p not in a:
            parent = os.path.dirname(p)
            if not parent or (a.get(parent) or ("",))[0] == "d" and (b.get(parent) or ("",))[0] == "d":
                out.append(p)
    return sorted(out)


def delta_file(cache_dir: str, new: str, old: str | dict, shared: list[str]) -> str | None:
    """Write delta(new, old) once into cache_dir (the run's barrier dir) for every host; return its path.

    `old` may be the old tree's entries, read beforehand (entries()). None when it cannot be made (the
    hosts then sync the whole tree, as without a delta).
    """
    path = os.path.join(cache_dir, "delta")
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(path):
            return path
        if os.path.exists(path + ".none"):
            return None
        try:
            paths = delta(new, old, shared)
        except OSError:
            open(path + ".none", "w").close()
            return None
        with open(path + ".tmp", "wb") as fh:
            fh.write(b"".join(p + b"\0" for p in paths))
        os.replace(path + ".tmp", path)
        return path
