"""Logging in: session login for pages, bearer tokens for the API."""

from __future__ import annotations

import secrets
from functools import wraps
from urllib.parse import urlsplit

from flask import Blueprint, Flask, flash, g, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import select

from .extensions import db, login_manager
from .models import ApiToken, User, spend_password_check, utcnow

bp = Blueprint("auth", __name__)


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    """Return the logged-in user for a session."""
    return db.session.get(User, int(user_id))


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
    row = db.session.scalar(
        select(ApiToken).where(ApiToken.token_hash == ApiToken.digest(token), ApiToken.revoked_at.is_(None))
    )
    if row is None:
        return None
    row.last_used_at = utcnow()
    return row.user


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
        from .views.api import error_response  # one JSON error shape

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
        from . import throttle

        username = request.form.get("username", "")
        # Counted before the password check, atomically: parallel requests cannot get more checks than the limit.
        if not throttle.attempt(username, request.remote_addr or ""):
            flash("Too many failed logins; wait a few minutes and try again.", "danger")
            return render_template("login.html"), 429
        user = db.session.scalar(select(User).where(User.username == username))
        password = request.form.get("password", "")
        if user is None:
            spend_password_check(password)  # same cost as a real check: timing does not reveal user names
        elif user.check_password(password):
            throttle.reset(username, request.remote_addr or "")
            login_user(user)
            return redirect(safe_next(request.args.get("next", "")) or url_for("pages.index"))
        flash("Unknown user or wrong password.", "danger")
        return render_template("login.html"), 401
    return render_template("login.html")


@bp.post("/logout")
@login_required
def logout():
    """Log the current user out."""
    logout_user()
    return redirect(url_for("auth.login"))


@bp.route("/profile", methods=["GET", "POST"])
@login_required
def profile():
    """Show the profile; POST issues a new API token, shown once."""
    token = None
    if request.method == "POST":
        if request.form.get("op") == "revoke":
            for t in db.session.scalars(select(ApiToken).where(ApiToken.user_id == current_user.id)):
                t.revoked_at = t.revoked_at or utcnow()
            flash("All your API tokens are revoked.", "success")
        else:
            token = issue_token(current_user)
        db.session.commit()
    tokens = db.session.scalars(select(ApiToken).where(ApiToken.user_id == current_user.id)).all()
    return render_template("profile.html", token=token, tokens=tokens)


def init_app(app: Flask) -> None:
    """Register the auth pages and the login view."""
    login_manager.login_view = "auth.login"
    app.register_blueprint(bp)
