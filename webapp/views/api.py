"""The JSON API: the same services as the pages, authenticated with bearer tokens."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request
from sqlalchemy import select

from .. import fleet, listing, projects, releases, runs, tickets, validation, workflow
from ..auth import token_required
from ..dispatch import dispatch
from ..errors import BadInput, error_response
from ..extensions import db
from ..models import Project
from ..serialize import fleet_json, project_json, release_json, replay_command, run_json, ticket_json

bp = Blueprint("api", __name__, url_prefix="/api")

TICKET_FIELDS = {"project", "reason", "svn_paths", "svn_revision"}
ACTION_FIELDS = {"comment", "reason", "svn_paths", "svn_revision", "expected_state", "overwrite_drift"}
ROLLBACK_FIELDS = {"project", "version", "reason"}
# The JSON type of every field; null passes here and the services decide whether a field is required.
# The API is stricter than the forms: svn_paths is a list, never the forms' newline-separated text.
FIELD_TYPES: dict[str, tuple[type, str]] = {
    "project": (str, "a string"),
    "reason": (str, "a string"),
    "comment": (str, "a string"),
    "expected_state": (str, "a string"),
    "svn_paths": (list, "a list of strings"),
    "svn_revision": (int, "a positive integer or null"),
    "version": (int, "an integer"),
    "overwrite_drift": (bool, "true or false"),
    "checksum": (bool, "true or false"),
}


def _body(allowed: set[str]) -> dict:
    """Return the JSON object body, refusing other types and unknown fields."""
    if not request.data:
        return {}
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # the JSON parser recurses once per level: 50,000 nested lists exhaust the stack
        raise BadInput("body: JSON nested too deeply", "body") from None
    if not isinstance(data, dict):
        raise BadInput("body: must be a JSON object", "body")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadInput(f"{unknown[0]}: unknown field", unknown[0])
    for field, value in data.items():
        if value is None or field not in FIELD_TYPES:
            continue  # the services check presence, and fields this table does not type
        kind, described = FIELD_TYPES[field]
        # bool is an int subclass in Python, but `true` is never a revision or a version.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise BadInput(f"{field}: must be {described}", field)
    return data


@bp.get("/projects")
@token_required
def list_projects():
    """List the projects the caller can see."""
    projects = db.session.scalars(select(Project).order_by(Project.name)).all()
    return jsonify([project_json(p) for p in projects if tickets.can_see(g.api_user, p)])


@bp.post("/tickets")
@token_required
def create_ticket():
    """File a release ticket."""
    data = _body(TICKET_FIELDS)
    ticket, run = tickets.create_ticket(
        db.session, data.get("project"), g.api_user, data.get("reason"), data.get("svn_paths"), data.get("svn_revision")
    )
    db.session.commit()
    dispatch(run)
    return jsonify(ticket_json(ticket, g.api_user)), 201


@bp.get("/tickets")
@token_required
def list_tickets():
    """List tickets newest first, a page at a time (`limit`, `cursor`), filtered by project, state, author, kind, q."""
    filters = listing.ticket_filters(request.args)
    page = listing.tickets_page(
        db.session, g.api_user, filters, listing.page_size(request.args.get("limit")), _cursor()
    )
    return _page_json(page, lambda t: ticket_json(t, g.api_user, brief=True))


def _cursor() -> int | None:
    """Return the row key of `?cursor=` (400 naming `cursor` when it is not one this API gave out)."""
    return listing.decode_cursor(request.args.get("cursor"))


def _page_json(page: listing.Page, to_json):
    """Answer one page of a list: `{"items": [...], "next": cursor or null}`."""
    return jsonify(items=[to_json(row) for row in page.items], next=page.next)


@bp.get("/tickets/<int:ticket_id>")
@token_required
def get_ticket(ticket_id: int):
    """Return one ticket."""
    return jsonify(ticket_json(tickets.get_ticket(db.session, ticket_id, g.api_user), g.api_user))


@bp.post("/tickets/<int:ticket_id>/<action>")
@token_required
def ticket_action(ticket_id: int, action: str):
    """Fire a user action on a ticket."""
    data = _body(ACTION_FIELDS)
    ticket = tickets.get_ticket(db.session, ticket_id, g.api_user)
    if action not in workflow.USER_ACTIONS:
        return error_response(f"unknown action {action!r}", 404)
    tickets.check_expected_state(ticket, data.get("expected_state"))
    run = tickets.act(db.session, ticket, g.api_user, action, data)
    db.session.commit()
    dispatch(run)
    return jsonify(ticket_json(ticket, g.api_user))


@bp.get("/projects/<name>/releases")
@token_required
def project_releases(name: str):
    """List a project's versions newest first, a page at a time (`limit`, `cursor`)."""
    project = projects.get_project(db.session, name)
    if not tickets.can_see(g.api_user, project):
        return error_response(f"project {name!r} not found", 404)
    page = listing.releases_page(db.session, project, listing.page_size(request.args.get("limit")), _cursor())
    return _page_json(page, lambda r: release_json(r, project))


@bp.get("/projects/<name>/hosts")
@token_required
def project_hosts(name: str):
    """Return the fleet table: each host's version and state as the last verify (or release) found it."""
    project = projects.get_project(db.session, name)
    if not tickets.can_see(g.api_user, project):
        return error_response(f"project {name!r} not found", 404)
    return jsonify(fleet_json(project))


@bp.post("/projects/<name>/hosts")
@token_required
def verify_hosts(name: str):
    """Queue a verify of every host of the project (leads and admins); 202 with the current fleet table."""
    data = _body({"checksum"})
    project = projects.get_project(db.session, name)
    if not tickets.can_see(g.api_user, project):
        return error_response(f"project {name!r} not found", 404)
    if not fleet.can_verify(g.api_user, project):
        return error_response("only a lead of the project or an admin may verify its hosts", 403)
    fleet.request_verify(project, checksum=bool(data.get("checksum")))
    return jsonify(fleet_json(project)), 202


@bp.post("/rollbacks")
@token_required
def create_rollback():
    """File a rollback ticket to an earlier version."""
    data = _body(ROLLBACK_FIELDS)
    ticket = releases.create_rollback(
        db.session, data.get("project"), g.api_user, data.get("version"), data.get("reason")
    )
    db.session.commit()
    return jsonify(ticket_json(ticket, g.api_user)), 201


@bp.get("/runs")
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
@token_required
def cancel_run(run_id: int):
    """Cancel a queued or running run."""
    _body(set())
    run = runs.get_run(db.session, run_id, g.api_user)
    runs.cancel(db.session, run, g.api_user)
    db.session.commit()
    return jsonify(run_json(run))
