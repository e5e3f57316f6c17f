"""Ansible action plugin: svn update of the staging working copy plus a snapshot commit of its tree."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
import ferry_tree  # noqa: E402  (playbooks/lib: shared by the plugins, copied into every run dir)

# Cap the changed-file list: it travels in every event and into the DB.
MAX_CHANGED = 500
MAX_UNVERSIONED = 200
MAX_MSG = 2048
# svn status items that are versioned and whose disk content is what staging serves.
VERSIONED = {"normal", "modified", "added", "replaced", "merged", "conflicted"}
NOT_VERSIONED = {"unversioned", "ignored"}
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


class StagingError(Exception):
    """A step failed; the message is what the ticket shows."""


def _run(argv: list[str], cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run argv (never a shell) and capture text output."""
    return subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _check(proc: subprocess.CompletedProcess, what: str) -> str:
    """Return stdout, or raise StagingError with the tool's own stderr."""
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip())[-MAX_MSG:]
        raise StagingError(f"{what} failed (rc {proc.returncode}): {detail}")
    return proc.stdout


def _clean_paths(paths: list[str]) -> list[str]:
    """Normalise relative paths and refuse anything that escapes the working copy."""
    out = []
    for raw in paths or []:
        p = os.path.normpath(str(raw).strip()).lstrip("/")
        if p in ("", "."):
            continue
        if p == ".." or p.startswith("../") or "/.svn" in f"/{p}":
            raise StagingError(f"invalid svn path: {raw!r}")
        out.append(p)
    return out


class Staging:
    """The svn + git steps of one staging update."""

    def __init__(self, args: dict) -> None:
        """Read and validate the task arguments."""
        self.url = str(args["svn_url"])
        self.wc = str(args["staging_dir"])
        self.git_dir = str(args["snapshot_git_dir"])
        self.paths = _clean_paths(args.get("svn_paths") or [])
        rev = args.get("svn_revision")
        self.rev = int(rev) if rev not in (None, "", "HEAD") else None
        self.message = clean_message(str(args.get("commit_message") or ""))
        # Keep svn away from ~/.subversion (tests, multi-tenant workers); ops may pre-seed auth here.
        home = os.environ.get("ANSIBLE_HOME") or str(Path(self.wc).parent / ".ansible")
        self.config_dir = str(args.get("svn_config_dir") or Path(home) / "subversion")

    def svn(self, *argv: str) -> list[str]:
        """Build an svn argv that never prompts and uses our config dir."""
        return ["svn", "--non-interactive", "--config-dir", self.config_dir, *argv]

    def rev_args(self) -> list[str]:
        """Return the -r option when a revision is pinned."""
        return ["-r", str(self.rev)] if self.rev is not None else []

    def checkout_if_missing(self) -> bool:
        """Check the working copy out on first use; return True when it did."""
        if os.path.isdir(os.path.join(self.wc, ".svn")):
            return False
        Path(self.wc).parent.mkdir(parents=True, exist_ok=True)
        _check(
            _run(self.svn("checkout", "-q", *self.rev_args(), "--", self.url, self.wc)),
            "svn checkout",
        )
        return True

    def update(self) -> tuple[str, int | None]:
        """Run svn update on the paths; fail on skipped/missing paths and conflicts."""
        targets = self.paths or ["."]
        # --parents brings in paths whose parent dirs are new in the repository.
        out = _check(
            _run(
                self.svn("update", "--parents", *self.rev_args(), "--", *targets),
                cwd=self.wc,
            ),
            "svn update",
        )
        if "Summary of conflicts:" in out:
            # svn exits 0 on skipped paths and postponed conflicts; those must fail the ticket.
            lines = [
                ln
                for ln in out.splitlines()
                if ln.startswith(
                    (
                        "Skipped",
                        "C ",
                        " C ",
                        "   C ",
                        "Summary of conflicts",
                        "  Text",
                        "  Tree",
                        "  Prop",
                        "  Skipped",
                    )
                )
            ]
            raise StagingError("svn update: " + "\n".join(lines)[-MAX_MSG:])
        deleted = {ln[5:].strip() for ln in out.splitlines() if ln.startswith("D    ")}
        for p in self.paths:
            # `svn update <direct child that does not exist>` says "At revision N." and exits 0.
            if not os.path.lexists(os.path.join(self.wc, p)) and p not in deleted:
                self.raise_missing(p)
        revs = [int(m) for m in re.findall(r"(?:At|Updated to) revision (\d+)\.", out)]
        return out, max(revs) if revs else None

    def raise_missing(self, path: str) -> None:
        """Raise with svn's own message for a path that is not in the repository."""
        url = f"{self.url.rstrip('/')}/{path}@{self.rev if self.rev is not None else 'HEAD'}"
        proc = _run(self.svn("info", "--show-item", "kind", "--", url))
        detail = proc.stderr.strip() or f"'{path}' is not in the repository"
        raise StagingError(f"svn update: {path}: {detail}"[:MAX_MSG])

    def wc_revision(self) -> int | None:
        """Return the working copy root's revision (used when update printed none)."""
        proc = _run(self.svn("info", "--show-item", "revision", "--", self.wc))
        text = proc.stdout.strip()
        return int(text) if proc.returncode == 0 and text.isdigit() else None

    def tree(self) -> tuple[list[str], list[str], list[str]]:
        """Return (files and symlinks, empty directories, not versioned) of the working copy as it is on disk.

        The versioned set comes from svn itself (`svn status -v`), never from the directory: runtime files
        the staging site wrote are listed as not versioned and never enter the snapshot.
        """
        proc = subprocess.run(
            self.svn("status", "-v", "--xml", "--no-ignore", "--ignore-externals", "--depth", "infinity", "--", "."),
            cwd=self.wc,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if proc.returncode != 0:
            raise StagingError(f"svn status failed: {proc.stderr.decode('utf-8', 'replace').strip()[-MAX_MSG:]}")
        files, dirs, unversioned = [], [], []
        for entry in ET.fromstring(proc.stdout).iter("entry"):
            path = entry.get("path") or ""
            status = entry.find("wc-status")
            item = status.get("item") if status is not None else ""
            if path in ("", "."):
                continue
            if item in NOT_VERSIONED:
                unversioned.append(path)
                continue
            if item not in VERSIONED:
                continue  # missing, deleted, obstructed, external: not on disk as svn has it
            full = os.path.join(self.wc, path)
            if os.path.islink(full) or os.path.isfile(full):
                files.append(path)
            elif os.path.isdir(full):
                dirs.append(path)
        holding: set[str] = set()  # every directory with a file or symlink somewhere below it
        for p in files:
            parent = os.path.dirname(p)
            while parent and parent not in holding:
                holding.add(parent)
                parent = os.path.dirname(parent)
        empty = [d for d in dirs if d not in holding]
        return sorted(files), sorted(empty), sorted(unversioned)

    def ensure_git(self) -> None:
        """Create the snapshot git dir on first use and make it exact (see playbooks/lib/ferry_tree.py)."""
        if not os.path.isfile(os.path.join(self.git_dir, "HEAD")):
            ferry_tree.git("init", "-q", git_dir=self.git_dir)
        ferry_tree.make_exact(self.git_dir)

    def commit(self) -> dict:
        """Commit exactly the versioned tree (always a new commit) and list what changed."""
        files, empty, unversioned = self.tree()
        g = {"git_dir": self.git_dir, "work_tree": self.wc}
        try:
            indexed = set(ferry_tree.list_z(ferry_tree.git("ls-files", "-z", **g).stdout))
            gone = sorted(indexed - set(files))
            if gone:
                ferry_tree.git("update-index", "-z", "--force-remove", "--stdin", stdin=ferry_tree.encode_z(gone), **g)
            if files:
                # -f: a .gitignore in the tree must not hide a versioned file; literal pathspecs (see git_env).
                ferry_tree.git(
                    "add",
                    "-f",
                    "--pathspec-from-file=-",
                    "--pathspec-file-nul",
                    stdin=ferry_tree.encode_z(files),
                    **g,
                )
            tree = ferry_tree.git("write-tree", **g).stdout.decode().strip()
            parent = ferry_tree.git("rev-parse", "-q", "--verify", "HEAD^{commit}", check=False, **g)
            head = parent.stdout.decode().strip() if parent.returncode == 0 else None
            message = f"{self.message}\n\n{ferry_tree.tree_line(empty)}\n"
            sha = (
                ferry_tree.git(
                    "commit-tree",
                    tree,
                    *(["-p", head] if head else []),
                    "-F",
                    "-",
                    stdin=message.encode("utf-8"),
                    **g,
                )
                .stdout.decode()
                .strip()
            )
            ferry_tree.git("update-ref", "HEAD", sha, **g)
        except ferry_tree.TreeError as exc:
            raise StagingError(f"snapshot: {exc}") from exc
        changed = self.changes(head, sha, empty)
        return {
            "commit": sha,
            "changed": changed[:MAX_CHANGED],
            "changed_count": len(changed),
            "files": len(files),
            "empty_dirs": len(empty),
            "unversioned": unversioned[:MAX_UNVERSIONED],
            "unversioned_count": len(unversioned),
        }

    def changes(self, head: str | None, sha: str, empty: list[str]) -> list[str]:
        """Return "STATUS path" lines from the previous snapshot to this one, empty directories included."""
        return [f"{status} {path}" for status, path in ferry_tree.tree_changes(self.git_dir, head, sha, empty)]


def clean_message(text: str) -> str:
    """Return user text fit for a one-line commit subject: no control characters (NUL, ANSI escapes)."""
    return CONTROL.sub(" ", text).strip()[:200] or "staging update"


class ActionModule(ActionBase):
    """Update the staging svn working copy and snapshot it into git."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        """Run the staging update on the controller; whatever happens after svn touched staging, snapshot it."""
        result = super().run(tmp, task_vars)
        try:
            st = Staging(self._task.args)
        except (KeyError, ValueError, StagingError) as exc:
            return {**result, "failed": True, "msg": f"ferry_staging: bad arguments: {exc}"}
        failure, out, rev, checked_out = None, "", None, False
        try:
            checked_out = st.checkout_if_missing()
            out, rev = st.update()
        except StagingError as exc:
            failure = str(exc)
        if not os.path.isdir(os.path.join(st.wc, ".svn")):
            return {**result, "failed": True, "msg": failure or "no working copy"}
        # Even when the update failed half-way, staging now serves something: record it, so no tree that
        # testers could see is missing from the history (and the next snapshot does not carry it silently).
        try:
            st.ensure_git()
            snap = st.commit()
        except (StagingError, ferry_tree.TreeError) as exc:
            msg = f"{failure}; " if failure else ""
            return {**result, "failed": True, "msg": f"{msg}{exc}"}
        revision = rev if rev is not None else st.wc_revision()
        snap["svn_revision"] = revision
        sha = snap["commit"]
        if failure:
            return {
                **result,
                "failed": True,
                "msg": f"{failure} (staging as it is now was recorded as snapshot {sha[:12]})",
                "ferry": snap,
            }
        result.update(
            changed=checked_out or snap["changed_count"] > 0,
            msg=f"staging at r{revision}, commit {sha[:12]}, {snap['changed_count']} changed file(s), "
            f"{snap['unversioned_count']} not versioned (not shipped)",
            svn_stdout=out[-MAX_MSG:],
            ferry=snap,
        )
        return result
