"""The API's OpenAPI 3.1 description, built from the views' own request and response types.

Each API view carries an `Operation` (set by `@documented`): the pydantic model that validates its JSON body,
the model of its query string, the types of its answers (TypedDicts next to the serializers in serialize.py)
and the error codes it can give. `build(app)` walks the URL map, so a route and its description cannot drift
apart, and pydantic writes JSON Schema 2020-12, the dialect OpenAPI 3.1 uses, so no schema is written by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from pydantic import BaseModel, TypeAdapter
from typing_extensions import TypedDict

REF = "#/components/schemas/{model}"
TAGS = ("projects", "tickets", "rollbacks", "runs", "description")  # the docs page's order
ERROR_CODES = {
    400: "Bad input; the message names the field.",
    401: "Missing or invalid bearer token.",
    403: "Not allowed for you.",
    404: "Unknown, or not visible to you.",
    409: "Not allowed in this state, or the object changed meanwhile.",
    413: "Body too large.",
}


class Error(TypedDict):
    """The API's one error shape."""

    error: str


@dataclass(frozen=True)
class Operation:
    """What the description says about one view."""

    responses: dict[int, Any]
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path: dict[str, dict] = field(default_factory=dict)
    links: dict[str, dict] = field(default_factory=dict)
    public: bool = False
    content_type: str = "application/json"


def documented(
    responses: dict[int, Any],
    errors: tuple[int, ...] = (),
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    path: dict[str, dict] | None = None,
    links: dict[str, dict] | None = None,
    public: bool = False,
    content_type: str = "application/json",
):
    """Attach an `Operation` to a view (put it right under the route decorator)."""

    def mark(view):
        view.openapi = Operation(responses, errors, body, query, path or {}, links or {}, public, content_type)
        return view

    return mark


class _Schemas:
    """Collects component schemas from pydantic models and TypedDicts."""

    def __init__(self) -> None:
        self.components: dict[str, dict] = {}

    def ref(self, kind: Any, mode: str = "serialization") -> dict:
        """Return a schema for `kind`: a $ref for named types, the schema itself otherwise."""
        schema = TypeAdapter(kind).json_schema(ref_template=REF, mode=mode)
        self.components.update(schema.pop("$defs", {}))
        title = schema.get("title")
        if schema.get("type") == "object" and title and getattr(kind, "__name__", None) == title:
            self.components[title] = schema
            return {"$ref": REF.format(model=title)}
        return schema


_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")
_CONVERTER_SCHEMAS = {
    "int": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "examples": [1]},
    None: {"type": "string"},
}


def _path_parameters(rule: str, operation: Operation) -> list[dict]:
    """Return the OpenAPI parameters for a Flask rule's variables."""
    params = []
    for converter, name in _PARAM.findall(rule):
        schema = operation.path.get(name) or _CONVERTER_SCHEMAS.get(converter or None, {"type": "string"})
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return params


def _query_parameters(model: type[BaseModel], schemas: _Schemas) -> list[dict]:
    """Return one query parameter per field of `model`."""
    schema = model.model_json_schema(ref_template=REF, mode="validation")
    schemas.components.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": {k: v for k, v in prop.items() if k not in ("title", "description")},
            **({"description": prop["description"]} if "description" in prop else {}),
        }
        for name, prop in schema["properties"].items()
    ]


def _summary(view) -> str:
    """Return the first line of a view's docstring."""
    return (view.__doc__ or "").strip().splitlines()[0] if view.__doc__ else ""


def operations(app: Flask, prefix: str = "/api/") -> list[tuple[str, str, str, Any]]:
    """Return (rule, method, endpoint, view) for every route under `prefix`, documented or not."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(prefix):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((rule.rule, method, rule.endpoint, app.view_functions[rule.endpoint]))
    return found


def build(app: Flask, title: str = "Ferry API", version: str = "1") -> dict:
    """Return the OpenAPI 3.1 document of every documented route under /api/."""
    schemas = _Schemas()
    error_ref = schemas.ref(Error)
    paths: dict[str, dict] = {}
    for rule, method, endpoint, view in operations(app):
        operation: Operation | None = getattr(view, "openapi", None)
        if operation is None:
            continue  # tests/test_openapi.py fails on undocumented API routes
        op_id = endpoint.split(".")[-1]
        tag = "description" if endpoint.startswith("api_docs.") else rule.split("/")[2]
        doc: dict[str, Any] = {"operationId": op_id, "summary": _summary(view), "tags": [tag]}
        params = _path_parameters(rule, operation)
        if operation.query is not None:
            params += _query_parameters(operation.query, schemas)
        if params:
            doc["parameters"] = params
        if operation.body is not None:
            doc["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": schemas.ref(operation.body, "validation")}},
            }
        responses: dict[str, Any] = {}
        for status, kind in operation.responses.items():
            answer: dict[str, Any] = {"description": "OK" if status < 300 else "Accepted"}
            if kind is not None:
                answer["content"] = {operation.content_type: {"schema": schemas.ref(kind)}}
            elif operation.content_type != "application/json":
                answer["content"] = {operation.content_type: {"schema": {"type": "string"}}}
            if status in _links_by_status(operation):
                answer["links"] = operation.links
            responses[str(status)] = answer
        codes = set(operation.errors) | ({400, 413} if operation.body is not None else set())
        codes |= set() if operation.public else {401}
        for status in sorted(codes):
            responses[str(status)] = {
                "description": ERROR_CODES[status],
                "content": {"application/json": {"schema": error_ref}},
            }
        doc["responses"] = responses
        if operation.public:
            doc["security"] = []
        openapi_path = _PARAM.sub(r"{\2}", rule)
        paths.setdefault(openapi_path, {})[method.lower()] = doc
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "Ferry's JSON API. Authenticate with `Authorization: Bearer <token>` (profile page, or "
                '`flask --app webapp user token NAME`). Every error is `{"error": message}`.'
            ),
        },
        "tags": [{"name": t} for t in TAGS],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _links_by_status(operation: Operation) -> set[int]:
    """Return the success status that carries the operation's links (its first documented answer)."""
    return {min(operation.responses)} if operation.links else set()
