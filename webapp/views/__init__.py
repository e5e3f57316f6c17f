"""Blueprints and error handling for pages and the JSON API."""

from __future__ import annotations

import json

from flask import Flask, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter, ValidationError

from .. import i18n, validation
from ..errors import BadInput, DomainError, error_response
from ..extensions import csrf, db
from . import admin, api, api_docs, notify, pages, runs


def _handle_domain_error(e: DomainError):
    """Render a domain error: English JSON for the API; for pages a flash in the page's language and a redirect back."""
    db.session.rollback()
    if request.path.startswith("/api/"):
        return error_response(e.message, e.status)
    message = i18n.translate_error(e)  # the catalog's text of the error's template, with its parameters
    flash(message, "danger")
    if request.method == "POST" and request.referrer:
        return redirect(request.referrer, code=303)
    return render_template("error.html", message=message), e.status


def _handle_http_error(e: HTTPException):
    """Answer HTTP errors under /api/ (413 body too large, 405, unknown route) in the one JSON shape."""
    if not request.path.startswith("/api/"):
        return e  # pages keep Werkzeug's own error pages
    response = e.get_response()  # keeps headers such as Allow on a 405
    response.set_data(json.dumps({"error": e.description or e.name}))
    response.content_type = "application/json"
    return response


def _handle_500(e: Exception):
    """Roll the session back so a failed request leaves nothing half-written."""
    db.session.rollback()
    if request.path.startswith("/api/"):
        return jsonify(error="internal error"), 500
    return render_template("error.html", message=gettext("Internal error")), 500


def _security_headers(response):
    """Add the security headers every response carries."""
    stream = current_app.config.get("FERRY_STREAM_URL")  # the live log's stream process on another origin
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
        + (f"; connect-src 'self' {stream}" if stream else ""),
    )
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def row_url(endpoint: str, key: str) -> str:
    """Return `endpoint`'s URL up to its trailing id argument `key` ("/tickets/"): a list's rows append their
    ids to it instead of routing a URL per row (50 routings were a tenth of the ticket list's time)."""
    url = url_for(endpoint, **{key: 0})
    if not url.endswith("/0"):
        raise ValueError(f"{endpoint}: {key} is not the last part of its URL")
    return url[:-1]


class IdConverter(IntegerConverter):
    """`<int:…>` in URLs: ASCII digits within the range an id can have; anything else is a 404, never a 500."""

    regex = r"[0-9]+"

    def to_python(self, value: str) -> int:
        """Return the id, or refuse the match (404) when no row can have it."""
        try:
            return validation.integer(value, "id")
        except BadInput:
            raise ValidationError() from None


def init_app(app: Flask) -> None:
    """Register blueprints, error handlers and response headers."""
    app.url_map.converters["int"] = IdConverter  # before the blueprints add their rules
    app.register_blueprint(pages.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(api_docs.bp)
    app.register_blueprint(runs.bp)
    app.register_blueprint(notify.bp)
    csrf.exempt(api.bp)  # the API authenticates with bearer tokens, never cookies
    app.register_error_handler(DomainError, _handle_domain_error)
    app.register_error_handler(HTTPException, _handle_http_error)
    app.register_error_handler(500, _handle_500)
    app.after_request(_security_headers)
    app.jinja_env.globals["row_url"] = row_url
