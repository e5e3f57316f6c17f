"""Ansible action plugin: tag the tested snapshot commit as version N and bring the release tree to that tag."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
import ferry_listing  # noqa: E402
import ferry_tree  # noqa: E402  (playbooks/lib: shared by the plugins, copied into every run dir)

MAX_MSG = 2048
TagError = ferry_tree.TreeError


class _Proc:
    """Text view of a finished git process (stdout decoded)."""

    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        """Decode git's output."""
        self.returncode = proc.returncode
        self.stdout = proc.stdout.decode("utf-8", "surrogateescape")
        self.stderr = proc.stderr.decode("utf-8", "replace")


def _git(*argv: str, check: bool = True) -> _Proc:
    """Run git with Ferry's fixed, exact configuration (argv only, never a shell)."""
    return _Proc(ferry_tree.git(*argv, check=check))


def _resolve(git_dir: str, ref: str) -> str | None:
    """Return the commit a ref points to, or None when it does not exist."""
    proc = _git(
        f"--git-dir={git_dir}",
        "rev-parse",
        "-q",
        "--verify",
        f"{ref}^{{commit}}",
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def tag_version(snapshot: str, commit: str, version: int) -> tuple[str, bool]:
    """Create annotated tag N on commit unless it exists; refuse a tag N that points elsewhere."""
    sha = _resolve(snapshot, commit)
    if sha is None:
        raise TagError(f"commit {commit} is not in {snapshot}")
    existing = _resolve(snapshot, f"refs/tags/{version}")
    if existing is not None:
        if existing != sha:
            raise TagError(f"tag {version} already exists and points to {existing}, not {sha}")
        return sha, False
    _git(
        f"--git-dir={snapshot}",
        "tag",
        "-a",
        str(version),
        sha,
        "-m",
        f"Ferry release {version}",
    )
    return sha, True


def checkout_release(snapshot: str, release_dir: str, version: int, sha: str | None = None) -> str:
    """Clone on first use, fetch tags and force the work tree to exactly tag N (empty directories too).

    The clone is made exact first (ferry_tree.make_exact): no .gitattributes in the tree can convert line
    endings or run filters on checkout. A tree whose marker already names tag N's commit is left as it is
    (only Ferry writes these trees; the marker is removed before and written after every change). Returns
    the commit checked out.
    """
    if not os.path.isdir(os.path.join(release_dir, ".git")):
        _git("clone", "-q", "--no-checkout", snapshot, release_dir)
    want = _resolve(snapshot, f"refs/tags/{version}")
    if want is None:
        raise TagError(f"version {version} has no tag in {snapshot}")
    if sha is not None and want != sha:
        raise TagError(f"tag {version} points to {want}, expected {sha}")
    if ferry_tree.exact_at(release_dir) == want:
        return want
    ferry_tree.mark_exact(release_dir, None)
    ferry_tree.make_exact(os.path.join(release_dir, ".git"))
    # ctime is not trusted: a hard-linked copy of the tree (prepare_live) changes every file's ctime, not its bytes.
    repo = "-c", "core.trustctime=false", f"--git-dir={release_dir}/.git", f"--work-tree={release_dir}"
    _git(*repo, "fetch", "-q", "--force", snapshot, "+refs/tags/*:refs/tags/*")
    started = time.time()
    _git(*repo, "checkout", "-q", "-f", "--detach", f"refs/tags/{version}^{{commit}}")
    # -x as well: the tree must be exactly the tag, with no leftovers from an older checkout; -d also drops
    # directories that an older version recorded as empty (made again below when this version has them).
    _git(*repo, "clean", "-q", "-f", "-d", "-x")
    ferry_tree.make_dirs(release_dir, ferry_tree.empty_dirs_of(f"{release_dir}/.git", want))
    head = _resolve(f"{release_dir}/.git", "HEAD")
    if head != want:
        raise TagError(f"release tree is at {head}, expected {want}")
    # Kernel file times lag time.time() by up to a tick: look a second back (re-restoring is harmless).
    restore_mtimes(release_dir, since=started - 1.0)
    # Record the restored files' new stat data in the index. Otherwise every later checkout distrusts
    # them and re-reads their content to find what changed (~1 s per 60 MB, on every release).
    _git(*repo, "update-index", "-q", "--refresh", check=False)
    ferry_tree.mark_exact(release_dir, want)
    return want


def _live_listing(live_dir: str, shared: list[str], entries: bool) -> dict | None:
    """Cache the live tree's listing digest; return its entries too when asked (in place: for the delta)."""
    ferry_listing.expected(live_dir, shared)
    return ferry_listing.entries(live_dir, shared) if entries else None


def prepare_live(snapshot: str, release_dir: str, live_dir: str, live: int) -> tuple[str, str]:
    """Make live_dir hold exactly the live version's tree, as cheaply as possible; return (commit, how).

    After a release, release_dir holds the live version: its tree becomes live_dir by renames (the old
    live_dir becomes release_dir, checked out to the new version next), or, when there is no live_dir yet,
    by a hard-linked copy (git replaces a file by unlinking it, never by writing into it, so the twins
    never share a change). Otherwise live_dir is checked out like any release tree.
    """
    want = _resolve(snapshot, f"refs/tags/{live}")
    if want is None:
        raise TagError(f"live version {live} has no tag in {snapshot}")
    if ferry_tree.exact_at(live_dir) == want:
        return want, "kept"
    if ferry_tree.exact_at(release_dir) == want:
        spare = live_dir.rstrip("/") + ".swap"
        if os.path.lexists(spare):
            shutil.rmtree(spare)  # left by a run that died half-way through the renames below
        if os.path.isdir(os.path.join(live_dir, ".git")):
            os.rename(live_dir, spare)
            os.rename(release_dir, live_dir)
            os.rename(spare, release_dir)
            return want, "swapped with the release tree"
        if os.path.lexists(live_dir):
            shutil.rmtree(live_dir)
        subprocess.run(["cp", "-al", "--", release_dir, spare], check=True, capture_output=True)
        os.rename(spare, live_dir)
        return want, "hard-linked from the release tree"
    return checkout_release(snapshot, live_dir, live, want), "checked out"


def restore_mtimes(release_dir: str, since: float | None = None) -> int:
    """Set each file's mtime to its last commit's time; return how many files were set.

    Checkout stamps rewritten files with "now", so re-staging a kept release (a rollback) would make
    rsync re-send files whose content did not change. Commit times are the same for every checkout of
    a version, so rsync's size+mtime check and --link-dest see identical files as identical.
    With `since`, only files modified at or after it (those the checkout wrote) are set: the others
    kept the commit time an earlier checkout gave them, and the history walk stops much sooner.
    """
    repo = f"--git-dir={release_dir}/.git"
    listed = _git(repo, "ls-files", "-z", check=True).stdout
    todo = {p for p in listed.split("\0") if p}
    if since is not None:
        todo = {p for p in todo if _mtime(os.path.join(release_dir, p)) >= since}
        if not todo:
            return 0
    proc = subprocess.Popen(
        ferry_tree.git_argv(
            "log", "--format=%x00%ct", "--name-only", "--no-renames", "HEAD", git_dir=f"{release_dir}/.git"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=ferry_tree.git_env(),
        text=True,
        errors="surrogateescape",
    )
    stamp, done = 0, 0
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.startswith("\0"):  # NUL cannot start a path, "@" could
            stamp = int(line[1:])
        elif line in todo:
            todo.discard(line)
            os.utime(os.path.join(release_dir, line), (stamp, stamp), follow_symlinks=False)
            done += 1
            if not todo:
                break  # newest commits first: stop reading history once every file has its time
    proc.kill()
    proc.wait()
    proc.stdout.close()
    return done


def _mtime(path: str) -> float:
    """Return a path's own mtime (a symlink's, not its target's); inf when it cannot be read."""
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return float("inf")


class ActionModule(ActionBase):
    """Tag commit as N in the snapshot repository and check the release tree out at N."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        """Tag and check out on the controller; without `commit`, only check out tag `version`.

        With `live_version` and `live_dir`, the live version's tree is checked out there as well (the drift
        check and an in-place switch-back compare and sync from it).
        """
        result = super().run(tmp, task_vars)
        args = self._task.args
        try:
            version = int(args["version"])
            snapshot, release_dir = str(args["snapshot_git_dir"]), str(args["release_dir"])
            created, sha = False, None
            if args.get("commit"):
                sha, created = tag_version(snapshot, str(args["commit"]), version)
            # The live tree first: it may be the release tree's current content, taken over by renames.
            live, live_note, digest = args.get("live_version"), "", None
            shared = ferry_listing.shared_paths(args)
            if live not in (None, "") and args.get("live_dir"):
                live_dir = str(args["live_dir"])
                live_sha, how = prepare_live(snapshot, release_dir, live_dir, int(live))
                live_note = f"; live version {int(live)} ({live_sha[:12]}) {how} for comparison"
                if args.get("listing") and ferry_listing.usable(shared):
                    # While the release tree is checked out: the drift check's digest of the live tree (the hosts'
                    # checks read it from the cache) and, in place, the live tree's entries for the delta below.
                    pool = ThreadPoolExecutor(1)
                    digest = pool.submit(_live_listing, live_dir, shared, bool(args.get("barrier_dir")))
                    pool.shutdown(wait=False)  # the thread ends with its one job
            if sha is not None:
                checkout_release(snapshot, release_dir, version, sha)
                what = f"tag {version} = {sha[:12]} ({'created' if created else 'existing'}); release tree checked out"
            else:
                sha = checkout_release(snapshot, release_dir, version)
                what = f"version {version} ({sha[:12]}) checked out in {release_dir}"
            live_entries = digest.result() if digest is not None else None  # the cached digest is written too
            if args.get("barrier_dir"):
                # This playbook run's scratch dir, emptied: where the hosts publish their drift checks (in place),
                # and what differs between the live tree and N, for hosts found holding exactly the live tree.
                barrier = str(args["barrier_dir"])
                shutil.rmtree(barrier, ignore_errors=True)
                os.makedirs(barrier)
                if digest is not None:
                    ferry_listing.delta_file(barrier, release_dir, live_entries or live_dir, shared)
            what += live_note
        except TagError as exc:
            return {**result, "failed": True, "msg": str(exc)}
        except (KeyError, ValueError, TypeError) as exc:
            return {**result, "failed": True, "msg": f"ferry_tag: bad arguments: {exc!r}"}
        result.update(
            changed=created,
            msg=what,
            ferry={"release": {"version": version, "commit": sha, "tag_created": created}},
        )
        return result
