"""`flask` commands that drive the pipeline: the worker, the reconciler, drain, runs (list, show, replay).

They reach `flask --app webapp …` through the `flask.commands` entry points in pyproject.toml (Flask loads
them for any app), so the web app never imports `jobs`: imports go one way, jobs → webapp.
"""

from __future__ import annotations

import time

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import select

from webapp.dispatch import queue
from webapp.errors import DomainError
from webapp.extensions import db
from webapp.live import redis_connection
from webapp.models import Project, Run
from webapp.projects import get_project as find_project
from webapp.serialize import replay_command

from .pools import PoolWorker, active_runs, drained_pools, known_pools, pool_workers, queued_jobs, set_drained
from .reconcile import reconcile
from .replay import replay
from .verify import VerifyError, all_in_sync, verify_project


def _pools(names: tuple[str, ...]) -> list[str]:
    """Return the pools given with --queue, or the default pool (FERRY_QUEUE)."""
    return sorted(set(names)) or [current_app.config["FERRY_QUEUE"]]


QUEUE_OPTION = click.option(
    "--queue", "queues", multiple=True, help="worker pool (RQ queue) to serve; repeatable (default: FERRY_QUEUE)"
)


@click.command("worker")
@with_appcontext
@click.option("--burst", is_flag=True, help="stop when the queue is empty")
@QUEUE_OPTION
def worker(burst: bool, queues: tuple[str, ...]) -> None:
    """Run an RQ worker for one or more worker pools (reconciles their lost runs first)."""
    pools = _pools(queues)
    click.echo(f"reconciled: {reconcile(pools)}")
    conn = redis_connection()
    # The scheduler moves notification retries waiting for their back-off back onto the queue.
    PoolWorker([queue(conn, pool) for pool in pools], connection=conn).work(burst=burst, with_scheduler=True)


@click.command("reconcile")
@with_appcontext
@click.option("--every", type=int, default=0, help="repeat every N seconds (0: once)")
@QUEUE_OPTION
def reconcile_cmd(every: int, queues: tuple[str, ...]) -> None:
    """Fail lost runs of the pools' projects and re-enqueue their runs that never reached the queue.

    Leftover ansible-playbook processes are stopped only on this machine (FERRY_HOSTNAME or the hostname).
    """
    pools = _pools(queues)
    while True:
        click.echo(reconcile(pools))
        db.session.remove()  # next round reads fresh rows
        if not every:
            return
        time.sleep(every)


@click.command("drain")
@with_appcontext
@click.option("--queue", "queues", multiple=True, help="only this pool; repeatable (default: every pool)")
@click.option("--status", "status_only", is_flag=True, help="only show what still runs; change nothing")
def drain_cmd(queues: tuple[str, ...], status_only: bool) -> None:
    """Stop the pools' workers from taking new jobs (running stages finish), e.g. before an upgrade.

    Exit 0 when nothing of those pools runs any more, 1 while runs are still going.
    """
    redis = redis_connection()
    pools = sorted(set(queues)) or known_pools(redis, current_app.config["FERRY_QUEUE"])
    if not status_only:
        set_drained(redis, pools, True)
    drained = drained_pools(redis, pools)
    waiting = queued_jobs(redis, pools)
    for pool in pools:
        click.echo(f"pool {pool}: {'drained' if pool in drained else 'open'}, {waiting[pool]} job(s) waiting")
    for w in pool_workers(redis, pools):
        job = w.get_current_job_id() or "-"
        click.echo(f"  worker {w.name} ({w.hostname}) on {','.join(w.queue_names())}: {w.get_state()}, job {job}")
    running = active_runs(pools)
    for run in running:
        click.echo(
            f"  run #{run.id} {run.stage} of {run.project.name} (ticket #{run.ticket_id}) on {run.worker or '?'}"
        )
    click.echo(f"{len(running)} run(s) still running" if running else "nothing running: safe to stop the workers")
    if running:
        raise SystemExit(1)


@click.command("undrain")
@with_appcontext
@click.option("--queue", "queues", multiple=True, help="only this pool; repeatable (default: every pool)")
def undrain_cmd(queues: tuple[str, ...]) -> None:
    """Let the pools' workers take jobs again."""
    redis = redis_connection()
    pools = sorted(set(queues)) or known_pools(redis, current_app.config["FERRY_QUEUE"])
    set_drained(redis, pools, False)
    click.echo(f"undrained: {', '.join(pools)}")


runs_cli = AppGroup("runs", help="Inspect and replay pipeline runs.")


@runs_cli.command("list")
@click.option("--project", default="", help="only this project")
@click.option("--limit", default=20, help="how many, newest first")
def runs_list(project: str, limit: int) -> None:
    """List recent runs."""
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
    run = db.session.get(Run, run_id)
    if run is None:
        raise click.ClickException(f"run {run_id} not found")
    click.echo(
        f"run #{run.id}: {run.stage} of ticket #{run.ticket_id} ({run.project.name}) — {run.status}, rc {run.rc}"
    )
    click.echo(f"started {run.started_at} finished {run.finished_at} version {run.version or '-'}")
    click.echo(f"worker machine: {run.worker or '-'} (pool {run.project.queue})")
    for h in run.hosts:
        click.echo(f"  {h.host:<20} {h.status:<12} {h.message[:200]}")
    if run.error:
        click.echo(f"error: {run.error}")
    if run.run_dir:
        click.echo(f"run dir: {run.run_dir}")
        click.echo(f"replay by hand: {' '.join(replay_command(run))}")
    click.echo("\n".join(run.log.splitlines()[-40:]))


@runs_cli.command("replay")
@click.argument("run_id", type=int)
@click.option("--limit", default=None, help="only these hosts (comma-separated)")
def runs_replay(run_id: int, limit: str | None) -> None:
    """Replay a run from its run directory and record the result as a new run."""
    try:
        new = replay(run_id, limit)
    except LookupError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"replayed run #{run_id} as run #{new.id}: {new.status}")
    for h in new.hosts:
        click.echo(f"  {h.host:<20} {h.status:<12} {h.message[:200]}")
    if new.status != "successful":
        raise SystemExit(1)


def get_project(name: str) -> Project:
    """Return a project by name, or stop with a clean CLI error."""
    try:
        return find_project(db.session, name)
    except DomainError as e:
        raise click.ClickException(e.message) from e


@click.command("verify")
@with_appcontext
@click.argument("name")
@click.option("--checksum", is_flag=True, help="compare every file's content (slower; sees edits that kept size+mtime)")
def verify_cmd(name: str, checksum: bool) -> None:
    """Check every host against the version it should serve; exit 0 only when every host is in sync.

    Exit 1 when a host drifted or is new, 2 when a host could not be checked (unreachable).
    """
    project = get_project(name)
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
