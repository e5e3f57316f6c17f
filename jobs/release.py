"""The release stage: run release.yml for a ticket (tag, drift check, stage, switch, hooks, switch back).

Only execution lives here; every decision about a release (what to ship, what the outcome means for the
record) is webapp/releases.py's. Rollback tickets use the same stage with an older version's tag.
"""

from __future__ import annotations

from webapp import fleet, releases, stages, tickets, workflow
from webapp.errors import Conflict
from webapp.extensions import db
from webapp.projects import hook_file, inventory_path
from webapp.workflow import Kind, State

from . import runner, verify
from .inventory import group_hosts
from .lifecycle import RunContext, execute, prepare_run_dir, project_dir

STAGE = stages.RELEASE


def release_ticket(run_id: int) -> str:
    """RQ job: release (or roll back) one approved ticket to every host of its project."""
    return execute(run_id, STAGE, _release, _fail)


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

    plan = releases.plan(db.session, ticket)
    if plan.verdict != "ship":
        # Nothing to ship: already live (success) or production moved past the tested tree (refused).
        ctx.finish(None, "successful" if plan.verdict == "contained" else "failed", plan.message)
        releases.settle_without_shipping(db.session, ticket, plan)
        db.session.commit()
        return plan.verdict
    version, commit = plan.version, plan.commit
    if ticket.kind == Kind.RELEASE.value:
        ticket.version = version  # a retry reuses the version and its tag
    run.version, run.commit = version, commit
    db.session.commit()

    inventory = inventory_path(project.inventory)
    hosts = group_hosts(inventory, project.group)
    if not hosts:
        _fail(ctx, None, "failed", f"inventory {project.inventory} has no hosts in group {project.group!r}")
        return "failed"
    base = project_dir(project.name)
    run_dir = prepare_run_dir(
        run,
        STAGE,
        inventory,
        {
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
    )
    result = runner.run_playbook(
        run_dir,
        STAGE.playbook,
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
        note = releases.switch_back_note(db.session, project, version, hosts, result.outputs.get("sync") or {})
        error = fleet.drift_error(drift) or (result.error or f"release {result.status}") + note
        _fail(ctx, result, result.status, error, hosts)
        return result.status
    ctx.finish(result, "successful", hosts_filter=set(hosts))
    releases.record_success(db.session, ticket, version, commit, run.started_by_id)
    db.session.commit()
    return "successful"


def _fail(ctx: RunContext, result: runner.RunResult | None, status: str, error: str, hosts=None) -> None:
    """Record a failed release run and move the ticket to release_failed."""
    ctx.finish(result, status, error, hosts_filter=set(hosts) if hosts else None)
    db.session.commit()
    try:
        tickets.fire(db.session, ctx.run.ticket_id, workflow.RELEASE_FAILED, error[:500], last_error=error)
        db.session.commit()
    except Conflict:
        db.session.rollback()
