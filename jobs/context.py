"""The app context a job runs in: the caller's when there is one (tests), else a per-process app."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from flask import Flask, has_app_context

from webapp import create_app

_app: Flask | None = None


def app_context() -> AbstractContextManager:
    """Return a context manager that provides an app context for a job."""
    global _app
    if has_app_context():
        return nullcontext()
    if _app is None:
        _app = create_app()
    return _app.app_context()
