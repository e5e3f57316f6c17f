"""Domain errors raised by services and mapped to HTTP codes in one place."""

from __future__ import annotations

from flask import jsonify


class DomainError(Exception):
    """Base of errors that a user caused and that change nothing."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
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


def from_status(message: str, status: int) -> DomainError:
    """Build the domain error that matches an HTTP status."""
    cls = {403: Forbidden, 404: NotFound, 409: Conflict}.get(status, BadInput)
    return cls(message)


def error_response(message: str, status: int):
    """Return the API's one JSON error shape: {"error": message} with the status code."""
    return jsonify(error=message), status
