"""Admin services: users, projects and memberships (used by the admin pages and the CLI)."""

from __future__ import annotations

import re
from pathlib import Path

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import batches, validation
from .errors import BadInput, Conflict, NotFound
from .models import Membership, Project, Run, User
from .workflow import Role

DEPLOY_MODES = ("atomic", "inplace")
HOOK_DIR = "hooks"  # hook task files live in playbooks/hooks/
MAX_PASSWORD = 1024
# Numeric project settings: (lowest, highest) allowed value.
NUMBER_SETTINGS = {
    "keep_releases": (2, 1000),
    "forks": (1, 1000),
    "stage_timeout": (10, 7 * 24 * 3600),
    "health_retries": (1, 100),
    "health_interval": (0, 600),
}
CHECK_DIR = "checks"  # health check task files live in playbooks/checks/
BATCH_PAUSES = ("auto", "manual")
_GROUP = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_QUEUE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a worker pool: a plain RQ queue name


def create_user(session: Session, username: str, password: str, is_admin: bool = False) -> User:
    """Create a user; a taken name is a Conflict."""
    validation.name(username, "username")
    _check_password(password, "password")
    if session.scalar(select(User).where(User.username == username)):
        raise Conflict("user %(name)r already exists", "username", name=username)
    user = User(username=username, is_admin=is_admin)
    user.set_password(password)
    session.add(user)
    session.flush()
    return user


def _check_password(raw: object, field: str) -> None:
    """Refuse a password that is too short or absurdly long."""
    if not isinstance(raw, str) or len(raw) < 8:
        raise BadInput("%(field)s: at least 8 characters", field, field=field)
    if len(raw) > MAX_PASSWORD:
        raise BadInput("%(field)s: at most %(n)s characters", field, field=field, n=MAX_PASSWORD)


def change_password(session: Session, user: User, current: object, new: object) -> None:
    """Set a new password after checking the current one; every session of the user ends."""
    if user.auth_source == "ldap":
        raise BadInput("current_password: your password is managed by the company directory", "current_password")
    if not isinstance(current, str) or not user.check_password(current):
        raise BadInput("current_password: wrong password", "current_password")
    _check_password(new, "new_password")
    user.set_password(new)
    user.end_sessions()
    session.flush()


def set_disabled(session: Session, user: User, disabled: bool, by: User | None = None) -> None:
    """Disable (every session ends, tokens stop working, login is refused) or enable a user."""
    if disabled and by is not None and by.id == user.id:
        raise BadInput("username: you cannot disable your own account", "username")
    user.disabled = disabled
    if disabled:
        user.end_sessions()
    session.flush()


def inventory_dir() -> Path:
    """Return the directory every project inventory must come from."""
    return Path(current_app.config["FERRY_INVENTORY_DIR"]).resolve()


def _inventory_file(value: str) -> Path:
    """Return the resolved path of an allowed inventory, or raise BadInput saying why it is not allowed.

    Allowed: a regular, non-executable file inside the inventory directory (Ansible runs an executable
    inventory as a dynamic inventory script on the worker).
    """
    root = inventory_dir()
    raw = Path(value)
    path = (raw if raw.is_absolute() else root / raw).resolve()
    if not path.is_relative_to(root) or path == root:
        raise BadInput(
            "inventory: %(value)r is outside the inventory directory %(root)s", "inventory", value=value, root=str(root)
        )
    if not path.is_file():
        raise BadInput("inventory: no such file %(path)s in the inventory directory", "inventory", path=str(path))
    if path.stat().st_mode & 0o111:
        raise BadInput(
            "inventory: %(value)r is executable (Ansible would run it as a script); only static files are allowed",
            "inventory",
            value=value,
        )
    return path


def inventory_path(inventory: str) -> Path:
    """Resolve a project's inventory setting (a name in the inventory directory), refusing anything else."""
    return _inventory_file(inventory)


def inventory_choices() -> list[str]:
    """Return the inventory names an admin may choose: static files in the inventory directory."""
    root = inventory_dir()
    if not root.is_dir():
        return []
    names = []
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        try:
            _inventory_file(name)
        except BadInput:
            continue
        names.append(name)
    return names


def hook_choices() -> list[str]:
    """Return the hook task files an admin may choose: the YAML files in playbooks/hooks/, as `hooks/<name>`."""
    return _choices(HOOK_DIR)


def hook_file(value: str) -> str:
    """Return the stored form (`hooks/<name>`) of an allowed hook task file, or raise BadInput."""
    return _playbook_file(value, HOOK_DIR, "hook_tasks")


def _check_settings(values: dict) -> dict:
    """Validate project settings shared by create and update."""
    for field in (
        "svn_url",
        "staging_dir",
        "staging_url",
        "inventory",
        "group",
        "hook_tasks",
        "batches",
        "batch_pause",
        "health_url",
        "health_expect",
        "health_body",
        "health_playbook",
    ):
        if field in values:
            if not isinstance(values[field], str):
                raise BadInput("%(field)s: must be a string", field, field=field)
            values[field] = validation.plain_text(values[field], field, single_line=True).strip()
    for field in ("svn_url", "staging_dir", "inventory", "group"):
        if field in values and not values[field]:
            raise BadInput("%(field)s: required", field, field=field)
    if "svn_url" in values and not str(values["svn_url"]).startswith(
        ("file://", "svn://", "http://", "https://", "svn+ssh://")
    ):
        raise BadInput("svn_url: must be a file://, svn://, svn+ssh:// or http(s):// URL", "svn_url")
    if "staging_dir" in values and not Path(values["staging_dir"]).is_absolute():
        raise BadInput("staging_dir: must be an absolute path", "staging_dir")
    if "inventory" in values:
        values["inventory"] = str(_inventory_file(values["inventory"]).relative_to(inventory_dir()))
    if "group" in values and not _GROUP.fullmatch(values["group"]):
        raise BadInput("group: an inventory group name (letters, digits, '_', '-', '.'), not a pattern", "group")
    if values.get("hook_tasks"):
        values["hook_tasks"] = hook_file(values["hook_tasks"])
    if "queue" in values and (not isinstance(values["queue"], str) or not _QUEUE.fullmatch(values["queue"])):
        raise BadInput("queue: a worker pool name (letters, digits, '_', '-', '.'; at most 64)", "queue")
    if "deploy_mode" in values and values["deploy_mode"] not in DEPLOY_MODES:
        raise BadInput("deploy_mode: atomic or inplace", "deploy_mode")
    for field, (low, high) in NUMBER_SETTINGS.items():
        if field in values:
            values[field] = validation.integer(values[field], field, low, high)
    if "shared_paths" in values:
        values["shared_paths"] = validation.shared_paths(values["shared_paths"])
    _check_gray(values)
    return values


def _check_gray(values: dict) -> None:
    """Validate the gray-release settings: batch spec, pause mode, health URL, status spec, check playbook."""
    if "batches" in values:
        try:
            values["batches"] = batches.normalise(values["batches"])
        except batches.BatchSpecError as e:
            raise BadInput("batches: %(error)s (e.g. 1,50%%,100%%)", "batches", error=str(e)) from e
    if "batch_pause" in values and values["batch_pause"] not in BATCH_PAUSES:
        raise BadInput("batch_pause: auto or manual", "batch_pause")
    url = values.get("health_url")
    if url and not re.match(r"^https?://[^\s/]+", url):
        raise BadInput("health_url: an http:// or https:// URL ({host} and {address} are filled in)", "health_url")
    if "health_expect" in values:
        values["health_expect"] = values["health_expect"] or "2xx"
        if not re.fullmatch(r"([1-5]xx|\d{3}(-\d{3})?)(,([1-5]xx|\d{3}(-\d{3})?))*", values["health_expect"]):
            raise BadInput("health_expect: status codes like 2xx, 200,301 or 200-399", "health_expect")
    if values.get("health_playbook"):
        values["health_playbook"] = _playbook_file(values["health_playbook"], CHECK_DIR, "health_playbook")


def check_choices() -> list[str]:
    """Return the health check task files ops put in playbooks/checks/ (`checks/<name>`)."""
    return _choices(CHECK_DIR)


def _choices(folder: str) -> list[str]:
    """Return the YAML task files of one playbooks/ folder, as `<folder>/<name>`."""
    base = Path(current_app.config["FERRY_PLAYBOOK_DIR"]) / folder
    if not base.is_dir():
        return []
    files = [p for p in base.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file() and not p.is_symlink()]
    return sorted(f"{folder}/{p.name}" for p in files)


def _playbook_file(value: str, folder: str, field: str) -> str:
    """Return the stored form (`<folder>/<name>`) of an allowed task file, or raise BadInput naming the field."""
    wanted = f"{folder}/{value.removeprefix(folder + '/')}"
    choices = _choices(folder)
    if wanted not in choices:
        raise BadInput(
            "%(field)s: %(value)r is not a task file in playbooks/%(folder)s/ (choose one of: %(choices)s)",
            field,
            field=field,
            value=value,
            folder=folder,
            choices=", ".join(choices) or "none there",
        )
    return wanted


def create_project(session: Session, name: str, **settings: object) -> Project:
    """Create a project; a taken name is a Conflict."""
    validation.name(name)
    if session.scalar(select(Project).where(Project.name == name)):
        raise Conflict("project %(name)r already exists", "name", name=name)
    settings = {k: v for k, v in settings.items() if v is not None}
    # The default stage timeout is the deployment's (FERRY_STAGE_TIMEOUT), not a number of the code's.
    settings.setdefault("stage_timeout", current_app.config["FERRY_STAGE_TIMEOUT"])
    settings.setdefault("queue", current_app.config["FERRY_QUEUE"])  # the default worker pool
    project = Project(name=name, **_check_settings(dict(settings)))
    session.add(project)
    session.flush()
    return project


def update_project(session: Session, project: Project, **settings: object) -> Project:
    """Change a project's settings; the worker pool only while none of its runs is queued or running."""
    values = _check_settings(dict(settings))
    if values.get("queue", project.queue) != project.queue and session.scalar(
        select(Run.id).where(Run.project_id == project.id, Run.status.in_(("queued", "running"))).limit(1)
    ):
        # A queued run sits on the old pool's queue and would run where the project's data no longer is.
        raise Conflict("queue: the project has queued or running runs; move it when they are done", "queue")
    for key, value in values.items():
        setattr(project, key, value)
    session.flush()
    return project


def get_project(session: Session, name: str) -> Project:
    """Return a project by name or raise NotFound."""
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise NotFound("project %(name)r not found", "project", name=name)
    return project


def get_user(session: Session, username: str) -> User:
    """Return a user by name or raise NotFound."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound("user %(name)r not found", "user", name=username)
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
