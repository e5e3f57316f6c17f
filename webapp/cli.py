"""`flask` commands for ops: users, projects, memberships, the worker."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

from . import notify
from . import projects as svc
from .auth import issue_token
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
@click.option("--keep", "keep_releases", type=int, default=5, help="releases kept per host")
@click.option("--forks", type=int, default=10, help="hosts synced in parallel")
@click.option("--timeout", "stage_timeout", type=int, default=1800, help="seconds a stage may run")
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


@click.command("worker")
@click.option("--burst", is_flag=True, help="stop when the queue is empty")
def worker(burst: bool) -> None:
    """Run an RQ worker for Ferry's queue (reconciles lost runs first)."""
    from rq import Worker

    from jobs.queue import queue, redis_connection
    from jobs.reconcile import reconcile

    click.echo(f"reconciled: {reconcile()}")
    conn = redis_connection()
    # The scheduler moves notification retries waiting for their back-off back onto the queue.
    Worker([queue(conn)], connection=conn).work(burst=burst, with_scheduler=True)


@click.command("reconcile")
@click.option("--every", type=int, default=0, help="repeat every N seconds (0: once)")
def reconcile_cmd(every: int) -> None:
    """Find runs whose worker is gone, fail them, and re-enqueue runs that never reached the queue."""
    import time

    from jobs.reconcile import reconcile

    while True:
        click.echo(reconcile())
        db.session.remove()  # next round reads fresh rows
        if not every:
            return
        time.sleep(every)


runs_cli = AppGroup("runs", help="Inspect and replay pipeline runs.")


@runs_cli.command("list")
@click.option("--project", default="", help="only this project")
@click.option("--limit", default=20, help="how many, newest first")
def runs_list(project: str, limit: int) -> None:
    """List recent runs."""
    from sqlalchemy import select

    from .models import Project, Run

    query = select(Run).order_by(Run.id.desc()).limit(limit)
    if project:
        query = query.join(Project, Run.project_id == Project.id).where(Project.name == project)
    for run in db.session.scalars(query):
        click.echo(
            f"#{run.id:<5} {run.project.name:<16} ticket #{run.ticket_id:<5} {run.stage:<8} {run.status:<10} "
            f"{run.created_at:%Y-%m-%d %H:%M:%S}  {run.run_dir or '(no run dir)'}"
        )


@runs_cli.command("show")
@click.argument("run_id", type=int)
def runs_show(run_id: int) -> None:
    """Show a run: status, hosts, error, run dir, the replay command and the end of its log."""
    from .models import Run
    from .serialize import replay_command

    run = db.session.get(Run, run_id)
    if run is None:
        raise click.ClickException(f"run {run_id} not found")
    click.echo(
        f"run #{run.id}: {run.stage} of ticket #{run.ticket_id} ({run.project.name}) — {run.status}, rc {run.rc}"
    )
    click.echo(f"started {run.started_at} finished {run.finished_at} version {run.version or '-'}")
    for h in run.hosts:
        click.echo(f"  {h.host:<20} {h.status:<12} {h.message[:200]}")
    if run.error:
        click.echo(f"error: {run.error}")
    if run.run_dir:
        click.echo(f"run dir: {run.run_dir}")
        click.echo(f"replay by hand: PATH=$PWD/.venv/bin:$PATH {' '.join(replay_command(run))}")
    click.echo("\n".join(run.log.splitlines()[-40:]))


@runs_cli.command("replay")
@click.argument("run_id", type=int)
@click.option("--limit", default=None, help="only these hosts (comma-separated)")
def runs_replay(run_id: int, limit: str | None) -> None:
    """Replay a run from its run directory and record the result as a new run."""
    from jobs.replay import replay

    try:
        new = replay(run_id, limit)
    except LookupError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"replayed run #{run_id} as run #{new.id}: {new.status}")
    for h in new.hosts:
        click.echo(f"  {h.host:<20} {h.status:<12} {h.message[:200]}")
    if new.status != "successful":
        raise SystemExit(1)


@click.command("verify")
@click.argument("name")
@click.option("--checksum", is_flag=True, help="compare every file's content (slower; sees edits that kept size+mtime)")
def verify_cmd(name: str, checksum: bool) -> None:
    """Check every host against the version it should serve; exit 0 only when every host is in sync.

    Exit 1 when a host drifted or is new, 2 when a host could not be checked (unreachable).
    """
    from jobs.verify import VerifyError, all_in_sync, verify_project

    project = _run(svc.get_project, name)
    try:
        states = verify_project(
            project, on_wait=lambda holder: click.echo(f"waiting for the release lock ({holder})"), checksum=checksum
        )
    except VerifyError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"{project.name}: live version {project.live_version or 'none'}")
    for s in states:
        drift = s.drift or {}
        files = "; ".join(f"{k} {', '.join(drift[k])}" for k in ("modified", "deleted", "added") if drift.get(k))
        version = "-" if s.version is None else s.version
        click.echo(f"  {s.host:<20} {version!s:<8} {s.state:<12} {files or s.message}")
    if all_in_sync(states):
        return
    raise SystemExit(2 if any(s.state == "unreachable" for s in states) else 1)


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
    app.cli.add_command(worker)
    app.cli.add_command(reconcile_cmd)
    app.cli.add_command(demo)
    app.cli.add_command(runs_cli)
    app.cli.add_command(verify_cmd)
