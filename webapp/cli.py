"""`flask` commands for ops: users, projects, memberships, the demo (pipeline commands: jobs/cli.py)."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

from . import projects as svc
from .auth import issue_token
from .config import DEFAULT_FORKS, DEFAULT_KEEP_RELEASES
from .demo import demo
from .errors import DomainError
from .extensions import db

user_cli = AppGroup("user", help="Manage users.")
project_cli = AppGroup("project", help="Manage projects and memberships.")


def _run(fn, *args, **kwargs):
    """Call a service, commit, and turn domain errors into a clean CLI error."""
    try:
        result = fn(db.session, *args, **kwargs)
        db.session.commit()
        return result
    except DomainError as e:
        db.session.rollback()
        raise click.ClickException(e.message) from e


@user_cli.command("create")
@click.argument("name")
@click.option("--password", required=True, help="at least 8 characters")
@click.option("--admin", is_flag=True, help="may manage users, projects and memberships")
def user_create(name: str, password: str, admin: bool) -> None:
    """Create a user."""
    _run(svc.create_user, name, password, admin)
    click.echo(f"user {name} created{' (admin)' if admin else ''}")


@user_cli.command("token")
@click.argument("name")
def user_token(name: str) -> None:
    """Print a new API token for a user (only its hash is stored)."""
    user = _run(svc.get_user, name)
    token = issue_token(user)
    db.session.commit()
    click.echo(token)


@user_cli.command("disable")
@click.argument("name")
def user_disable(name: str) -> None:
    """Disable a user: every session ends, API tokens stop working, login is refused."""
    user = _run(svc.get_user, name)
    _run(svc.set_disabled, user, True)
    click.echo(f"user {name} disabled")


@user_cli.command("enable")
@click.argument("name")
def user_enable(name: str) -> None:
    """Enable a disabled user again."""
    user = _run(svc.get_user, name)
    _run(svc.set_disabled, user, False)
    click.echo(f"user {name} enabled")


@project_cli.command("create")
@click.argument("name")
@click.option("--svn-url", required=True)
@click.option("--staging-dir", required=True, help="the staging working copy; checked out on first update")
@click.option("--inventory", required=True, help="a static inventory file in the inventory directory (its name)")
@click.option("--group", required=True, help="inventory group of the production hosts")
@click.option("--staging-url", default="", help="where testers see staging")
@click.option("--no-approval", is_flag=True, help="test passed goes straight to approved")
@click.option("--allow-self-approval", is_flag=True, help="a lead may approve their own ticket")
@click.option("--mode", "deploy_mode", type=click.Choice(["atomic", "inplace"]), default="atomic")
@click.option("--keep", "keep_releases", type=int, default=DEFAULT_KEEP_RELEASES, help="releases kept per host")
@click.option("--forks", type=int, default=DEFAULT_FORKS, help="hosts synced in parallel")
@click.option("--timeout", "stage_timeout", type=int, default=None, help="stage time limit, s")
@click.option("--shared", "shared_paths", multiple=True, help="path kept across releases (repeatable)")
@click.option("--hook", "hook_tasks", default="", help="task file in playbooks/hooks/ run on each host after switch")
def project_create(name: str, no_approval: bool, **settings: object) -> None:
    """Create a project."""
    settings["requires_approval"] = not no_approval
    settings["shared_paths"] = list(settings["shared_paths"])  # type: ignore[arg-type]
    _run(svc.create_project, name, **settings)
    click.echo(f"project {name} created")


@project_cli.command("member")
@click.argument("name")
@click.argument("username")
@click.option("--role", type=click.Choice(["developer", "lead", "none"]), required=True)
def project_member(name: str, username: str, role: str) -> None:
    """Give a user a role in a project (`none` removes them)."""
    project = _run(svc.get_project, name)
    user = _run(svc.get_user, username)
    _run(svc.set_member, project, user, None if role == "none" else role)
    click.echo(f"{username} is {role} of {name}")


def init_app(app: Flask) -> None:
    """Register the CLI groups."""
    app.cli.add_command(user_cli)
    app.cli.add_command(project_cli)
    app.cli.add_command(demo)
    # worker, reconcile, runs and verify live in jobs/cli.py (flask.commands entry points, pyproject.toml).
