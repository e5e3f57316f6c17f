"""Admin services: users, projects and memberships (used by the admin pages and the CLI)."""

from __future__ import annotations

from pathlib import Path

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import validation
from .errors import BadInput, Conflict, NotFound
from .models import Membership, Project, User
from .workflow import Role

DEPLOY_MODES = ("atomic", "inplace")


def create_user(session: Session, username: str, password: str, is_admin: bool = False) -> User:
    """Create a user; a taken name is a Conflict."""
    validation.name(username, "username")
    if len(password or "") < 8:
        raise BadInput("password: at least 8 characters", "password")
    if session.scalar(select(User).where(User.username == username)):
        raise Conflict(f"user {username!r} already exists", "username")
    user = User(username=username, is_admin=is_admin)
    user.set_password(password)
    session.add(user)
    session.flush()
    return user


def inventory_path(inventory: str) -> Path:
    """Resolve a project's inventory setting (relative to inventory/ or absolute)."""
    path = Path(inventory)
    return path if path.is_absolute() else current_app.config["FERRY_INVENTORY_DIR"] / path


def _check_settings(values: dict) -> dict:
    """Validate project settings shared by create and update."""
    for field in ("svn_url", "staging_dir", "inventory", "group"):
        if field in values and not str(values[field] or "").strip():
            raise BadInput(f"{field}: required", field)
    if "svn_url" in values and not str(values["svn_url"]).startswith(
        ("file://", "svn://", "http://", "https://", "svn+ssh://")
    ):
        raise BadInput("svn_url: must be a file://, svn://, svn+ssh:// or http(s):// URL", "svn_url")
    if "staging_dir" in values and not Path(values["staging_dir"]).is_absolute():
        raise BadInput("staging_dir: must be an absolute path", "staging_dir")
    if "inventory" in values and not inventory_path(values["inventory"]).is_file():
        raise BadInput(f"inventory: no such file {inventory_path(values['inventory'])}", "inventory")
    if "deploy_mode" in values and values["deploy_mode"] not in DEPLOY_MODES:
        raise BadInput("deploy_mode: atomic or inplace", "deploy_mode")
    for field, low in (("keep_releases", 2), ("forks", 1), ("stage_timeout", 10)):
        if field in values and (not isinstance(values[field], int) or values[field] < low):
            raise BadInput(f"{field}: a whole number >= {low}", field)
    if "shared_paths" in values:
        values["shared_paths"] = validation.svn_paths(values["shared_paths"])
    return values


def create_project(session: Session, name: str, **settings: object) -> Project:
    """Create a project; a taken name is a Conflict."""
    validation.name(name)
    if session.scalar(select(Project).where(Project.name == name)):
        raise Conflict(f"project {name!r} already exists", "name")
    project = Project(name=name, **_check_settings(dict(settings)))
    session.add(project)
    session.flush()
    return project


def update_project(session: Session, project: Project, **settings: object) -> Project:
    """Change a project's settings."""
    for key, value in _check_settings(dict(settings)).items():
        setattr(project, key, value)
    session.flush()
    return project


def get_project(session: Session, name: str) -> Project:
    """Return a project by name or raise NotFound."""
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise NotFound(f"project {name!r} not found", "project")
    return project


def get_user(session: Session, username: str) -> User:
    """Return a user by name or raise NotFound."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"user {username!r} not found", "user")
    return user


def set_member(session: Session, project: Project, user: User, role: str | None) -> Membership | None:
    """Give `user` a role in `project`, or remove them when role is None."""
    membership = session.scalar(
        select(Membership).where(Membership.project_id == project.id, Membership.user_id == user.id)
    )
    if role is None:
        if membership:
            session.delete(membership)
        return None
    if role not in (Role.DEVELOPER.value, Role.LEAD.value):
        raise BadInput("role: developer or lead", "role")
    if membership is None:
        membership = Membership(project=project, user=user, role=role)
        session.add(membership)
    membership.role = role
    session.flush()
    session.refresh(user)
    return membership
