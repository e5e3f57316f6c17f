"""Ansible action plugin: svn update of the staging working copy plus a snapshot commit of its tree."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from ansible.plugins.action import ActionBase

# Cap the changed-file list: it travels in every event and into the DB.
MAX_CHANGED = 500
MAX_MSG = 2048
GIT_IDENTITY = [
    "-c",
    "user.name=Ferry",
    "-c",
    "user.email=ferry@localhost",
    "-c",
    "safe.directory=*",
]


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
        self.message = str(args.get("commit_message") or "staging update")
        # Keep svn away from ~/.subversion (tests, multi-tenant workers); ops may pre-seed auth here.
        home = os.environ.get("ANSIBLE_HOME") or str(Path(self.wc).parent / ".ansible")
        self.config_dir = str(args.get("svn_config_dir") or Path(home) / "subversion")

    def svn(self, *argv: str) -> list[str]:
        """Build an svn argv that never prompts and uses our config dir."""
        return ["svn", "--non-interactive", "--config-dir", self.config_dir, *argv]

    def git(self, *argv: str) -> list[str]:
        """Build a git argv on the snapshot repository whose work tree is the svn working copy."""
        return [
            "git",
            *GIT_IDENTITY,
            f"--git-dir={self.git_dir}",
            f"--work-tree={self.wc}",
            *argv,
        ]

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

    def ensure_git(self) -> None:
        """Create the snapshot git dir on first use, excluding .svn/."""
        if os.path.isfile(os.path.join(self.git_dir, "HEAD")):
            return
        _check(_run(["git", f"--git-dir={self.git_dir}", "init", "-q"]), "git init")
        with open(os.path.join(self.git_dir, "info", "exclude"), "a", encoding="utf-8") as fh:
            fh.write(".svn/\n")

    def commit(self) -> tuple[str, list[str], int]:
        """Commit the whole tree (always a new commit) and list what changed."""
        _check(_run(self.git("add", "-A")), "git add")
        # --allow-empty: every staging update gets its own commit id, even with no change.
        _check(
            _run(self.git("commit", "-q", "--allow-empty", "--no-verify", "-m", self.message)),
            "git commit",
        )
        sha = _check(_run(self.git("rev-parse", "HEAD")), "git rev-parse").strip()
        diff = _check(
            _run(
                self.git(
                    "diff-tree",
                    "--no-commit-id",
                    "--name-status",
                    "-r",
                    "--root",
                    "HEAD",
                )
            ),
            "git diff",
        )
        changed = [ln.replace("\t", " ", 1) for ln in diff.splitlines() if ln]
        return sha, changed[:MAX_CHANGED], len(changed)


class ActionModule(ActionBase):
    """Update the staging svn working copy and snapshot it into git."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        """Run the staging update on the controller."""
        result = super().run(tmp, task_vars)
        try:
            st = Staging(self._task.args)
            checked_out = st.checkout_if_missing()
            out, rev = st.update()
            st.ensure_git()
            sha, changed, n_changed = st.commit()
        except StagingError as exc:
            return {**result, "failed": True, "msg": str(exc)}
        except (KeyError, ValueError) as exc:
            return {
                **result,
                "failed": True,
                "msg": f"ferry_staging: bad arguments: {exc}",
            }
        revision = rev if rev is not None else st.wc_revision()
        result.update(
            changed=checked_out or n_changed > 0,
            msg=f"staging at r{revision}, commit {sha[:12]}, {n_changed} changed file(s)",
            svn_stdout=out[-MAX_MSG:],
            ferry={
                "svn_revision": revision,
                "commit": sha,
                "changed": changed,
                "changed_count": n_changed,
            },
        )
        return result
