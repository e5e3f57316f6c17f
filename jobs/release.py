"""The release stage: tag the tested snapshot, bring the release repo to it, stage and switch every host.

Rollback tickets use the same stage with an older version's tag.
"""

from __future__ import annotations

from sqlalchemy import select

from webapp import fleet, releases, tickets, workflow
from webapp.errors import Conflict
from webapp.extensions import db
from webapp.models import Project, Release, Ticket, utcnow
from webapp.projects import hook_file, inventory_path
from webapp.workflow import Kind, State

from . import runner, snapshots, verify
from .inventory import group_hosts
from .lifecycle import RunContext, ansible_envvars, execute, project_dir, run_dir_for

PLAYBOOK = "release.yml"


def release_ticket(run_id: int) -> str:
    """RQ job: release (or roll back) one approved ticket to every host of its project."""
    return execute(run_id, State.RELEASING, "release", _release, _fail)


def _plan(ticket: Ticket, project: Project) -> tuple[str, int, str] | None:
    """Decide (verdict, version, commit) for a release ticket from the live version and the tested commit."""
    live = releases.live_release(db.session, project)
    tested = ticket.tested_commit
    if ticket.version:  # a retry of a version already tagged for this ticket
        return "ship", ticket.version, tested
    git_dir = releases.snapshot_git_dir(project)
    if live is not None:
        if snapshots.is_ancestor(git_dir, tested, live.commit):
            return "contained", live.version, live.commit
        if not snapshots.is_ancestor(git_dir, live.commit, tested):
            return "refuse", live.version, live.commit
    return "ship", releases.next_version(db.session, project), tested


def _release(ctx: RunContext) -> str:
    """Do the release inside a claimed run."""
    run = ctx.run
    ticket = run.ticket
    project = ticket.project
    if not ctx.wait_for_lock(lambda holder: f"the release run #{holder} on {project.name}"):
        _fail(ctx, None, "canceled", "canceled while waiting for the release lock")
        return "canceled"
    db.session.refresh(ticket)
    if ticket.state != State.RELEASING.value:
        run.status, run.error = "canceled", f"ticket was {ticket.state} when its turn came"
        db.session.commit()
        return "canceled"

    if ticket.kind == Kind.ROLLBACK.value:
        target = releases.get_release(db.session, project, ticket.version)
        version, commit = ticket.version, target.commit
    else:
        verdict, version, commit = _plan(ticket, project)
        if verdict == "contained":
            ctx.finish(None, "successful", f"already live in version {version}")
            tickets.fire(
                db.session,
                ticket.id,
                workflow.RELEASE_SUCCEEDED,
                f"tested snapshot is already part of live version {version}; nothing shipped",
                version=version,
            )
            db.session.commit()
            return "contained"
        if verdict == "refuse":
            msg = (
                f"production runs version {version} ({commit[:10]}), which is not an ancestor of the tested "
                f"snapshot {ticket.tested_commit[:10]}; update staging and test again"
            )
            ctx.finish(None, "failed", msg)
            tickets.fire(db.session, ticket.id, workflow.RELEASE_REFUSED, msg, last_error=msg)
            db.session.commit()
            return "refused"
        ticket.version = version  # a retry reuses the version and its tag
    run.version, run.commit = version, commit
    db.session.commit()

    inventory = inventory_path(project.inventory)
    hosts = group_hosts(inventory, project.group)
    if not hosts:
        _fail(ctx, None, "failed", f"inventory {project.inventory} has no hosts in group {project.group!r}")
        return "failed"
    base = project_dir(project.name)
    run_dir = run_dir_for(run)
    runner.prepare_run_dir(
        run_dir,
        playbook=PLAYBOOK,
        inventory_file=inventory,
        extravars={
            "ferry_group": project.group,
            "version": version,
            "commit": commit,
            "snapshot_git_dir": str(base / "staging.git"),
            "release_dir": str(base / "release"),
            "mode": project.deploy_mode,
            "keep": project.keep_releases,
            "protect_versions": releases.protected_versions(db.session, project),
            "shared_paths": project.shared_paths,
            "stage_hosts": run.only_hosts,
            "live_version": project.live_version,
            "live_dir": str(base / "live"),
            "check_drift": not getattr(run, "overwrite_drift", False),
            # Re-checked here too: a stored setting older than the rule cannot name a file outside playbooks/hooks/.
            **({"hook_tasks": hook_file(project.hook_tasks)} if project.hook_tasks else {}),
        },
        envvars=ansible_envvars(),
    )
    result = runner.run_playbook(
        run_dir,
        PLAYBOOK,
        expected_hosts=hosts,
        forks=project.forks,
        timeout=project.stage_timeout,
        on_event=ctx.on_event,
        should_cancel=ctx.should_cancel,
    )
    drift = result.outputs.get("drift") or {}
    # A retry re-stages the hosts that did not stage N here (after a drift failure: every host).
    run.outputs = {**(run.outputs or {}), "staged": verify.staged_hosts(result), "drift": drift}
    verify.record_release(project, result, version, hosts)  # the fleet table (HostState)
    if result.status != "successful":
        error = fleet.drift_error(drift) or (
            (result.error or f"release {result.status}") + _switch_back_note(result, project, version, hosts)
        )
        _fail(ctx, result, result.status, error, hosts)
        return result.status
    ctx.finish(result, "successful", hosts_filter=set(hosts))
    _record_success(ticket, project, version, commit, run.started_by_id)
    db.session.commit()
    return "successful"


def _record_success(ticket: Ticket, project: Project, version: int, commit: str, user_id: int | None) -> None:
    """Record the new live version; a rollback marks the abandoned release bad and voids approvals carrying it."""
    abandoned = releases.live_release(db.session, project)
    if ticket.kind == Kind.RELEASE.value and releases.get_release(db.session, project, version) is None:
        db.session.add(
            Release(
                project_id=project.id,
                version=version,
                commit=commit,
                ticket_id=ticket.id,
                svn_revision=ticket.staging_revision,
                released_by_id=user_id,
                created_at=utcnow(),
            )
        )
    project.live_version = version
    comment = f"version {version} live on every host"
    tickets.fire(db.session, ticket.id, workflow.RELEASE_SUCCEEDED, comment, version=version, last_error="")
    if ticket.kind != Kind.ROLLBACK.value or abandoned is None or abandoned.version == version:
        return
    abandoned.bad = True
    git_dir = releases.snapshot_git_dir(project)
    waiting = db.session.scalars(
        select(Ticket).where(
            Ticket.project_id == project.id,
            Ticket.kind == Kind.RELEASE.value,
            Ticket.state.in_([State.PENDING_APPROVAL.value, State.APPROVED.value]),
        )
    )
    for other in waiting:
        if other.tested_commit and snapshots.is_ancestor(git_dir, abandoned.commit, other.tested_commit):
            tickets.fire(
                db.session,
                other.id,
                workflow.APPROVAL_VOIDED,
                f"rollback #{ticket.id} abandoned version {abandoned.version}, which this ticket carries; test again",
                approved_by_id=None,
            )


def _switch_back_note(result: runner.RunResult, project: Project, version: int, hosts: list[str]) -> str:
    """Say where the fleet stands after a run that failed once hosts already served version N.

    Rule (README "Release integrity"): whatever fails after a switch, every switched host is put back on the
    live version, so Ferry's record (the live version) equals what the hosts serve. A host that could not be
    put back is named. In-place mode's first release has nothing to go back to: N is recorded as live.
    """
    sync = result.outputs.get("sync") or {}
    live = project.live_version
    if project.deploy_mode == "inplace":
        touched = [h for h in hosts if "revert" in (sync.get(h) or {})]
        if touched and live is None:
            _record_inplace_first(project, version)
            return f"; in-place first release: nothing to go back to, version {version} is live; retry runs the hooks"
    else:
        touched = [h for h in hosts if "switch" in (sync.get(h) or {})]
    if not touched:
        return ""
    stuck = [h for h in touched if not (sync.get(h, {}).get("revert") or {}).get("reverted")]
    if not stuck:
        return f"; every host is back on version {live}" if live else "; every host serves nothing again"
    return f"; {', '.join(stuck)} could not be switched back and may still serve version {version}"


def _record_inplace_first(project: Project, version: int) -> None:
    """Record version N as live when an in-place first release synced it and a hook failed afterwards."""
    run_ticket = db.session.scalar(select(Ticket).where(Ticket.project_id == project.id, Ticket.version == version))
    if releases.get_release(db.session, project, version) is None and run_ticket is not None:
        db.session.add(
            Release(
                project_id=project.id,
                version=version,
                commit=run_ticket.tested_commit,
                ticket_id=run_ticket.id,
                svn_revision=run_ticket.staging_revision,
                created_at=utcnow(),
            )
        )
    project.live_version = version


def _fail(ctx: RunContext, result: runner.RunResult | None, status: str, error: str, hosts=None) -> None:
    """Record a failed release run and move the ticket to release_failed."""
    ctx.finish(result, status, error, hosts_filter=set(hosts) if hosts else None)
    db.session.commit()
    try:
        tickets.fire(db.session, ctx.run.ticket_id, workflow.RELEASE_FAILED, error[:500], last_error=error)
        db.session.commit()
    except Conflict:
        db.session.rollback()
