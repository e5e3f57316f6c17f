"""`flask` commands for ops: users, projects, memberships, the demo (pipeline commands: jobs/cli.py)."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

from . import notify
from . import projects as svc
from .auth import issue_token
from .config import DEFAULT_FORKS, DEFAULT_KEEP_RELEASES
from .demo import demo
from .errors import DomainError
from .extensions import db

user_cli = AppGroup("user", help="Manage users.")
project_cli = AppGroup("project", help="Manage projects and memberships.")
notify_cli = AppGroup("notify", help="Manage a project's notification channels.")


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


def _setting_options(create: bool):
    """Return a decorator adding every project setting as an option (`create`: with defaults and required ones)."""
    d = (lambda value: value) if create else (lambda value: None)  # `set` changes only what it is given
    options = [
        click.option("--svn-url", required=create, default=None),
        click.option("--staging-dir", required=create, default=None, help="the staging working copy (absolute)"),
        click.option("--inventory", required=create, default=None, help="a static inventory file (its name)"),
        click.option("--group", required=create, default=None, help="inventory group of the production hosts"),
        click.option("--staging-url", default=d(""), help="where testers see staging"),
        click.option("--approval/--no-approval", "requires_approval", default=d(True), help="a lead approves"),
        click.option("--allow-self-approval/--no-self-approval", default=d(False), help="a lead may approve own"),
        click.option("--mode", "deploy_mode", type=click.Choice(["atomic", "inplace"]), default=d("atomic")),
        click.option("--keep", "keep_releases", type=int, default=d(DEFAULT_KEEP_RELEASES), help="releases kept"),
        click.option("--forks", type=int, default=d(DEFAULT_FORKS), help="hosts synced in parallel"),
        click.option("--timeout", "stage_timeout", type=int, default=None, help="stage time limit, s"),
        click.option("--queue", default=None, help="worker pool whose machines run its stages (default: FERRY_QUEUE)"),
        click.option("--shared", "shared_paths", multiple=True, help="path kept across releases (repeatable)"),
        click.option("--hook", "hook_tasks", default=d(""), help="task file in playbooks/hooks/ run after the switch"),
        click.option("--batches", default=d(""), help="gray release batches, e.g. 1,50%,100% (empty: all at once)"),
        click.option("--batch-pause", type=click.Choice(["auto", "manual"]), default=d("auto")),
        click.option("--health-url", default=d(""), help="URL template checked after each batch ({host}, {address})"),
        click.option("--health-expect", default=d("2xx"), help="status codes: 2xx, 200,301, 200-399"),
        click.option("--health-body", default=d(""), help="text the answer must contain"),
        click.option("--health-retries", type=int, default=d(3)),
        click.option("--health-interval", type=int, default=d(2), help="seconds between tries"),
        click.option("--health-playbook", default=d(""), help="task file in playbooks/checks/ instead of the URL"),
    ]

    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


@project_cli.command("create")
@click.argument("name")
@_setting_options(create=True)
def project_create(name: str, **settings: object) -> None:
    """Create a project."""
    settings["shared_paths"] = list(settings["shared_paths"])  # type: ignore[arg-type]
    _run(svc.create_project, name, **settings)
    click.echo(f"project {name} created")


@project_cli.command("set")
@click.argument("name")
@_setting_options(create=False)
@click.option("--no-shared", is_flag=True, help="remove every shared path")
def project_set(name: str, no_shared: bool, **settings: object) -> None:
    """Change any of a project's settings (only the options given)."""
    changes = {k: v for k, v in settings.items() if v is not None and v != ()}
    if settings.get("shared_paths") or no_shared:
        changes["shared_paths"] = list(settings.get("shared_paths") or [])
    if not changes:
        raise click.UsageError("give at least one setting to change (see --help)")
    project = _run(svc.get_project, name)
    _run(svc.update_project, project, **changes)
    click.echo(f"project {name}: " + ", ".join(f"{k}={v}" for k, v in changes.items()))


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


@notify_cli.command("add")
@click.argument("project_name")
@click.option("--kind", type=click.Choice(notify.KINDS), required=True)
@click.option("--url", default="", help="the webhook URL (json, dingtalk, wecom, feishu, slack)")
@click.option("--to", "to", default="", help="mail address(es), comma-separated (email)")
@click.option("--secret", default="", help="signing secret (json, dingtalk, feishu); never shown again")
@click.option("--events", default="", help=f"comma-separated, default all: {','.join(notify.EVENTS)}")
def notify_add(project_name: str, kind: str, url: str, to: str, secret: str, events: str) -> None:
    """Add a notification channel to a project."""
    project = _run(svc.get_project, project_name)
    channel = _run(notify.add_channel, project, None, kind, to if kind == "email" else url, secret, events)
    click.echo(f"channel {channel.id} added: {notify.label(channel)}")


@notify_cli.command("list")
@click.argument("project_name")
def notify_list(project_name: str) -> None:
    """List a project's channels (targets masked, secrets never shown)."""
    project = _run(svc.get_project, project_name)
    for channel in notify.project_channels(db.session, project):
        c = notify.channel_json(db.session, channel)
        events = ",".join(c["events"]) or "all events"
        last = f"last: {c['last_status']} {c['last_error']}".strip() if c["last_status"] else ""
        click.echo(f"{c['id']:>4}  {c['kind']:<8} {c['target']:<40} secret:{c['secret'] or '-':<4}  {events}  {last}")


@notify_cli.command("remove")
@click.argument("channel_id", type=int)
def notify_remove(channel_id: int) -> None:
    """Remove a channel (its past deliveries stay on the tickets)."""
    channel = _run(notify.get_channel, channel_id)
    _run(notify.remove_channel, channel, None)
    click.echo(f"channel {channel_id} removed")


@notify_cli.command("test")
@click.argument("channel_id", type=int)
@click.option("--wait", default=30, help="seconds to wait for a worker to deliver it")
def notify_test(channel_id: int, wait: int) -> None:
    """Queue a test message to a channel and wait for a worker's result."""
    import time

    channel = _run(notify.get_channel, channel_id)
    delivery = _run(notify.send_test, channel, None)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        db.session.refresh(delivery)
        if delivery.status != "queued":
            break
        time.sleep(0.5)
    if delivery.status == "sent":
        click.echo(f"test message delivered to {delivery.channel_label}")
        return
    if delivery.status == "queued":
        raise click.ClickException(f"still queued after {wait} s (is a worker running?) {delivery.error}".strip())
    raise click.ClickException(f"delivery failed: {delivery.error}")


def init_app(app: Flask) -> None:
    """Register the CLI groups."""
    app.cli.add_command(user_cli)
    app.cli.add_command(project_cli)
    app.cli.add_command(notify_cli)
    app.cli.add_command(demo)
    # worker, reconcile, runs and verify live in jobs/cli.py (flask.commands entry points, pyproject.toml).
