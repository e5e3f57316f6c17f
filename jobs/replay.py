"""Replaying a finished run by hand (ops): same playbook, inventory and extravars, recorded as a new run."""

from __future__ import annotations

import shutil
from pathlib import Path

from webapp.extensions import db
from webapp.models import Run, TicketEvent, utcnow
from webapp.stages import stage

from . import runner
from .inventory import group_hosts
from .lifecycle import RunContext, run_dir_for, this_machine


def replay(run_id: int, limit: str | None = None, user_id: int | None = None) -> Run:
    """Run a recorded run's directory again (optionally limited to some hosts) and record a new run."""
    original = db.session.get(Run, run_id)
    if original is None:
        raise LookupError(f"run {run_id} not found")
    if original.worker and original.worker != this_machine():
        raise LookupError(
            f"run {run_id} ran on {original.worker}: its run directory is there, replay it on that machine"
        )
    if not original.run_dir or not Path(original.run_dir).is_dir():
        raise LookupError(f"run {run_id} has no run directory left (pruned or never started)")
    new = Run(
        ticket_id=original.ticket_id,
        project_id=original.project_id,
        stage=original.stage,
        started_by_id=user_id,
        version=original.version,
        commit=original.commit,
        status="queued",
    )
    db.session.add(new)
    db.session.commit()
    target = run_dir_for(new)
    for part in ("env", "inventory", "project"):
        shutil.copytree(Path(original.run_dir) / part, target / part, symlinks=True)
    (target / "env" / "cmdline").unlink(missing_ok=True)  # forks/limit are written afresh below
    project = original.project
    definition = stage(original.stage)
    playbook = definition.playbook
    expected = ["localhost"]
    if definition.per_host:
        expected = group_hosts(target / "inventory" / "hosts", project.group)
        if limit:
            wanted = set(limit.split(","))
            expected = [h for h in expected if h in wanted]
    with RunContext(new, definition.lane) as ctx:
        ctx.wait_for_lock(lambda holder: f"run #{holder}")
        result = runner.run_playbook(
            target,
            playbook,
            expected_hosts=expected,
            limit=limit,
            forks=project.forks,
            timeout=project.stage_timeout,
            on_event=ctx.on_event,
            should_cancel=ctx.should_cancel,
        )
        ctx.finish(result, result.status, result.error, hosts_filter=set(expected) - {"localhost"} or None)
        state = new.ticket.state
        db.session.add(
            TicketEvent(
                ticket_id=new.ticket_id,
                action="replay",
                from_state=state,
                to_state=state,
                comment=f"ops replayed run #{run_id} as run #{new.id}{f' (limit {limit})' if limit else ''}: "
                f"{result.status}",
                at=utcnow(),
            )
        )
        db.session.commit()
    return new
