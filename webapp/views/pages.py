"""Server-rendered pages for developers and leads."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user, login_required
from sqlalchemy import select

from .. import fleet, listing, notify, releases, runs, tickets, workflow
from ..dispatch import dispatch
from ..extensions import db
from ..i18n import label
from ..models import Project
from ..releases import batches_json
from ..runs import progress
from ..serialize import CHANGE_STATES, fleet_json, last_run
from ..workflow import Kind, State

bp = Blueprint("pages", __name__)


def _live_progress(ticket) -> dict | None:
    """Return the live per-host progress of the ticket's running release run, if one runs."""
    run = last_run(ticket, "release")
    return progress(run) if run is not None and run.status in ("queued", "running") else None


ACTION_LABELS = {
    workflow.RETURN: (_l("Return for changes"), "warning"),
    workflow.RESUBMIT: (_l("Resubmit"), "primary"),
    workflow.TEST_PASSED: (_l("Test passed"), "success"),
    workflow.APPROVE: (_l("Approve"), "success"),
    workflow.REJECT: (_l("Reject"), "danger"),
    workflow.RELEASE: (_l("Release"), "primary"),
    workflow.RETRY: (_l("Retry failed hosts"), "primary"),
    workflow.CONTINUE: (_l("Continue: next batch"), "primary"),
    workflow.ABORT: (_l("Abort: every host back"), "danger"),
    workflow.CANCEL: (_l("Cancel ticket"), "outline-secondary"),
}


def visible_projects() -> list[Project]:
    """Return the projects the current user may see, by name."""
    query = listing.visible_only(select(Project), Project.id, current_user).order_by(Project.name)
    return list(db.session.scalars(query))


def visible_project_names() -> list[str]:
    """Return the names of the projects the current user may see, in order (the ticket list's filter)."""
    return list(
        db.session.scalars(listing.visible_only(select(Project.name), Project.id, current_user).order_by(Project.name))
    )


@bp.get("/")
@login_required
def index():
    """Send users to the ticket list."""
    return redirect(url_for("pages.ticket_list"))


@bp.get("/tickets")
@login_required
def ticket_list():
    """List tickets a page at a time, newest first, filtered; `waiting=me` shows a lead's approvals."""
    filters = listing.ticket_filters(request.args)
    waiting = request.args.get("waiting") == "me"
    if waiting:
        filters.waiting_for = current_user
    row_type = listing.TicketBrief if waiting else listing.TicketRow  # briefs: their allowed actions
    page = listing.ticket_rows_page(
        db.session,
        row_type,
        current_user,
        filters,
        listing.page_size(request.args.get("limit")),
        after=listing.decode_cursor(request.args.get("cursor")),
        before=listing.decode_cursor(request.args.get("before"), "before"),
    )
    rows = page.items
    if waiting:
        rows = [b.row() for b in rows if workflow.APPROVE in tickets.brief_actions(b, current_user)]
    keep = {**filters.query_args(), **({"waiting": "me"} if waiting else {})}
    if request.args.get("limit"):
        keep["limit"] = request.args["limit"]
    return render_template(
        "tickets.html",
        tickets=rows,
        project_names=visible_project_names(),
        states=list(State),
        kinds=list(Kind),
        filters=filters,
        project=filters.project,
        state=filters.state,
        waiting=waiting,
        next_url=url_for("pages.ticket_list", cursor=page.next, **keep) if page.next else None,
        previous_url=url_for("pages.ticket_list", before=page.previous, **keep) if page.previous else None,
    )


@bp.route("/tickets/new", methods=["GET", "POST"])
@login_required
def new_ticket():
    """Show and handle the form that files a release ticket."""
    projects = visible_projects()
    if request.method == "POST":
        form = request.form
        ticket, run = tickets.create_ticket(
            db.session,
            form.get("project"),
            current_user,
            form.get("reason"),
            form.get("svn_paths", ""),
            form.get("svn_revision"),
        )
        db.session.commit()
        dispatch(run)
        flash(_("Ticket #%(id)s filed; staging update queued.", id=ticket.id), "success")
        return redirect(url_for("pages.ticket_detail", ticket_id=ticket.id), code=303)
    return render_template("ticket_new.html", projects=projects, selected=request.args.get("project", ""))


@bp.get("/tickets/<int:ticket_id>")
@login_required
def ticket_detail(ticket_id: int):
    """Show a ticket: state, buttons allowed now, staging URL, hosts, log and history."""
    ticket = tickets.get_ticket(db.session, ticket_id, current_user)
    actions = tickets.allowed_actions(ticket, current_user)
    run = last_run(ticket)
    return render_template(
        "ticket.html",
        ticket=ticket,
        actions=actions,
        labels=ACTION_LABELS,
        run=run,
        can_cancel=run is not None and runs.can_cancel(run, current_user),
        release_run=last_run(ticket, "release"),
        batches=batches_json(ticket, _live_progress(ticket)),
        editable=State(ticket.state) in workflow.EDITABLE,
        changes=releases.preview(db.session, ticket) if ticket.state in CHANGE_STATES else None,
        drift=tickets.last_drift(ticket) if workflow.RETRY in actions else {},
        deliveries=[notify.delivery_json(d) for d in notify.ticket_deliveries(db.session, ticket)],
    )


@bp.post("/tickets/<int:ticket_id>/<action>")
@login_required
def ticket_action(ticket_id: int, action: str):
    """Fire one action from a ticket page form."""
    if action not in workflow.USER_ACTIONS:
        abort(404)
    ticket = tickets.get_ticket(db.session, ticket_id, current_user)
    tickets.check_expected_state(ticket, request.form.get("expected_state"))
    fields = ("comment", "reason", "svn_paths", "svn_revision", "overwrite_drift")
    data = {k: v for k, v in request.form.items() if k in fields}
    run = tickets.act(db.session, ticket, current_user, action, data)
    db.session.commit()
    dispatch(run)
    flash(
        _(
            "%(action)s: ticket #%(id)s is now %(state)s.",
            action=ACTION_LABELS[action][0],
            id=ticket.id,
            state=label(ticket.state),
        ),
        "success",
    )
    return redirect(url_for("pages.ticket_detail", ticket_id=ticket.id), code=303)


@bp.get("/projects")
@login_required
def project_list():
    """List the projects the user can see."""
    return render_template("projects.html", projects=visible_projects())


@bp.get("/projects/<name>")
@login_required
def project_detail(name: str):
    """Show a project's settings and release history."""
    project = db.session.scalar(select(Project).where(Project.name == name))
    if project is None or not tickets.can_see(current_user, project):
        abort(404)
    return render_template(
        "project.html",
        project=project,
        releases=releases.history(db.session, project),
        can_rollback=current_user.is_admin or current_user.role_in(project) is not None,
        fleet=fleet_json(project),
        can_verify=fleet.can_verify(current_user, project),
        can_notify=notify.can_manage(current_user, project),
        channels=[notify.channel_json(db.session, c) for c in notify.project_channels(db.session, project)],
        notify_kinds=notify.KINDS,
        notify_events=notify.EVENTS,
    )


@bp.post("/projects/<name>/verify")
@login_required
def verify_hosts(name: str):
    """Queue a verify of every host of the project (leads and admins)."""
    project = db.session.scalar(select(Project).where(Project.name == name))
    if project is None or not tickets.can_see(current_user, project):
        abort(404)
    if not fleet.can_verify(current_user, project):
        abort(403)
    queued = fleet.request_verify(project)
    flash(
        _("Verify queued: reload to see the result.") if queued else _("A verify is already queued or running."), "info"
    )
    return redirect(url_for("pages.project_detail", name=project.name), code=303)


@bp.post("/projects/<name>/rollback")
@login_required
def request_rollback(name: str):
    """File a rollback ticket from the release history."""
    ticket = releases.create_rollback(
        db.session, name, current_user, request.form.get("version"), request.form.get("reason")
    )
    db.session.commit()
    flash(
        _(
            "Rollback ticket #%(id)s to version %(version)s filed; a lead must approve it.",
            id=ticket.id,
            version=ticket.version,
        ),
        "success",
    )
    return redirect(url_for("pages.ticket_detail", ticket_id=ticket.id), code=303)
