"""Project page forms for notification channels (admins and the project's leads)."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required
from sqlalchemy import select

from .. import notify, tickets
from ..extensions import db
from ..models import Project

bp = Blueprint("notify", __name__)


def _project(name: str) -> Project:
    """Return a project the current user can see and manage the channels of, or 404/403."""
    project = db.session.scalar(select(Project).where(Project.name == name))
    if project is None or not tickets.can_see(current_user, project):
        abort(404)
    if not notify.can_manage(current_user, project):
        abort(403)
    return project


def _back(project: Project):
    """Redirect to the project page's notification section."""
    return redirect(url_for("pages.project_detail", name=project.name) + "#notifications", code=303)


@bp.post("/projects/<name>/notify")
@login_required
def add(name: str):
    """Add a channel from the project page form."""
    project = _project(name)
    form = request.form
    kind = form.get("kind", "")
    target = form.get("to") if kind == "email" else form.get("url")
    channel = notify.add_channel(
        db.session,
        project,
        current_user,
        kind,
        target or form.get("target"),
        form.get("secret"),
        form.getlist("events"),
    )
    db.session.commit()
    flash(_("Notification channel %(id)s added (%(target)s).", id=channel.id, target=notify.label(channel)), "success")
    return _back(project)


@bp.post("/projects/<name>/notify/<int:channel_id>/remove")
@login_required
def remove(name: str, channel_id: int):
    """Remove a channel."""
    project = _project(name)
    channel = notify.get_channel(db.session, channel_id, project)
    notify.remove_channel(db.session, channel, current_user)
    db.session.commit()
    flash(_("Notification channel %(id)s removed.", id=channel_id), "success")
    return _back(project)


@bp.post("/projects/<name>/notify/<int:channel_id>/test")
@login_required
def test(name: str, channel_id: int):
    """Queue a test message to a channel."""
    project = _project(name)
    channel = notify.get_channel(db.session, channel_id, project)
    notify.send_test(db.session, channel, current_user)
    db.session.commit()
    flash(_("Test message queued: reload to see whether it was delivered."), "info")
    return _back(project)
