"""Throwaway svn repository, staging working copy and local "production hosts" for playbook tests."""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from jobs import runner

SITE = {
    "index.html": "<h1>hello</h1>\n",
    "robots.txt": "User-agent: *\n",
    "bin/run.sh": "#!/bin/sh\necho run\n",
    "sub/page.html": "<p>page</p>\n",
    "sub/deep/data.txt": "data\n" * 50,
}
EXECUTABLE = "bin/run.sh"


def sh(*argv: str | Path, cwd: Path | None = None) -> str:
    """Run a command, fail loudly, return stdout."""
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{argv} -> {proc.returncode}: {proc.stderr}"
    return proc.stdout


@dataclass
class Env:
    """Paths of one test environment."""

    root: Path
    svn_url: str
    svn_cfg: Path
    staging_dir: Path
    snapshot_git_dir: Path
    release_dir: Path
    ansible_home: Path
    hosts: dict[str, Path] = field(default_factory=dict)
    runs: int = 0

    def svn(self, *argv: str | Path, cwd: Path | None = None) -> str:
        """Run svn with the test's own config dir."""
        return sh("svn", "--non-interactive", "--config-dir", self.svn_cfg, *argv, cwd=cwd)

    def commit_change(self, rel: str, text: str | None) -> None:
        """Commit a change (text=None deletes) through a second working copy, as a developer would."""
        wc = self.root / "dev-wc"
        if not wc.exists():
            self.svn("checkout", "-q", self.svn_url, wc)
        self.svn("update", "-q", wc)
        path = wc / rel
        if text is None:
            self.svn("rm", "-q", path)
        else:
            new = not path.exists()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if new:
                self.svn("add", "-q", "--parents", path)
        self.svn("commit", "-q", "-m", f"change {rel}", wc)

    def write_inventory(self, names: list[str], connection: dict[str, str] | None = None) -> Path:
        """Write an inventory (group `prod`) with a deploy_root per host; hosts are local unless given."""
        lines = ["[prod]"]
        for name in names:
            root = self.hosts.setdefault(name, self.root / "hosts" / name / "www")
            conn = (connection or {}).get(name, "ansible_connection=local")
            lines.append(f"{name} deploy_root={root} {conn}")
        inv = self.root / f"inventory-{'-'.join(names)}.ini"
        inv.write_text("\n".join(lines) + "\n")
        return inv

    def run(self, playbook: str, extravars: dict, inventory: Path | None = None, **kw) -> runner.RunResult:
        """Prepare a fresh run dir and run a playbook in it."""
        self.runs += 1
        run_dir = self.root / "runs" / f"{self.runs:03d}"
        runner.prepare_run_dir(
            run_dir,
            playbook=playbook,
            inventory_file=inventory,
            extravars=extravars,
            envvars={"ANSIBLE_HOME": str(self.ansible_home)},
        )
        return runner.run_playbook(run_dir, playbook, **kw)

    def staging(self, paths: list[str] | None = None, revision: int | None = None) -> runner.RunResult:
        """Run staging_update.yml."""
        return self.run(
            "staging_update.yml",
            {
                "svn_url": self.svn_url,
                "staging_dir": str(self.staging_dir),
                "snapshot_git_dir": str(self.snapshot_git_dir),
                "svn_paths": paths or [],
                "svn_revision": revision,
                "commit_message": f"staging update {self.runs + 1}",
                "svn_config_dir": str(self.svn_cfg),
            },
        )

    def release(self, inventory: Path, version: int, commit: str, **extra) -> runner.RunResult:
        """Run release.yml to group prod."""
        names = [ln.split()[0] for ln in inventory.read_text().splitlines()[1:] if ln.strip()]
        extravars = {
            "ferry_group": "prod",
            "version": version,
            "commit": commit,
            "snapshot_git_dir": str(self.snapshot_git_dir),
            "release_dir": str(self.release_dir),
            "mode": "atomic",
            "keep": 5,
            "protect_versions": [],
            "shared_paths": [],
            **extra,
        }
        return self.run("release.yml", extravars, inventory, expected_hosts=names)


def make_env(root: Path) -> Env:
    """Create an svn repository holding SITE (with an executable file) and an empty workspace."""
    root.mkdir(parents=True, exist_ok=True)
    repo = root / "svnrepo"
    sh("svnadmin", "create", repo)
    tree = root / "import"
    for rel, text in SITE.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    (tree / EXECUTABLE).chmod(0o755)
    env = Env(
        root=root,
        svn_url=f"file://{repo}/trunk",
        svn_cfg=root / "svn-config",
        staging_dir=root / "staging",
        snapshot_git_dir=root / "snapshot.git",
        release_dir=root / "release",
        ansible_home=root / "ansible",
    )
    env.svn("import", "-q", "-m", "initial", tree, env.svn_url)
    # svn keeps the exec bit only as svn:executable; import sets it from the file mode.
    return env


def tree_of(path: Path) -> dict[str, tuple[bytes, bool]]:
    """Map each file under path (following no symlinks) to (content, executable)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d not in (".git", ".svn")]
        for name in filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(path))
            out[rel] = (p.read_bytes(), bool(p.stat().st_mode & stat.S_IXUSR))
    return out


def git_tree(git_dir: Path, ref: str, dest: Path) -> dict[str, tuple[bytes, bool]]:
    """Export a git ref to dest and return its tree_of()."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", f"--git-dir={git_dir}", "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return tree_of(dest)
