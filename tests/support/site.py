"""Builders for test worlds: an SVN repository with a small website, local hosts, users and a project."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SITE = {
    "index.html": "<h1>Hello v1</h1>\n",
    "css/site.css": "body { color: black; }\n",
    "bin/run.sh": "#!/bin/sh\necho run\n",
    "about/index.html": "<p>about</p>\n",
}


def sh(*argv: str, cwd: Path | None = None) -> str:
    """Run a command (argv, no shell) and return its stdout; fail loudly."""
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{argv} failed: {out.stderr}")
    return out.stdout


@dataclass
class SvnRepo:
    """A file:// SVN repository and a developer working copy to commit changes from."""

    root: Path
    url: str
    wc: Path
    config_dir: Path

    def commit(self, files: dict[str, str | None], message: str = "change") -> int:
        """Write (or delete, with None) files in the developer working copy, commit, and return the revision."""
        for rel, content in files.items():
            path = self.wc / rel
            if content is None:
                sh("svn", "rm", "-q", "--config-dir", str(self.config_dir), str(path))
                continue
            new = not path.exists()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            if new:
                sh("svn", "add", "-q", "--parents", "--config-dir", str(self.config_dir), str(path))
        sh("svn", "commit", "-q", "-m", message, "--config-dir", str(self.config_dir), str(self.wc))
        sh("svn", "update", "-q", "--config-dir", str(self.config_dir), str(self.wc))
        return int(sh("svn", "info", "--show-item", "revision", "--config-dir", str(self.config_dir), str(self.wc)))


def make_svn_repo(base: Path, site: dict[str, str] | None = None) -> SvnRepo:
    """Create an SVN repository holding a small website (with an executable file) at revision 1."""
    base.mkdir(parents=True, exist_ok=True)
    config_dir = base / "svn-config"
    root = base / "svnrepo"
    sh("svnadmin", "create", str(root))
    tree = base / "import"
    for rel, content in (site or SITE).items():
        p = tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        if rel.startswith("bin/"):
            p.chmod(0o755)
    url = f"file://{root}/trunk"
    sh("svn", "import", "-q", "-m", "initial", "--config-dir", str(config_dir), str(tree), url)
    wc = base / "dev-wc"
    sh("svn", "checkout", "-q", "--config-dir", str(config_dir), url, str(wc))
    return SvnRepo(root=root, url=url, wc=wc, config_dir=config_dir)


@dataclass
class LocalHosts:
    """Production 'hosts' that are local directories reached with ansible_connection=local."""

    inventory: Path
    group: str
    roots: dict[str, Path] = field(default_factory=dict)

    def live_tree(self, host: str) -> Path:
        """Return the directory the host serves (current release, or the root in in-place mode)."""
        root = self.roots[host]
        return root / "current" if (root / "current").exists() else root


def make_local_hosts(base: Path, n: int = 3, group: str = "web", inventory: Path | None = None) -> LocalHosts:
    """Write an inventory of n local hosts, each with its own deploy_root (at `inventory`, else base/hosts.ini)."""
    lines = [f"[{group}]"]
    hosts = LocalHosts(inventory=inventory or base / "hosts.ini", group=group)
    for i in range(1, n + 1):
        name = f"web{i}"
        root = base / "hosts" / name
        root.mkdir(parents=True)
        hosts.roots[name] = root
        lines.append(f"{name} ansible_connection=local deploy_root={root}")
    lines += [f"[{group}:vars]", f"ansible_python_interpreter={os.environ.get('FERRY_PYTHON', '/usr/bin/python3')}"]
    hosts.inventory.write_text("\n".join(lines) + "\n")
    return hosts


def tree_of(root: Path) -> dict[str, tuple[bytes, bool]]:
    """Return {relative path: (content, executable)} of every file under root (symlinks followed at the top)."""
    root = root.resolve()
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and ".svn" not in p.parts and ".git" not in p.parts:
            out[str(p.relative_to(root))] = (p.read_bytes(), os.access(p, os.X_OK))
    return out
