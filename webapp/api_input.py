"""What the JSON API accepts: one pydantic model per body and query string, used to check requests and to
describe them in /api/openapi.json (webapp/openapi.py).

The models check JSON types and unknown fields here; presence, ranges and content (paths, control
characters, known projects) stay with the services, so pages and API refuse the same things with the same
messages. The descriptions' limits are the services' own (validation.py, listing.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from flask import request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import validation, workflow
from .errors import BadInput
from .workflow import Kind, State

StateName = Literal[tuple(s.value for s in State)]  # type: ignore[valid-type]
KindName = Literal[tuple(k.value for k in Kind)]  # type: ignore[valid-type]
ActionName = Literal[workflow.USER_ACTIONS]  # type: ignore[valid-type]
Reason = Annotated[str, Field(min_length=1, max_length=validation.MAX_REASON)]
Revision = Annotated[int, Field(ge=1, le=validation.MAX_INT)]
Paths = Annotated[
    list[str],
    Field(
        max_length=validation.MAX_PATHS,
        description="SVN paths relative to the working copy (no leading '/' or '-', no '..'); empty: the whole tree",
    ),
]
Limit = Annotated[int, Field(ge=1, le=200)] | Literal[""]
Cursor = Annotated[str, Field(description="`next` of the previous page")]


class Body(BaseModel):
    """Base of request bodies: JSON types are strict (true is no number) and unknown fields are refused.

    An optional field may be null (the same as leaving it out).
    """

    model_config = ConfigDict(extra="forbid", strict=True)


class NewTicket(Body):
    """A new release ticket."""

    project: str = Field(examples=["demo"])
    reason: Reason = Field(examples=["fix the header"])
    svn_paths: Paths | None = None
    svn_revision: Revision | None = Field(None, description="SVN revision to update staging to; null: HEAD")


class TicketAction(Body):
    """Optional fields of a ticket action (`reject` needs `reason`; `resubmit` may change the content)."""

    comment: str | None = Field(None, max_length=validation.MAX_REASON)
    reason: Reason | None = Field(None, description="reject (required) and resubmit only")
    svn_paths: Paths | None = Field(None, description="resubmit of a release ticket only")
    svn_revision: Revision | None = Field(None, description="resubmit of a release ticket only")
    expected_state: StateName | None = Field(None, description="refuse (409) unless the ticket is in this state")
    overwrite_drift: bool | None = Field(None, description="retry only: re-stage even hosts changed by hand")


class NewRollback(Body):
    """A rollback to an earlier version of a project."""

    project: str = Field(examples=["demo"])
    version: Revision = Field(examples=[1])
    reason: Reason = Field(examples=["version 2 breaks the login"])


class VerifyHosts(Body):
    """Options of a verify."""

    checksum: bool | None = Field(None, description="compare every file's content, not only size and time")


class NoBody(Body):
    """An empty body (or an empty JSON object)."""


# How a type error names the expected type; null always passes here (the services decide what is required).
EXPECTED = {
    "svn_paths": "a list of strings",
    "svn_revision": "a positive integer or null",
    "version": "an integer",
    "overwrite_drift": "true or false",
    "checksum": "true or false",
}


def body(model: type[Body]) -> dict[str, Any]:
    """Return the request's JSON object body after checking it against `model`, or raise BadInput naming the field."""
    if not request.data:
        return {}
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # the JSON parser recurses once per level: 50,000 nested lists exhaust the stack
        raise BadInput("body: JSON nested too deeply", "body") from None
    if not isinstance(data, dict):
        raise BadInput("body: must be a JSON object", "body")
    unknown = sorted(set(data) - set(model.model_fields))
    if unknown:
        raise BadInput(f"{unknown[0]}: unknown field", unknown[0])
    try:
        model.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as e:
        # Only a field's own JSON type is refused here: missing fields, ranges and list items are the services'.
        wrong = {err["loc"][0] for err in e.errors() if len(err["loc"]) == 1 and _is_type_error(err)}
        for field in data:
            if field in wrong:
                raise BadInput(f"{field}: must be {EXPECTED.get(field, 'a string')}", field) from None
    return data


# Fields only some actions take; any other action refuses them instead of silently ignoring what the client meant.
ACTION_FIELDS = {
    "reason": (workflow.REJECT, workflow.RESUBMIT),
    "svn_paths": (workflow.RESUBMIT,),
    "svn_revision": (workflow.RESUBMIT,),
}


def check_action_fields(data: dict[str, Any], action: str, kind: str) -> None:
    """Raise BadInput naming a field that `action` on a ticket of `kind` would ignore (null counts as absent)."""
    for field, actions in ACTION_FIELDS.items():
        if data.get(field) is None:
            continue
        if action not in actions or (field != "reason" and kind != Kind.RELEASE.value):
            what = " or ".join(actions) + (" of a release ticket" if field != "reason" else "")
            raise BadInput("%(field)s: only %(what)s takes it", field, field=field, what=what)


def _is_type_error(error: Any) -> bool:
    """Tell whether a pydantic error is about the JSON type (an unknown state name is a 409 later, not a 400)."""
    return error["type"].endswith("_type") or (error["type"] == "literal_error" and not isinstance(error["input"], str))


class TicketQuery(BaseModel):
    """Filters and paging of GET /api/tickets."""

    project: str = ""
    state: StateName | Literal[""] = ""
    author: str = ""
    kind: KindName | Literal[""] = ""
    q: str = Field("", max_length=200, description="text in the reason")
    limit: Limit = Field(50, description="page size, 1 to 200 (empty: 50)")
    cursor: Cursor = ""


class PageQuery(BaseModel):
    """Paging of a list."""

    limit: Limit = Field(50, description="page size, 1 to 200 (empty: 50)")
    cursor: Cursor = ""


class RunsQuery(PageQuery):
    """Filters and paging of GET /api/runs."""

    project: str = ""
    ticket: Annotated[int, Field(ge=1, le=validation.MAX_INT)] | Literal[""] = Field("", description="a ticket id")


class LogQuery(BaseModel):
    """Where to start reading a run's log."""

    offset: Annotated[int, Field(ge=0, le=validation.MAX_INT, description="first log line to return")] = 0
