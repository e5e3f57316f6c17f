"""Domain errors raised by services and mapped to HTTP codes in one place."""

from __future__ import annotations

from flask import jsonify


class DomainError(Exception):
    """Base of errors that a user caused and that change nothing."""

    status = 400

    def __init__(self, message: str, field: str | None = None, /, **params: object) -> None:
        # `message` is an English template ("%(name)s" placeholders, "%%" for a percent sign when params are
        # given): the API answers with it filled in; pages look the template up in the message catalog
        # (webapp/i18n.py). scripts/translations extracts these calls by class name, so tests/test_i18n.py sees
        # any that lacks a translation.
        self.template = message
        self.params = params
        self.message = message % params if params else message
        super().__init__(self.message)
        self.field = field


class BadInput(DomainError):
    """A field is missing or malformed (400)."""

    status = 400


class Forbidden(DomainError):
    """This user may not do this (403)."""

    status = 403


class NotFound(DomainError):
    """No such object, or not visible to this user (404)."""

    status = 404


class Conflict(DomainError):
    """Not allowed in the object's current state, or a race was lost (409)."""

    status = 409


def from_status(message: str, status: int, /, **params: object) -> DomainError:
    """Build the domain error that matches an HTTP status (`message` a template as for DomainError)."""
    cls = {403: Forbidden, 404: NotFound, 409: Conflict}.get(status, BadInput)
    return cls(message, **params)


def error_response(message: str, status: int):
    """Return the API's one JSON error shape: {"error": message} with the status code."""
    return jsonify(error=message), status
