"""The staging stage: svn update of the ticket's paths, then a snapshot commit of the staging tree."""

from __future__ import annotations

import re

from webapp import stages, tickets, workflow
from webapp.errors import Conflict
from webapp.extensions import db

from . import runner
from .lifecycle import RunContext, execute, prepare_run_dir, project_dir

STAGE = stages.STAGING
# What a staging run keeps from its snapshot report (the changed list and counts, files not shipped).
SNAPSHOT_OUTPUTS = ("svn_revision", "changed", "changed_count", "unversioned", "unversioned_count")


def _untemplatable(text: str) -> str:
    """Return user text fit for a commit subject: braces replaced, control characters dropped."""
    # Ansible templates extravars: a reason holding "{{ lookup('pipe', ...) }}" would run on the worker.
    # A NUL or an ANSI escape must not reach git (a NUL made the snapshot fail after svn had updated).
    return re.sub(r"[\x00-\x1f\x7f-\x9f]+", " ", text.replace("{", "(").replace("}", ")"))


def update_staging(run_id: int) -> str:
    """RQ job: update the project's staging working copy for one ticket and snapshot it."""
    return execute(run_id, STAGE, _update, _fail)


def _update(ctx: RunContext) -> str:
    """Do the staging update inside a claimed run."""
    run = ctx.run
    ticket = run.ticket
    project = ticket.project
    if not ctx.wait_for_lock(lambda holder: f"the staging update of run #{holder} on {project.name}"):
        _fail(ctx, None, "canceled", "canceled while waiting for the staging lock")
        return "canceled"
    try:
        tickets.fire(db.session, ticket.id, workflow.STAGING_STARTED)
    except Conflict:
        run.status, run.error = "canceled", f"ticket was {ticket.state} when its turn came"
        db.session.commit()
        return "canceled"
    db.session.commit()
    run_dir = prepare_run_dir(
        run,
        STAGE,
        None,
        {
            "svn_url": project.svn_url,
            "staging_dir": project.staging_dir,
            "snapshot_git_dir": str(project_dir(project.name) / "staging.git"),
            "svn_paths": ticket.svn_paths,
            "svn_revision": ticket.svn_revision,
            "commit_message": f"ticket #{ticket.id} run #{run.id}: {_untemplatable(ticket.reason[:200])}",
        },
    )
    result = runner.run_playbook(
        run_dir,
        STAGE.playbook,
        expected_hosts=["localhost"],
        timeout=project.stage_timeout,
        on_event=ctx.on_event,
        should_cancel=ctx.should_cancel,
    )
    snapshot = result.outputs.get("commit")
    if snapshot:
        # Success or not, staging now serves this snapshot: the project's staging head follows it, so
        # "test passed" and the next ticket's "carries" list see exactly what testers can see.
        run.commit = snapshot
        run.outputs = {k: result.outputs[k] for k in SNAPSHOT_OUTPUTS if k in result.outputs}
        project.staging_commit = snapshot
    if result.status != "successful":
        _fail(ctx, result, result.status, result.error or f"staging update {result.status}")
        return result.status
    ctx.finish(result, "successful")
    tickets.fire(
        db.session,
        ticket.id,
        workflow.STAGING_SUCCEEDED,
        f"staging at r{result.outputs.get('svn_revision')}, snapshot {str(snapshot)[:10]}",
        staging_commit=snapshot,
        staging_revision=result.outputs.get("svn_revision"),
        last_error="",
    )
    db.session.commit()
    return "successful"


def _fail(ctx: RunContext, result: runner.RunResult | None, status: str, error: str) -> None:
    """Record a failed staging run and move the ticket to staging_failed."""
    ctx.finish(result, status, error)
    db.session.commit()
    try:
        tickets.fire(db.session, ctx.run.ticket_id, workflow.STAGING_FAILED, error[:500], last_error=error)
        db.session.commit()
    except Conflict:
        db.session.rollback()  # the ticket already left staging_updating (e.g. the reconciler got there first)
