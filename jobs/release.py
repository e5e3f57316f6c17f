"""The release stage: run release.yml for a ticket (tag, drift check, stage, switch, hooks, switch back).

Only execution lives here; every decision about a release (what to ship, what the outcome means for the
record) is webapp/releases.py's. Rollback tickets use the same stage with an older version's tag.
"""

from __future__ import annotations

from pathlib import Path

from webapp import fleet, releases, stages, tickets, workflow
from webapp.errors import Conflict
from webapp.extensions import db
from webapp.projects import hook_file, inventory_path
from webapp.workflow import Kind, State

from . import runner, verify
from .inventory import group_hosts
from .lifecycle import RunContext, execute, prepare_run_dir, project_dir, run_dir_for

STAGE = stages.RELEASE
GRAY_KEPT = ("phase", "plan", "done_before", "this_run", "gated")  # what a run records of its batches
GRAY_EXTRAVARS = (
    "phase",
    "batched",
    "switch_hosts",
    "batch_sizes",
    "batch_of",
    "health",
    "health_tasks",
    "health_gate",
)


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
    gray = releases.gray_plan(db.session, ticket, run, hosts)
    run.outputs = {**(run.outputs or {}), "gray": {k: gray[k] for k in GRAY_KEPT}}
    db.session.commit()
    extravars = _extravars(run, project, version, commit, gray, hosts)
    run_dir = prepare_run_dir(run, STAGE, inventory, extravars)
    result = runner.run_playbook(
        run_dir,
        STAGE.playbook,
        # A `continue` run touches only its batch's hosts (the rest too if it has to switch back).
        expected_hosts=gray["switch_hosts"] if gray["phase"] == "continue" else hosts,
        forks=project.forks,
        timeout=project.stage_timeout,
        on_event=ctx.on_event,
        should_cancel=ctx.should_cancel,
    )
    switched_back = ""
    if result.status in ("canceled", "timeout") and gray["phase"] != "abort":
        # Stopped mid-run: some hosts may already serve N. Put every host back before saying anything.
        switched_back = _switch_back(ctx, inventory, hosts, {**extravars, "phase": "abort"})
    drift = result.outputs.get("drift") or {}
    # A retry re-stages the hosts that did not stage N here (after a drift failure: every host).
    sync = result.outputs.get("sync") or {}
    live_op = "switch" if project.deploy_mode == "atomic" else "stage"  # in-place: syncing is going live
    went_live = [h for h in gray["switch_hosts"] if live_op in (sync.get(h) or {})]
    run.outputs = {**(run.outputs or {}), "staged": verify.staged_hosts(result), "drift": drift, "went_live": went_live}
    if result.status != "successful":
        verify.record_release(project, result, version, hosts)  # the fleet table (HostState)
        note = switched_back or releases.switch_back_note(
            db.session, project, version, hosts, result.outputs.get("sync") or {}
        )
        error = fleet.drift_error(drift) or (result.error or f"release {result.status}") + note
        _fail(ctx, result, result.status, error, hosts)
        return result.status
    ctx.finish(result, "successful", hosts_filter=set(hosts))
    outcome = releases.gray_outcome(db.session, ticket, gray, run.started_by)
    if outcome == "aborted":
        live = project.live_version
        who = run.started_by.username if run.started_by else "the system"
        tickets.fire(
            db.session,
            ticket.id,
            workflow.RELEASE_FAILED,
            f"aborted by {who}: every host is back on version {live}",
            last_error=f"gray release aborted by {who}; every host is back on version {live}; retry starts over",
        )
    elif outcome == "paused":
        verify.record_release(project, result, version, gray["switch_hosts"])
        releases.pause(db.session, ticket, gray)
    else:
        verify.record_release(project, result, version, hosts)
        releases.record_success(db.session, ticket, version, commit, run.started_by_id)
    db.session.commit()
    return "successful"


def _extravars(run, project, version: int, commit: str, gray: dict, hosts: list[str]) -> dict:
    """Return release.yml's extravars for one run."""
    base = project_dir(project.name)
    return {
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
        # In place: check inside the stage task, behind a barrier that needs every host running at once.
        "check_in_stage": project.forks >= len(hosts),
        # Re-checked here too: a stored setting older than the rule cannot name a file outside playbooks/hooks/.
        **({"hook_tasks": hook_file(project.hook_tasks)} if project.hook_tasks else {}),
        **{k: gray[k] for k in GRAY_EXTRAVARS},
    }


def switch_back_job(run_id: int) -> str:
    """RQ job: after a lost release run, put every host back on the live version (the ticket stays failed)."""
    return execute(run_id, stages.SWITCH_BACK, _switch_back_run, _switch_back_failed)


def _switch_back_run(ctx: RunContext) -> str:
    """Run release.yml's switch-back for the ticket's version inside a claimed run and note it in history."""
    run, ticket = ctx.run, ctx.run.ticket
    project = ticket.project
    if not ctx.wait_for_lock(lambda holder: f"the release run #{holder} on {project.name}"):
        return "canceled"
    inventory = inventory_path(project.inventory)
    hosts = group_hosts(inventory, project.group)
    if ticket.version is None or not hosts:
        ctx.finish(None, "successful", "nothing was switched")
        db.session.commit()
        return "successful"
    run.outputs = {"phase": "abort"}
    gray = releases.gray_plan(db.session, ticket, run, hosts)
    commit = ticket.tested_commit or ""
    run_dir = prepare_run_dir(
        run, stages.SWITCH_BACK, inventory, _extravars(run, project, ticket.version, commit, gray, hosts)
    )
    result = runner.run_playbook(
        run_dir,
        stages.SWITCH_BACK.playbook,
        expected_hosts=hosts,
        forks=project.forks,
        timeout=600,
        on_event=ctx.on_event,
    )
    note = (
        f"every host is back on version {project.live_version}"
        if result.status == "successful"
        else f"switching back failed ({result.error}): check the hosts (flask verify)"
    )
    ctx.finish(result, result.status, "" if result.status == "successful" else note, hosts_filter=set(hosts))
    releases.note(db.session, ticket, "switch-back", f"after the lost run: {note}")
    db.session.commit()
    return result.status


def _switch_back_failed(ctx: RunContext, result, status: str, error: str) -> None:
    """Record a switch-back run that could not run (the ticket stays release_failed)."""
    ctx.finish(result, status, error)
    db.session.commit()


def _switch_back(ctx: RunContext, inventory, hosts: list[str], extravars: dict) -> str:
    """Run the release playbook's switch-back alone after a cancel or timeout; return a note for the error."""
    run_dir = prepare_run_dir(ctx.run, STAGE, inventory, extravars, run_dir=Path(f"{run_dir_for(ctx.run)}-switch-back"))
    ctx.log("== stopped: switching every host back to the live version ==")
    result = runner.run_playbook(run_dir, STAGE.playbook, expected_hosts=hosts, timeout=600, on_event=ctx.on_event)
    if result.status == "successful":
        return f"; every host is back on version {extravars['live_version']}"
    return f"; switching back failed ({result.error}): check the hosts (flask verify)"


def _fail(ctx: RunContext, result: runner.RunResult | None, status: str, error: str, hosts=None) -> None:
    """Record a failed release run and move the ticket to release_failed."""
    ctx.finish(result, status, error, hosts_filter=set(hosts) if hosts else None)
    db.session.commit()
    try:
        tickets.fire(db.session, ctx.run.ticket_id, workflow.RELEASE_FAILED, error[:500], last_error=error)
        db.session.commit()
    except Conflict:
        db.session.rollback()
