"""A web tree like real ones (a PHP app with its own .gitignore and .gitattributes, CRLF files, unicode names,
empty dirs, symlinks, executables), and exact tree comparison for release-integrity tests."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.support.site import SvnRepo, sh

# What git would reinterpret: ignored-but-versioned files, eol rules, and names git quotes.
PHP_TREE: dict[str, bytes | None] = {
    ".gitignore": b"usr/plugins/*\n!usr/plugins/.gitkeep\nconfig/*\n*.log\nvendor/\n",
    ".gitattributes": b"* text=auto\n*.php eol=crlf\n*.txt eol=lf\n",
    "index.php": b"<?php\nrequire 'config/app.php';\necho 'hello';\n",
    "windows.txt": b"line one\r\nline two\r\n",
    "mixed.php": b"<?php\r\n// crlf and lf\necho 1;\r\n",
    "config/app.php": b"<?php return ['db' => 'prod'];\n",
    "usr/plugins/Hello/Plugin.php": b"<?php class Hello {}\n",
    "usr/plugins/.gitkeep": b"",
    "var/.gitkeep": b"",
    "logs/install.log": b"installed\n",
    "vendor/lib/x.php": b"<?php // vendored\n",
    "ü.html": "<p>Grüße</p>\n".encode(),
    "a b c.html": b"<p>spaces</p>\n",
    "-dash.html": b"<p>dash</p>\n",
    "bin/cron.sh": b"#!/bin/sh\necho cron\n",
    "img/pixel.gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;\x00\r\n\x00",
    "uploads": None,  # empty versioned directories: the app writes into them
    "cache/views": None,
}
EXECUTABLES = {"bin/cron.sh"}
SYMLINKS = {"latest.php": "index.php", "assets": "img"}


def write_tree(root: Path, files: dict[str, bytes | None], executables=(), symlinks=None) -> None:
    """Write files (bytes; None = empty directory), exec bits and symlinks under root."""
    for rel, content in files.items():
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if rel in executables:
            path.chmod(0o755)
    for rel, target in (symlinks or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / rel)


def make_php_repo(base: Path) -> SvnRepo:
    """Create an SVN repository holding PHP_TREE at revision 1 (svn:executable and svn:special set by import)."""
    base.mkdir(parents=True, exist_ok=True)
    config_dir = base / "svn-config"
    root = base / "svnrepo"
    sh("svnadmin", "create", str(root))
    tree = base / "import"
    write_tree(tree, PHP_TREE, EXECUTABLES, SYMLINKS)
    url = f"file://{root}/trunk"
    # --no-ignore: svn's own global-ignores (*.log is not one, but be explicit) must not drop anything.
    sh("svn", "import", "-q", "--no-ignore", "-m", "initial", "--config-dir", str(config_dir), str(tree), url)
    wc = base / "dev-wc"
    sh("svn", "checkout", "-q", "--config-dir", str(config_dir), url, str(wc))
    return SvnRepo(root=root, url=url, wc=wc, config_dir=config_dir)


def svn(repo: SvnRepo, *argv: str, cwd: Path | None = None) -> str:
    """Run svn with the repo's config dir."""
    return sh("svn", "--config-dir", str(repo.config_dir), *argv, cwd=cwd)


def commit_raw(repo: SvnRepo, message: str, files=None, delete=(), executables=(), symlinks=None, dirs=()) -> int:
    """Commit byte contents, deletions, exec bits, symlinks and empty dirs from the developer working copy."""
    wc = repo.wc
    for rel in delete:
        svn(repo, "rm", "-q", "--", str(wc / rel))
    for rel, content in (files or {}).items():
        path = wc / rel
        new = not os.path.lexists(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if new:
            svn(repo, "add", "-q", "--parents", "--no-ignore", "--", str(path))
    for rel in executables:
        svn(repo, "propset", "-q", "svn:executable", "*", "--", str(wc / rel))
    for rel, target in (symlinks or {}).items():
        os.symlink(target, wc / rel)
        svn(repo, "add", "-q", "--parents", "--", str(wc / rel))
    for rel in dirs:
        svn(repo, "mkdir", "-q", "--parents", "--", str(wc / rel))
    svn(repo, "commit", "-q", "-m", message, str(wc))
    svn(repo, "update", "-q", str(wc))
    return int(svn(repo, "info", "--show-item", "revision", str(wc)).strip())


def snapshot(root: Path, skip: set[str] | frozenset = frozenset()) -> dict[str, tuple]:
    """Return {path: ("d",) | ("l", target) | ("f", bytes, executable)} of a tree, not following symlinks.

    `root` itself may be a symlink (a host's `current`). `.svn` and `.git` dirs and paths in `skip` (and
    below them) are left out.
    """
    root = Path(os.path.realpath(root))
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if d not in (".svn", ".git")]
        for name in sorted(dirnames + filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d",)
            else:
                with open(full, "rb") as fh:
                    out[rel] = ("f", fh.read(), bool(st.st_mode & 0o100))
        # os.walk lists symlinks to dirs among dirnames: do not descend into them.
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out


def versioned_tree(wc: Path, dest: Path, skip=frozenset()) -> dict[str, tuple]:
    """Return the SVN-versioned content of a working copy as it is now (`svn export WC`), as a snapshot."""
    subprocess.run(["svn", "export", "-q", "--force", str(wc), str(dest)], check=True, capture_output=True)
    return snapshot(dest, skip)
