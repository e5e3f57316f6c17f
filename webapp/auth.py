"""Logging in: session login for pages, bearer tokens for the API."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta
from functools import wraps
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import joinedload

from . import directory, i18n, projects, throttle, validation
from .errors import BadInput, error_response
from .extensions import db, login_manager
from .models import ApiToken, User, spend_password_check, utcnow

bp = Blueprint("auth", __name__)


TOKEN_USE_RESOLUTION = timedelta(minutes=1)  # API token use is recorded at most this often per token
_SESSION_ID = re.compile(r"([0-9]{1,10}):([0-9]{1,10})")  # User.get_id(): "<id>:<session generation>"


# Every page needs the user's memberships (what they may see): loaded with the user, in one query built once
# (building it, options and all, per request cost a quarter of the lookup).
_USER_WITH_MEMBERSHIPS = select(User).options(joinedload(User.memberships)).where(User.id == bindparam("user_id"))


@login_manager.user_loader
def load_user(session_id: str) -> User | None:
    """Return the user a session belongs to, unless it was ended (older generation) or the user is disabled."""
    match = _SESSION_ID.fullmatch(session_id)
    if match is None:
        return None  # a cookie from before session generations, or garbage: not logged in
    try:
        user_id = validation.integer(match.group(1), "session")
    except BadInput:
        return None
    user = db.session.execute(_USER_WITH_MEMBERSHIPS, {"user_id": user_id}).unique().scalar_one_or_none()
    if user is None or user.disabled or user.get_id() != session_id:
        return None
    return user


def issue_token(user: User) -> str:
    """Create a new API token for `user` and return it; only its hash is stored."""
    token = "fry_" + secrets.token_urlsafe(32)
    db.session.add(ApiToken(user=user, token_hash=ApiToken.digest(token)))
    return token


def user_for_token(header: str | None) -> User | None:
    """Return the user a `Bearer` header belongs to, or None."""
    if not header or not header.startswith("Bearer "):
        return None
    token = header.removeprefix("Bearer ").strip()
    row = (
        db.session.scalars(
            select(ApiToken)
            .where(ApiToken.token_hash == ApiToken.digest(token), ApiToken.revoked_at.is_(None))
            .options(joinedload(ApiToken.user).joinedload(User.memberships))  # the token, its user, what they see
        )
        .unique()
        .first()
    )
    if row is None or row.user.disabled:
        return None
    record_token_use(row)
    return row.user


def record_token_use(row: ApiToken) -> None:
    """Record when a token was used, at most once a minute, outside the request's own transaction.

    A read must not write on the request path: the update runs on its own short connection, only when the
    stored time is older than TOKEN_USE_RESOLUTION (compare-and-set, so parallel calls write it once), and a
    busy database only costs the record, never the request.
    """
    now = utcnow()
    if row.last_used_at is not None and now - row.last_used_at < TOKEN_USE_RESOLUTION:
        return
    stale = now - TOKEN_USE_RESOLUTION
    try:
        with db.engine.begin() as conn:
            conn.execute(
                update(ApiToken)
                .where(ApiToken.id == row.id)
                .where(or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < stale))
                .values(last_used_at=now)
            )
    except SQLAlchemyError:
        current_app.logger.warning("could not record the use of API token %s", row.id)


def safe_next(target: str) -> str | None:
    """Return `target` when it is a path on this site, else None (no open redirect after login)."""
    # Browsers read a backslash as "/" and drop tabs and newlines, so such a path can still mean //evil.test.
    if not target.startswith("/") or "\\" in target or any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):
        return None
    if target.startswith("//") or urlsplit(target).netloc:
        return None
    return target


def token_required(view):
    """Decorate an API view: resolve the bearer token to `g.api_user` or answer 401."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        user = user_for_token(request.headers.get("Authorization"))
        if user is None:
            return error_response("missing or invalid bearer token", 401)
        g.api_user = user
        return view(*args, **kwargs)

    return wrapped


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the login form and log a user in."""
    if request.method == "POST":
        username = request.form.get("username", "")
        # Counted before the password check, atomically: parallel requests cannot get more checks than the limit.
        if not throttle.attempt(username, request.remote_addr or ""):
            flash(_("Too many failed logins; wait a few minutes and try again."), "danger")
            return render_template("login.html"), 429
        user = db.session.scalar(select(User).where(User.username == username))
        password = request.form.get("password", "")
        if user is not None and user.auth_source != "ldap":
            user = user if user.check_password(password) else None  # local accounts (break-glass) stay local
        elif directory.enabled():
            try:
                user = _directory_login(username, password)
            except directory.DirectoryUnreachable:
                flash(_("Company directory unreachable; try again later (local accounts can still log in)."), "danger")
                return render_template("login.html"), 503
        else:
            spend_password_check(password)  # same cost as a real check: timing does not reveal user names
            user = None
        if user is not None:
            throttle.reset(username, request.remote_addr or "")
            if user.disabled:  # said only to whoever knows the password
                flash(_("This account is disabled; ask an administrator."), "danger")
                return render_template("login.html"), 403
            login_user(user)
            return redirect(safe_next(request.args.get("next", "")) or url_for("pages.index"))
        flash(_("Unknown user or wrong password."), "danger")
        return render_template("login.html"), 401
    return render_template("login.html")


def _directory_login(username: str, password: str) -> User | None:
    """Check a login against the company directory; create or update the local user (committed)."""
    found = directory.authenticate(username, password)
    if found is None:
        return None
    user = directory.sync_user(db.session, found)  # BadInput (a name Ferry cannot use) is shown as such
    db.session.commit()
    return user


@bp.post("/logout")
@login_required
def logout():
    """Log the current user out: every session of the user ends, so a copied cookie stops working too."""
    current_user.end_sessions()
    db.session.commit()
    logout_user()
    flash(_("Logged out (on every device)."), "success")
    return redirect(url_for("auth.login"))


@bp.route("/profile", methods=["GET", "POST"])
@login_required
def profile():
    """Show the profile; POST issues or revokes API tokens, changes the password or ends every session."""
    token = None
    if request.method == "POST":
        op = request.form.get("op")
        if op == "revoke":
            for t in db.session.scalars(select(ApiToken).where(ApiToken.user_id == current_user.id)):
                t.revoked_at = t.revoked_at or utcnow()
            flash(_("All your API tokens are revoked."), "success")
        elif op == "logout-everywhere":
            current_user.end_sessions()
            db.session.commit()
            logout_user()
            flash(_("Every session of yours has ended, this one too."), "success")
            return redirect(url_for("auth.login"), code=303)
        elif op == "password":
            return _change_password()
        elif op == "preferences":
            current_user.language = i18n.check_language(request.form.get("language"))
            current_user.timezone = i18n.check_timezone(request.form.get("timezone"))
            db.session.commit()
            i18n.refresh()  # the message below is in the language just chosen
            flash(_("Preferences saved."), "success")
            return redirect(url_for("auth.profile"), code=303)
        else:
            token = issue_token(current_user)
        db.session.commit()
    tokens = db.session.scalars(select(ApiToken).where(ApiToken.user_id == current_user.id)).all()
    return render_template("profile.html", token=token, tokens=tokens, timezones=sorted(i18n.available_zones()))


def _change_password():
    """Change the current user's password: every other session ends, this one carries on (throttled like login)."""
    user = current_user._get_current_object()
    addr = request.remote_addr or ""
    if not throttle.attempt(user.username, addr):  # counted before the check, as for logins
        flash(_("Too many wrong passwords; wait a few minutes and try again."), "danger")
        return render_template(
            "profile.html", token=None, tokens=_tokens(), timezones=sorted(i18n.available_zones())
        ), 429
    projects.change_password(db.session, user, request.form.get("current_password"), request.form.get("new_password"))
    db.session.commit()
    throttle.reset(user.username, addr)
    login_user(user)  # this session carries the new generation
    flash(_("Password changed; every other session has ended."), "success")
    return redirect(url_for("auth.profile"), code=303)


def _tokens() -> list[ApiToken]:
    """Return the current user's API tokens."""
    return list(db.session.scalars(select(ApiToken).where(ApiToken.user_id == current_user.id)))


def init_app(app: Flask) -> None:
    """Register the auth pages and the login view."""
    login_manager.login_view = "auth.login"
    app.register_blueprint(bp)
