"""Admin pages: users, projects and memberships."""

from __future__ import annotations

from functools import wraps

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required
from sqlalchemy import select

from .. import projects as svc
from ..config import DEFAULT_FORKS, DEFAULT_KEEP_RELEASES
from ..extensions import db
from ..models import Project, User

bp = Blueprint("admin", __name__, url_prefix="/admin")


def admin_required(view):
    """Decorate a view so that only admins reach it (403 for others)."""

    @wraps(view)
    @login_required
    def wrapped(*args, **kwargs):
        if not current_user.is_admin:
            abort(403)
        return view(*args, **kwargs)

    return wrapped


def _int(form, field: str, default: int) -> object:
    """Read a number field from the form: the default when blank, else the text (the service checks it)."""
    return form.get(field, "").strip() or default


def project_settings(form) -> dict:
    """Read project settings from the admin form."""
    return {
        "svn_url": form.get("svn_url", "").strip(),
        "staging_dir": form.get("staging_dir", "").strip(),
        "staging_url": form.get("staging_url", "").strip(),
        "inventory": form.get("inventory", "").strip(),
        "group": form.get("group", "").strip(),
        "requires_approval": form.get("requires_approval") == "on",
        "allow_self_approval": form.get("allow_self_approval") == "on",
        "deploy_mode": form.get("deploy_mode", "atomic"),
        "keep_releases": _int(form, "keep_releases", DEFAULT_KEEP_RELEASES),
        "forks": _int(form, "forks", DEFAULT_FORKS),
        "stage_timeout": _int(form, "stage_timeout", current_app.config["FERRY_STAGE_TIMEOUT"]),
        "shared_paths": form.get("shared_paths", ""),
        "hook_tasks": form.get("hook_tasks", "").strip(),
        "batches": form.get("batches", "").strip(),
        "batch_pause": form.get("batch_pause", "auto"),
        "health_url": form.get("health_url", "").strip(),
        "health_expect": form.get("health_expect", "").strip() or "2xx",
        "health_body": form.get("health_body", "").strip(),
        "health_retries": _int(form, "health_retries", 3),
        "health_interval": _int(form, "health_interval", 2),
        "health_playbook": form.get("health_playbook", "").strip(),
        "queue": form.get("queue", "").strip() or current_app.config["FERRY_QUEUE"],
    }


def form_choices() -> dict:
    """Return what the project form's selects offer: inventories and hook task files found on disk."""
    return {"inventories": svc.inventory_choices(), "hooks": svc.hook_choices(), "checks": svc.check_choices()}


@bp.route("/users", methods=["GET", "POST"])
@admin_required
def users():
    """List users, create new ones, disable or enable them."""
    if request.method == "POST" and request.form.get("op") in ("disable", "enable"):
        user = svc.get_user(db.session, request.form.get("username", ""))
        disable = request.form["op"] == "disable"
        svc.set_disabled(db.session, user, disable, by=current_user)
        db.session.commit()
        message = _("User %(name)s disabled: every session ended.") if disable else _("User %(name)s enabled.")
        flash(message % {"name": user.username}, "success")
        return redirect(url_for("admin.users"), code=303)
    if request.method == "POST":
        svc.create_user(
            db.session,
            request.form.get("username", ""),
            request.form.get("password", ""),
            request.form.get("is_admin") == "on",
        )
        db.session.commit()
        flash(_("User created."), "success")
        return redirect(url_for("admin.users"), code=303)
    return render_template("admin_users.html", users=db.session.scalars(select(User).order_by(User.username)).all())


@bp.route("/projects", methods=["GET", "POST"])
@admin_required
def projects():
    """List projects and create new ones."""
    if request.method == "POST":
        project = svc.create_project(db.session, request.form.get("name", ""), **project_settings(request.form))
        db.session.commit()
        flash(_("Project %(name)s created.", name=project.name), "success")
        return redirect(url_for("admin.project_edit", name=project.name), code=303)
    rows = db.session.scalars(select(Project).order_by(Project.name)).all()
    return render_template("admin_projects.html", projects=rows, **form_choices())


@bp.route("/projects/<name>", methods=["GET", "POST"])
@admin_required
def project_edit(name: str):
    """Edit a project's settings and memberships."""
    project = svc.get_project(db.session, name)
    if request.method == "POST":
        if request.form.get("op") == "member":
            user = svc.get_user(db.session, request.form.get("username", ""))
            role = request.form.get("role") or None
            svc.set_member(db.session, project, user, None if role == "none" else role)
            flash(_("Membership of %(name)s updated.", name=user.username), "success")
        else:
            svc.update_project(db.session, project, **project_settings(request.form))
            flash(_("Settings saved."), "success")
        db.session.commit()
        return redirect(url_for("admin.project_edit", name=name), code=303)
    users = db.session.scalars(select(User).order_by(User.username)).all()
    return render_template("admin_project.html", project=project, users=users, **form_choices())
