"""Every decision about releases: what to ship, what an outcome means for the record, rollbacks, previews.

The release job (jobs/release.py) only executes; it asks this module what to ship (`plan`) and hands the
outcome back (`record_success`, `switch_back_note`, `settle_without_shipping`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import batches, notify, snapshots, tickets, validation, workflow
from .errors import BadInput, Conflict, Forbidden, NotFound
from .models import Project, Release, Run, Ticket, TicketEvent, User, utcnow
from .stages import RELEASE, STAGING
from .workflow import Kind, State


def snapshot_git_dir(project: Project) -> Path:
    """Return the project's staging snapshot repository."""
    return Path(current_app.config["FERRY_DATA_DIR"]) / "projects" / project.name / "staging.git"


def get_release(session: Session, project: Project, version: int | None) -> Release | None:
    """Return one version of a project, or None."""
    if version is None:
        return None
    return session.scalar(select(Release).where(Release.project_id == project.id, Release.version == version))


def live_release(session: Session, project: Project) -> Release | None:
    """Return the version production runs now."""
    return get_release(session, project, project.live_version)


def next_version(session: Session, project: Project) -> int:
    """Return the next integer version: above every release and every version a release ticket reserved."""
    released = session.scalar(select(func.max(Release.version)).where(Release.project_id == project.id)) or 0
    reserved = session.scalar(
        select(func.max(Ticket.version)).where(Ticket.project_id == project.id, Ticket.kind == Kind.RELEASE.value)
    )
    return max(released, reserved or 0) + 1


def history(session: Session, project: Project) -> list[Release]:
    """Return a project's versions, newest first."""
    return list(
        session.scalars(select(Release).where(Release.project_id == project.id).order_by(Release.version.desc()))
    )


def protected_versions(session: Session, project: Project) -> list[int]:
    """Return versions that pruning must keep: targets of rollbacks not yet done."""
    open_states = [s.value for s in State if s not in workflow.TERMINAL]
    rows = session.scalars(
        select(Ticket.version).where(
            Ticket.project_id == project.id, Ticket.kind == Kind.ROLLBACK.value, Ticket.state.in_(open_states)
        )
    )
    return sorted(v for v in rows if v is not None)


def create_rollback(session: Session, project_name: object, user: User, version: object, reason: object) -> Ticket:
    """File a rollback ticket to an earlier version; it starts waiting for approval."""
    if not isinstance(project_name, str) or not project_name:
        raise BadInput("project: required", "project")
    project = session.scalar(select(Project).where(Project.name == project_name))
    if project is None or not tickets.can_see(user, project):
        raise NotFound("project %(name)r not found", "project", name=project_name)
    if not user.is_admin and user.role_in(project) is None:
        raise Forbidden("you are not a member of this project")
    version = validation.integer(version, "version", minimum=1)  # the API passes ints only, forms digits
    target = get_release(session, project, version)
    if target is None:
        raise NotFound("version %(version)s of %(project)s not found", "version", version=version, project=project.name)
    if version == project.live_version:
        raise Conflict("version %(version)s is already live", version=version)
    ticket = Ticket(
        project=project,
        kind=Kind.ROLLBACK.value,
        state=State.PENDING_APPROVAL.value,
        reason=validation.reason(reason),
        svn_paths=[],
        version=version,
        tested_commit=target.commit,
        staging_revision=target.svn_revision,
        author=user,
    )
    session.add(ticket)
    session.flush()
    session.add(
        TicketEvent(
            ticket_id=ticket.id,
            action="request-rollback",
            to_state=ticket.state,
            user_id=user.id,
            comment=f"roll back to version {version}",
        )
    )
    session.flush()
    notify.on_transition(
        session, ticket, "request-rollback", None, ticket.state, user, f"roll back to version {version}"
    )
    return ticket


def ship_target(ticket: Ticket) -> str | None:
    """Return the snapshot releasing `ticket` would ship: the tested one, else what staging serves now."""
    if ticket.tested_commit:
        return ticket.tested_commit
    return ticket.project.staging_commit or ticket.staging_commit


def preview(session: Session, ticket: Ticket) -> dict:
    """Describe what releasing `ticket` would change against the live version.

    files: the exact difference between the live tree and the tree that will ship (empty directories too);
    diffs: text diffs of those files (capped); included_tickets: other tickets whose staging snapshots
    (successful or failed half-way) ride along; unversioned: files staging shows that are not versioned
    and will not ship; staging_moved_on: whether staging now serves a newer snapshot than the tested one.
    """
    project = ticket.project
    target = ship_target(ticket)
    empty = {
        "base_version": project.live_version,
        "target": target,
        "files": [],
        "diffs": [],
        "included_tickets": [],
        "unversioned": [],
        "staging_commit": project.staging_commit,
        "staging_moved_on": False,
    }
    if not target:
        return empty
    live = live_release(session, project)
    git_dir = snapshot_git_dir(project)
    base = live.commit if live else None
    included = []
    if ticket.kind == Kind.RELEASE.value:
        commits = set(snapshots.commits_between(git_dir, base, target))
        runs = session.scalars(
            select(Run).where(
                Run.project_id == project.id,
                Run.stage == STAGING.name,
                Run.commit.is_not(None),
                Run.ticket_id != ticket.id,
            )
        )
        # A ticket rides along when any of its staging snapshots (a failed run's too) is in the range.
        seen: set[int] = set()
        for run in runs:
            if run.commit in commits and run.ticket_id not in seen:
                seen.add(run.ticket_id)
                other = run.ticket
                included.append({"id": other.id, "state": other.state, "reason": other.reason})
        included.sort(key=lambda t: t["id"])
    snapshot_run = session.scalar(
        select(Run)
        .where(Run.project_id == project.id, Run.stage == STAGING.name, Run.commit == target)
        .order_by(Run.id)
    )
    outputs = (snapshot_run.outputs or {}) if snapshot_run else {}
    return {
        **empty,
        "files": snapshots.changed_files(git_dir, base, target),
        "diffs": snapshots.text_diffs(git_dir, base, target),
        "included_tickets": included,
        "unversioned": list(outputs.get("unversioned") or []),
        "staging_moved_on": bool(ticket.tested_commit and project.staging_commit not in (None, ticket.tested_commit)),
    }


@dataclass(frozen=True)
class Plan:
    """What a release run should do: ship `version` (= `commit`), or nothing (contained / refuse)."""

    verdict: str  # "ship" | "contained" | "refuse"
    version: int
    commit: str
    message: str = ""


def plan(session: Session, ticket: Ticket) -> Plan:
    """Decide what releasing `ticket` ships, from the live version and the tested commit (never backwards)."""
    project = ticket.project
    if ticket.kind == Kind.ROLLBACK.value:
        return Plan("ship", ticket.version, get_release(session, project, ticket.version).commit)
    live = live_release(session, project)
    tested = ticket.tested_commit
    if ticket.version:  # a retry of a version already tagged for this ticket
        return Plan("ship", ticket.version, tested)
    git_dir = snapshot_git_dir(project)
    if live is not None:
        if snapshots.is_ancestor(git_dir, tested, live.commit):
            return Plan("contained", live.version, live.commit, f"already live in version {live.version}")
        if not snapshots.is_ancestor(git_dir, live.commit, tested):
            return Plan(
                "refuse",
                live.version,
                live.commit,
                f"production runs version {live.version} ({live.commit[:10]}), which is not an ancestor of the "
                f"tested snapshot {tested[:10]}; update staging and test again",
            )
    return Plan("ship", next_version(session, project), tested)


def settle_without_shipping(session: Session, ticket: Ticket, plan: Plan) -> None:
    """Close a release that ships nothing: contained in the live version (released), or refused (testing)."""
    if plan.verdict == "contained":
        comment = f"tested snapshot is already part of live version {plan.version}; nothing shipped"
        tickets.fire(session, ticket.id, workflow.RELEASE_SUCCEEDED, comment, version=plan.version)
    else:
        tickets.fire(session, ticket.id, workflow.RELEASE_REFUSED, plan.message, last_error=plan.message)


def record_success(session: Session, ticket: Ticket, version: int, commit: str, user_id: int | None) -> None:
    """Record the new live version; a rollback marks the abandoned release bad and voids approvals carrying it."""
    project = ticket.project
    abandoned = live_release(session, project)
    if ticket.kind == Kind.RELEASE.value and get_release(session, project, version) is None:
        session.add(
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
    tickets.fire(session, ticket.id, workflow.RELEASE_SUCCEEDED, comment, version=version, last_error="")
    if ticket.kind != Kind.ROLLBACK.value or abandoned is None or abandoned.version == version:
        return
    abandoned.bad = True
    git_dir = snapshot_git_dir(project)
    waiting = session.scalars(
        select(Ticket).where(
            Ticket.project_id == project.id,
            Ticket.kind == Kind.RELEASE.value,
            Ticket.state.in_([State.PENDING_APPROVAL.value, State.APPROVED.value]),
        )
    )
    for other in waiting:
        if other.tested_commit and snapshots.is_ancestor(git_dir, abandoned.commit, other.tested_commit):
            tickets.fire(
                session,
                other.id,
                workflow.APPROVAL_VOIDED,
                f"rollback #{ticket.id} abandoned version {abandoned.version}, which this ticket carries; test again",
                approved_by_id=None,
            )


def switch_back_note(session: Session, project: Project, version: int, hosts: list[str], sync: dict) -> str:
    """Say where the fleet stands after a run that failed once hosts already served version N.

    The rule (README "Release integrity"): whatever fails after a switch, every switched host is put back on
    the live version, so Ferry's record (the live version) equals what the hosts serve; a host that could not
    be put back is named. `sync` is the run's per-host ferry_sync results. In-place mode's first release has
    nothing to go back to: N is recorded as live.
    """
    live = project.live_version
    if project.deploy_mode == "inplace":
        touched = [h for h in hosts if "revert" in (sync.get(h) or {})]
        if touched and live is None:
            _record_inplace_first(session, project, version)
            return f"; in-place first release: nothing to go back to, version {version} is live; retry runs the hooks"
    else:
        touched = [h for h in hosts if "switch" in (sync.get(h) or {})]
    if not touched:
        return ""
    stuck = [h for h in touched if not (sync.get(h, {}).get("revert") or {}).get("reverted")]
    if not stuck:
        return f"; every host is back on version {live}" if live else "; every host serves nothing again"
    return f"; {', '.join(stuck)} could not be switched back and may still serve version {version}"


def _record_inplace_first(session: Session, project: Project, version: int) -> None:
    """Record version N as live when an in-place first release synced it and a hook failed afterwards."""
    ticket = session.scalar(select(Ticket).where(Ticket.project_id == project.id, Ticket.version == version))
    if get_release(session, project, version) is None and ticket is not None:
        session.add(
            Release(
                project_id=project.id,
                version=version,
                commit=ticket.tested_commit,
                ticket_id=ticket.id,
                svn_revision=ticket.staging_revision,
                created_at=utcnow(),
            )
        )
    project.live_version = version


def gray_plan(session: Session, ticket: Ticket, run: Run, hosts: list[str]) -> dict:
    """Decide which hosts this release run switches, in which batches, and with which health gate.

    Release tickets follow the project's batch spec; a rollback switches every host at once (speed matters
    most then) and its health check is reported, not enforced. `manual` pauses after each healthy batch:
    each run switches one batch, `continue` queues the next. `phase` is the run's: full, continue or abort.
    """
    project = ticket.project
    phase = (run.outputs or {}).get("phase", "full")
    rollback = ticket.kind == Kind.ROLLBACK.value
    plan = [hosts] if rollback else batches.plan(project.batches, hosts)
    done = 0
    if phase != "full":
        previous = [
            r for r in ticket.runs if r.stage == RELEASE.name and r.id != run.id and (r.outputs or {}).get("gray")
        ]
        if previous:
            gray = previous[-1].outputs["gray"]
            plan, done = gray["plan"], gray["done_before"] + len(gray["this_run"])
    gated = bool(project.health_url or project.health_playbook)
    manual = project.batch_pause == "manual" and not rollback
    this = list(range(done, min(done + 1, len(plan)) if manual else len(plan))) if phase != "abort" else []
    switch_hosts = [h for i in this for h in plan[i]]
    return {
        "phase": phase,
        "plan": plan,
        "done_before": done,
        "this_run": this,
        "batched": len(plan) > 1 or gated or phase != "full",
        "switch_hosts": switch_hosts,
        "batch_sizes": [len(plan[i]) for i in this] or [1],
        "batch_of": {h: i + 1 for i in this for h in plan[i]},
        "health": {
            "url": project.health_url,
            "expect": project.health_expect or "2xx",
            "body": project.health_body,
            "retries": project.health_retries,
            "interval": project.health_interval,
        },
        "health_tasks": project.health_playbook,
        "health_gate": not rollback,
        "gated": gated,
    }


def gray_outcome(session: Session, ticket: Ticket, gray: dict, user: User | None) -> str:
    """Tell what a successful gray run means: "aborted", "paused" (more batches wait) or "done"."""
    if gray["phase"] == "abort":
        return "aborted"
    if gray["done_before"] + len(gray["this_run"]) < len(gray["plan"]):
        return "paused"
    return "done"


def pause(session: Session, ticket: Ticket, gray: dict) -> None:
    """Record a healthy batch of a manual gray release: the ticket waits for continue or abort."""
    n = gray["done_before"] + len(gray["this_run"])
    hosts = ", ".join(h for i in gray["this_run"] for h in gray["plan"][i])
    comment = f"batch {n} of {len(gray['plan'])} switched and healthy ({hosts}); continue or abort"
    tickets.fire(session, ticket.id, workflow.RELEASE_PAUSE, comment, last_error="")


def batches_json(ticket: Ticket, progress: dict | None = None) -> list[dict]:
    """Return the ticket's batches: [{n, hosts, status: pending|switched|healthy|failed|reverted}].

    From the newest release run with a gray plan; while it runs, `progress` ({host: {status, task}} from the
    live progress hash) moves its batches along.
    """
    runs = [r for r in ticket.runs if r.stage == RELEASE.name and (r.outputs or {}).get("gray")]
    if not runs:
        return []
    run = runs[-1]
    gray = run.outputs["gray"]
    plan, before, this = gray["plan"], gray["done_before"], set(gray["this_run"])
    failed = {h.host for h in run.hosts if h.status in ("failed", "unreachable")}
    gated = bool(gray.get("gated"))
    out = []
    for i, hosts in enumerate(plan):
        status = "healthy" if i < before else "pending"
        if gray["phase"] == "abort" and i < before:
            status = "reverted" if run.status == "successful" else "healthy"
        elif i in this:
            if run.status in ("queued", "running"):
                tasks = [(progress or {}).get(h) or {} for h in hosts]
                if any(t.get("status") == "failed" for t in tasks):
                    status = "failed"
                elif any("back" in (t.get("task") or "") for t in tasks):
                    status = "reverted"
                elif all("Health" in (t.get("task") or "") and t.get("status") == "ok" for t in tasks):
                    status = "healthy"
                elif any(t.get("task") for t in tasks):
                    status = "switched"
            elif run.status == "successful":
                status = "healthy" if gated else "switched"
            else:
                live = set((run.outputs or {}).get("went_live") or [])
                status = "failed" if failed & set(hosts) else "reverted" if live & set(hosts) else "pending"
        out.append({"n": i + 1, "hosts": hosts, "status": status})
    if run.status not in ("queued", "running", "successful"):
        # A failed run switched everything back: batches that had gone live before it are back on the old version.
        out = [{**b, "status": "reverted"} if b["status"] == "healthy" else b for b in out]
    return out


def note(session: Session, ticket: Ticket, action: str, comment: str) -> None:
    """Add a history line that changes no state (e.g. a switch-back after a lost run); append it to the error."""
    session.add(
        TicketEvent(ticket_id=ticket.id, action=action, from_state=ticket.state, to_state=ticket.state, comment=comment)
    )
    if ticket.last_error:
        ticket.last_error = f"{ticket.last_error}; {comment}"
