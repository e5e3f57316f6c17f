"""The JSON API: the same services as the pages, authenticated with bearer tokens."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request
from sqlalchemy import select

from .. import projects, releases, tickets, workflow
from ..auth import token_required
from ..dispatch import dispatch
from ..errors import BadInput
from ..extensions import db
from ..models import Project, Ticket
from ..serialize import project_json, release_json, ticket_json

bp = Blueprint("api", __name__, url_prefix="/api")

TICKET_FIELDS = {"project", "reason", "svn_paths", "svn_revision"}
ACTION_FIELDS = {"comment", "reason", "svn_paths", "svn_revision", "expected_state"}


def error_response(message: str, status: int):
    """Return the one JSON error shape."""
    return jsonify(error=message), status


def _body(allowed: set[str]) -> dict:
    """Return the JSON object body, refusing other types and unknown fields."""
    if not request.data:
        return {}
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadInput("body: must be a JSON object", "body")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadInput(f"{unknown[0]}: unknown field", unknown[0])
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
    """List tickets, filtered by project and state."""
    query = select(Ticket).join(Project).order_by(Ticket.id.desc())
    if request.args.get("project"):
        query = query.where(Project.name == request.args["project"])
    if request.args.get("state"):
        query = query.where(Ticket.state == request.args["state"])
    rows = db.session.scalars(query.limit(500)).all()
    return jsonify([ticket_json(t, g.api_user, brief=True) for t in rows if tickets.can_see(g.api_user, t.project)])


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
    """List a project's versions, newest first."""
    project = projects.get_project(db.session, name)
    if not tickets.can_see(g.api_user, project):
        return error_response(f"project {name!r} not found", 404)
    return jsonify([release_json(r, project) for r in releases.history(db.session, project)])


@bp.post("/rollbacks")
@token_required
def create_rollback():
    """File a rollback ticket to an earlier version."""
    data = _body({"project", "version", "reason"})
    ticket = releases.create_rollback(
        db.session, data.get("project"), g.api_user, data.get("version"), data.get("reason")
    )
    db.session.commit()
    return jsonify(ticket_json(ticket, g.api_user)), 201
