"""Ansible action plugin: tag the tested snapshot commit as version N and bring the release tree to that tag."""

from __future__ import annotations

import os
import subprocess
import time

from ansible.plugins.action import ActionBase

MAX_MSG = 2048
GIT_IDENTITY = [
    "-c",
    "user.name=Ferry",
    "-c",
    "user.email=ferry@localhost",
    "-c",
    "safe.directory=*",
]


class TagError(Exception):
    """A git step failed; the message is shown on the ticket."""


def _git(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run git with Ferry's identity (argv only, never a shell)."""
    proc = subprocess.run(
        ["git", *GIT_IDENTITY, *argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and proc.returncode != 0:
        raise TagError(f"git {argv[-1] if argv else ''} failed: {(proc.stderr or proc.stdout).strip()[-MAX_MSG:]}")
    return proc


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


def checkout_release(snapshot: str, release_dir: str, version: int, sha: str) -> None:
    """Clone on first use, fetch tags and force the work tree to exactly tag N."""
    if not os.path.isdir(os.path.join(release_dir, ".git")):
        _git("clone", "-q", "--no-checkout", snapshot, release_dir)
    repo = f"--git-dir={release_dir}/.git", f"--work-tree={release_dir}"
    _git(*repo, "fetch", "-q", "--force", snapshot, "+refs/tags/*:refs/tags/*")
    started = time.time()
    _git(*repo, "checkout", "-q", "-f", "--detach", f"refs/tags/{version}^{{commit}}")
    # -x as well: the tree must be exactly the tag, with no leftovers from an older checkout.
    _git(*repo, "clean", "-q", "-f", "-d", "-x")
    head = _resolve(f"{release_dir}/.git", "HEAD")
    if head != sha:
        raise TagError(f"release tree is at {head}, expected {sha}")
    # Kernel file times lag time.time() by up to a tick: look a second back (re-restoring is harmless).
    restore_mtimes(release_dir, since=started - 1.0)
    # Record the restored files' new stat data in the index. Otherwise every later checkout distrusts
    # them and re-reads their content to find what changed (~1 s per 60 MB, on every release).
    _git(*repo, "update-index", "-q", "--refresh", check=False)


def restore_mtimes(release_dir: str, since: float | None = None) -> int:
    """Set each file's mtime to its last commit's time; return how many files were set.

    Checkout stamps rewritten files with "now", so re-staging a kept release (a rollback) would make
    rsync re-send files whose content did not change. Commit times are the same for every checkout of
    a version, so rsync's size+mtime check and --link-dest see identical files as identical.
    With `since`, only files modified at or after it (those the checkout wrote) are set: the others
    kept the commit time an earlier checkout gave them, and the history walk stops much sooner.
    """
    repo = f"--git-dir={release_dir}/.git"
    listed = _git(repo, "-c", "core.quotepath=off", "ls-files", "-z", check=True).stdout
    todo = {p for p in listed.split("\0") if p}
    if since is not None:
        todo = {p for p in todo if _mtime(os.path.join(release_dir, p)) >= since}
        if not todo:
            return 0
    proc = subprocess.Popen(
        ["git", repo, "-c", "core.quotepath=off", "log", "--format=%x00%ct", "--name-only", "--no-renames", "HEAD"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
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
        """Run both steps on the controller."""
        result = super().run(tmp, task_vars)
        args = self._task.args
        try:
            version = int(args["version"])
            snapshot, release_dir = (
                str(args["snapshot_git_dir"]),
                str(args["release_dir"]),
            )
            sha, created = tag_version(snapshot, str(args["commit"]), version)
            checkout_release(snapshot, release_dir, version, sha)
        except TagError as exc:
            return {**result, "failed": True, "msg": str(exc)}
        except (KeyError, ValueError) as exc:
            return {
                **result,
                "failed": True,
                "msg": f"ferry_tag: bad arguments: {exc!r}",
            }
        result.update(
            changed=created,
            msg=f"tag {version} = {sha[:12]} ({'created' if created else 'existing'}); release tree checked out",
            ferry={"release": {"version": version, "commit": sha, "tag_created": created}},
        )
        return result
