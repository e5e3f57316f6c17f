"""`flask demo`: a ready project on this machine: a file:// SVN repo, staging, three local hosts, users."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import click
from flask import current_app
from sqlalchemy import select

from . import projects as svc
from .config import REPO_ROOT
from .extensions import db
from .models import Project

SITE = {
    "index.html": "<!doctype html>\n<title>Demo site</title>\n<h1>Hello from the demo site</h1>\n"
    '<link rel="stylesheet" href="css/site.css">\n<p><a href="about/">About</a></p>\n',
    "css/site.css": "body { font-family: sans-serif; margin: 2rem; }\n",
    "about/index.html": "<h1>About</h1>\n<p>Released by Ferry.</p>\n",
    "bin/healthcheck.sh": "#!/bin/sh\necho ok\n",
}
USERS = (("admin", True, None), ("dev", False, "developer"), ("lead", False, "lead"))


def _run(*argv: str) -> None:
    """Run a command (argv, no shell) and fail with its stderr."""
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode:
        raise click.ClickException(f"{' '.join(argv)}: {out.stderr.strip()}")


def _svn_repo(base: Path) -> str:
    """Create the demo SVN repository with a small website and a developer working copy."""
    repo = base / "svn" / "repo"
    url = f"file://{repo}/trunk"
    if repo.exists():
        return url
    cfg = str(base / "svn" / "config")
    repo.parent.mkdir(parents=True, exist_ok=True)
    _run("svnadmin", "create", str(repo))
    tree = base / "svn" / "import"
    for rel, content in SITE.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        if rel.endswith(".sh"):
            path.chmod(0o755)
    _run("svn", "import", "-q", "-m", "demo site", "--config-dir", cfg, str(tree), url)
    _run("svn", "checkout", "-q", "--config-dir", cfg, url, str(base / "dev-wc"))
    _run("svn", "checkout", "-q", "--config-dir", cfg, url, str(base / "staging" / "site"))
    return url


def _inventory(base: Path, hosts: int) -> Path:
    """Write inventory/demo.ini: local 'production hosts' reached with ansible_connection=local."""
    lines = ["# Written by `flask demo`: local directories standing in for production hosts.", "[demo_web]"]
    for i in range(1, hosts + 1):
        root = base / "hosts" / f"web{i}"
        root.mkdir(parents=True, exist_ok=True)
        lines.append(f"web{i} ansible_connection=local deploy_root={root}")
    lines += ["", "[demo_web:vars]", "ansible_python_interpreter=auto_silent"]
    path = Path(current_app.config["FERRY_INVENTORY_DIR"]) / "demo.ini"  # projects take inventories only from there
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)  # never executable: Ansible would run it as a script
    return path


def _users(base: Path) -> dict[str, str]:
    """Create the demo users once and return their passwords (kept in a 0600 file for re-runs)."""
    creds = base / "credentials.txt"
    if creds.exists():
        return dict(line.split(" ", 1) for line in creds.read_text().split("\n") if line)
    passwords = {name: secrets.token_urlsafe(9) for name, _, _ in USERS}
    for name, admin, _ in USERS:
        svc.create_user(db.session, name, passwords[name], is_admin=admin)
    creds.touch(mode=0o600)
    creds.write_text("".join(f"{n} {p}\n" for n, p in passwords.items()))
    return passwords


@click.command("demo")
@click.option("--hosts", default=3, help="number of local production hosts")
def demo(hosts: int) -> None:
    """Create (once) the demo project, its SVN repo, staging, local hosts and users; print logins."""
    base = REPO_ROOT / "instance" / "demo"
    base.mkdir(parents=True, exist_ok=True)
    url = _svn_repo(base)
    inventory = _inventory(base, hosts)
    passwords = _users(base)
    if db.session.scalar(select(Project).where(Project.name == "demo")) is None:
        project = svc.create_project(
            db.session,
            "demo",
            svn_url=url,
            staging_dir=str(base / "staging" / "site"),
            staging_url="http://127.0.0.1:8001/",
            inventory=inventory.name,
            group="demo_web",
        )
        for name, _, role in USERS:
            if role:
                svc.set_member(db.session, project, svc.get_user(db.session, name), role)
    db.session.commit()
    click.echo("Demo project 'demo' is ready.")
    click.echo(f"  SVN: {url}   developer working copy: {base / 'dev-wc'}")
    click.echo(f"  hosts: {', '.join(f'web{i}' for i in range(1, hosts + 1))} under {base / 'hosts'}")
    for name, _, role in USERS:
        click.echo(f"  login {name:6} password {passwords[name]}   ({role or 'admin'})")
