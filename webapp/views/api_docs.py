"""The API's description: /api/openapi.json (built from the views, webapp/openapi.py) and a docs page."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, render_template

from ..openapi import build, documented

bp = Blueprint("api_docs", __name__, url_prefix="/api")


@bp.get("/openapi.json")
@documented({200: dict[str, Any]}, public=True)
def openapi_json():
    """Return the OpenAPI 3.1 description of every /api/ endpoint."""
    spec = current_app.extensions.get("ferry_openapi")
    if spec is None:  # built once per app: the routes do not change after start-up
        spec = current_app.extensions["ferry_openapi"] = build(current_app)
    return jsonify(spec)


@bp.get("/docs")
@documented({200: None}, public=True, content_type="text/html")
def docs():
    """Show the API reference (Swagger UI, served from webapp/static/swagger-ui; no CDN)."""
    return render_template("api_docs.html")
