"""The JSON API: the same services as the pages, authenticated with bearer tokens."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request
from sqlalchemy import select

from .. import fleet, listing, projects, releases, runs, tickets, validation, workflow
from ..api_input import (
    LogQuery,
    NewRollback,
    NewTicket,
    NoBody,
    PageQuery,
    RunsQuery,
    TicketAction,
    TicketQuery,
    VerifyHosts,
    body,
    check_action_fields,
)
from ..auth import token_required
from ..dispatch import dispatch
from ..errors import error_response
from ..extensions import db
from ..models import Project
from ..openapi import documented
from ..serialize import (
    FleetJson,
    ProjectJson,
    ReleasePage,
    RunJson,
    RunLogJson,
    RunPage,
    TicketJson,
    TicketPage,
    fleet_json,
    project_json,
    release_json,
    replay_command,
    run_json,
    ticket_json,
    tickets_brief_json,
)

bp = Blueprint("api", __name__, url_prefix="/api")

ACTION_SCHEMA = {"type": "string", "enum": list(workflow.USER_ACTIONS)}
NAME_SCHEMA = {"type": "string", "examples": ["demo"]}
PROJECT_LINKS = {
    op: {"operationId": op, "parameters": {"name": "$response.body#/0/name"}}
    for op in ("project_releases", "project_hosts", "verify_hosts")
}
# Stateful links for clients and schemathesis: a filed ticket leads to itself, its actions and its first run.
TICKET_LINKS = {
    "GetTicket": {"operationId": "get_ticket", "parameters": {"ticket_id": "$response.body#/id"}},
    "ActOnTicket": {"operationId": "ticket_action", "parameters": {"ticket_id": "$response.body#/id"}},
    "GetRun": {"operationId": "get_run", "parameters": {"run_id": "$response.body#/last_run/id"}},
    "CancelRun": {"operationId": "cancel_run", "parameters": {"run_id": "$response.body#/last_run/id"}},
}


@bp.get("/projects")
@documented({200: list[ProjectJson]}, links=PROJECT_LINKS)
@token_required
def list_projects():
    """List the projects the caller can see."""
    projects = db.session.scalars(select(Project).order_by(Project.name)).all()
    return jsonify([project_json(p) for p in projects if tickets.can_see(g.api_user, p)])


@bp.post("/tickets")
@documented({201: TicketJson}, (403, 404), body=NewTicket, links=TICKET_LINKS)
@token_required
def create_ticket():
    """File a release ticket."""
    data = body(NewTicket)
    ticket, run = tickets.create_ticket(
        db.session, data.get("project"), g.api_user, data.get("reason"), data.get("svn_paths"), data.get("svn_revision")
    )
    db.session.commit()
    dispatch(run)
    return jsonify(ticket_json(ticket, g.api_user)), 201


@bp.get("/tickets")
@documented({200: TicketPage}, (400,), query=TicketQuery)
@token_required
def list_tickets():
    """List tickets newest first, a page at a time (`limit`, `cursor`), filtered by project, state, author, kind, q."""
    filters = listing.ticket_filters(request.args)
    page = listing.ticket_rows_page(
        db.session, listing.TicketBrief, g.api_user, filters, listing.page_size(request.args.get("limit")), _cursor()
    )
    return jsonify(items=tickets_brief_json(db.session, page.items, g.api_user), next=page.next)


def _cursor() -> int | None:
    """Return the row key of `?cursor=` (400 naming `cursor` when it is not one this API gave out)."""
    return listing.decode_cursor(request.args.get("cursor"))


def _page_json(page: listing.Page, to_json):
    """Answer one page of a list: `{"items": [...], "next": cursor or null}`."""
    return jsonify(items=[to_json(row) for row in page.items], next=page.next)


@bp.get("/tickets/<int:ticket_id>")
@documented({200: TicketJson}, (404,))
@token_required
def get_ticket(ticket_id: int):
    """Return one ticket."""
    return jsonify(ticket_json(tickets.get_ticket(db.session, ticket_id, g.api_user), g.api_user))


@bp.post("/tickets/<int:ticket_id>/<action>")
@documented({200: TicketJson}, (403, 404, 409), body=TicketAction, path={"action": ACTION_SCHEMA})
@token_required
def ticket_action(ticket_id: int, action: str):
    """Fire a user action on a ticket."""
    data = body(TicketAction)
    ticket = tickets.get_ticket(db.session, ticket_id, g.api_user)
    if action not in workflow.USER_ACTIONS:
        return error_response(f"unknown action {action!r}", 404)
    check_action_fields(data, action, ticket.kind)
    tickets.check_expected_state(ticket, data.get("expected_state"))
    run = tickets.act(db.session, ticket, g.api_user, action, data)
    db.session.commit()
    dispatch(run)
    return jsonify(ticket_json(ticket, g.api_user))


@bp.get("/projects/<name>/releases")
@documented({200: ReleasePage}, (400, 404), query=PageQuery, path={"name": NAME_SCHEMA})
@token_required
def project_releases(name: str):
    """List a project's versions newest first, a page at a time (`limit`, `cursor`)."""
    project = projects.get_project(db.session, name)
    if not tickets.can_see(g.api_user, project):
        return error_response(f"project {name!r} not found", 404)
    page = listing.releases_page(db.session, project, listing.page_size(request.args.get("limit")), _cursor())
    return _page_json(page, lambda r: release_json(r, project))


@bp.get("/projects/<name>/hosts")
@documented({200: FleetJson}, (404,), path={"name": NAME_SCHEMA})
@token_required
def project_hosts(name: str):
    """Return the fleet table: each host's version and state as the last verify (or release) found it."""
    project = projects.get_project(db.session, name)
    if not tickets.can_see(g.api_user, project):
        return error_response(f"project {name!r} not found", 404)
    return jsonify(fleet_json(project))


@bp.post("/projects/<name>/hosts")
@documented({202: FleetJson}, (403, 404), body=VerifyHosts, path={"name": NAME_SCHEMA})
@token_required
def verify_hosts(name: str):
    """Queue a verify of every host of the project (leads and admins); 202 with the current fleet table."""
    data = body(VerifyHosts)
    project = projects.get_project(db.session, name)
    if not tickets.can_see(g.api_user, project):
        return error_response(f"project {name!r} not found", 404)
    if not fleet.can_verify(g.api_user, project):
        return error_response("only a lead of the project or an admin may verify its hosts", 403)
    fleet.request_verify(project, checksum=bool(data.get("checksum")))
    return jsonify(fleet_json(project)), 202


@bp.post("/rollbacks")
@documented({201: TicketJson}, (403, 404, 409), body=NewRollback, links=TICKET_LINKS)
@token_required
def create_rollback():
    """File a rollback ticket to an earlier version."""
    data = body(NewRollback)
    ticket = releases.create_rollback(
        db.session, data.get("project"), g.api_user, data.get("version"), data.get("reason")
    )
    db.session.commit()
    return jsonify(ticket_json(ticket, g.api_user)), 201


@bp.get("/runs")
@documented({200: RunPage}, (400,), query=RunsQuery)
@token_required
def list_runs():
    """List runs newest first, a page at a time (`limit`, `cursor`), optionally of one `project` or `ticket`."""
    ticket = request.args.get("ticket", "")
    page = listing.runs_page(
        db.session,
        g.api_user,
        project=request.args.get("project", ""),
        ticket_id=validation.integer(ticket, "ticket", minimum=1) if ticket else None,
        limit=listing.page_size(request.args.get("limit")),
        after=_cursor(),
    )
    return _page_json(page, lambda r: {**run_json(r), "ticket": r.ticket_id, "project": r.project.name})


@bp.get("/runs/<int:run_id>")
@documented({200: RunLogJson}, (400, 404), query=LogQuery)
@token_required
def get_run(run_id: int):
    """Return a run's status, hosts and log lines from `offset` (for following a live run)."""
    run = runs.get_run(db.session, run_id, g.api_user)
    offset = validation.integer(request.args.get("offset", "0"), "offset")
    lines = runs.log_lines(run, offset)
    data = run_json(run)
    data.update(
        ticket=run.ticket_id,
        progress=runs.progress(run),
        offset=offset,
        next_offset=offset + len(lines),
        lines=lines,
        replay=run.run_dir and " ".join(replay_command(run)),
    )
    return jsonify(data)


@bp.post("/runs/<int:run_id>/cancel")
@documented({200: RunJson}, (403, 404, 409), body=NoBody)
@token_required
def cancel_run(run_id: int):
    """Cancel a queued or running run."""
    body(NoBody)
    run = runs.get_run(db.session, run_id, g.api_user)
    runs.cancel(db.session, run, g.api_user)
    db.session.commit()
    return jsonify(run_json(run))
