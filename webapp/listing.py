"""Lists that scale: tickets, a project's releases and runs, newest first, in keyset (cursor) pages.

A page is `WHERE key < :last_key ORDER BY key DESC LIMIT n + 1` (the extra row tells whether an older page
exists), so page 1,000 costs what page 1 costs and a row filed meanwhile never shifts a page. Cursors are
opaque to clients (URL-safe base64 of the last key shown); `before` walks back to newer rows for the
pages' "previous" link.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, aliased, defer, joinedload, selectinload

from . import validation
from .errors import BadInput
from .models import Project, Release, Run, Ticket, User
from .workflow import Kind, Role, State

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_TEXT = 200  # characters of a reason search
_KEY = re.compile(r"[0-9]{1,10}")


@dataclass
class Page:
    """One page of a list: its rows, the cursor of the next (older) page and of the previous (newer) one."""

    items: list
    next: str | None = None
    previous: str | None = None


@dataclass
class TicketFilters:
    """What a ticket list is narrowed to; empty strings mean "any"."""

    project: str = ""
    state: str = ""
    author: str = ""
    kind: str = ""
    text: str = ""
    waiting_for: User | None = field(default=None)  # a lead's "waiting for me": pending tickets they may approve

    def query_args(self) -> dict[str, str]:
        """Return the filters as URL query arguments (for links that keep them)."""
        args = {"project": self.project, "state": self.state, "author": self.author, "kind": self.kind}
        args["q"] = self.text
        return {k: v for k, v in args.items() if v}


def encode_cursor(key: int) -> str:
    """Return the opaque cursor for a row key."""
    return base64.urlsafe_b64encode(str(key).encode()).decode().rstrip("=")


def decode_cursor(raw: str | None, name: str = "cursor") -> int | None:
    """Return the row key a cursor stands for (None when absent), or raise BadInput naming the argument."""
    if raw is None or raw == "":
        return None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not _KEY.fullmatch(text) or int(text) > validation.MAX_INT:
        raise BadInput(f"{name}: not a cursor from this list", name)
    return int(text)


def page_size(raw: str | None) -> int:
    """Return the page size asked for by `?limit=` (default 50, 1 to 200), or raise BadInput naming `limit`."""
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    return validation.integer(raw, "limit", minimum=1, maximum=MAX_LIMIT)


def ticket_filters(args: Mapping[str, str]) -> TicketFilters:
    """Return the ticket filters of a request's query (`project, state, author, kind, q`), checked."""
    state, kind = args.get("state", ""), args.get("kind", "")
    if state and state not in {s.value for s in State}:
        raise BadInput(f"state: unknown state {state!r}", "state")
    if kind and kind not in {k.value for k in Kind}:
        raise BadInput(f"kind: must be {' or '.join(k.value for k in Kind)}", "kind")
    text = validation.plain_text(args.get("q", ""), "q", single_line=True).strip()
    if len(text) > MAX_TEXT:
        raise BadInput(f"q: at most {MAX_TEXT} characters", "q")
    return TicketFilters(
        project=args.get("project", ""), state=state, author=args.get("author", ""), kind=kind, text=text
    )


def like_pattern(text: str) -> str:
    """Return a LIKE pattern that finds `text` anywhere, with its own `%`, `_` and `\\` taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _rows(session: Session, query: Select, columns: bool) -> list:
    """Return the query's ORM objects, or with `columns` its rows (named tuples, no ORM objects)."""
    return list(session.execute(query)) if columns else list(session.scalars(query).unique())


def keyset(
    session: Session,
    query: Select,
    key,
    limit: int,
    after: int | None,
    before: int | None,
    key_of: Callable,
    columns: bool = False,
) -> Page:
    """Run `query` for one page, newest first by `key`: older than `after`, or the page just newer than `before`."""
    if before is not None:
        rows = _rows(session, query.where(key > before).order_by(key.asc()).limit(limit + 1), columns)
        newer = len(rows) > limit
        rows = rows[:limit][::-1]
        return Page(
            rows,
            next=encode_cursor(key_of(rows[-1])) if rows else encode_cursor(before + 1),
            previous=encode_cursor(key_of(rows[0])) if newer else None,
        )
    if after is not None:
        query = query.where(key < after)
    rows = _rows(session, query.order_by(key.desc()).limit(limit + 1), columns)
    older = len(rows) > limit
    rows = rows[:limit]
    return Page(
        rows,
        next=encode_cursor(key_of(rows[-1])) if older else None,
        previous=encode_cursor(key_of(rows[0])) if after is not None and rows else None,
    )


def visible_only(query: Select, column, user: User, lead_only: bool = False) -> Select:
    """Narrow `query` to the projects `user` may see (or leads: approve in); admins see every project."""
    if user.is_admin:
        return query
    ids = [m.project_id for m in user.memberships if not lead_only or m.role == Role.LEAD.value]
    return query.where(column.in_(ids))


def _project_id(name: str):
    """Return a subquery for the id of the project called `name` (no row: nothing matches)."""
    return select(Project.id).where(Project.name == name).scalar_subquery()


def _user_id(username: str):
    """Return a subquery for the id of the user called `username` (no row: nothing matches)."""
    return select(User.id).where(User.username == username).scalar_subquery()


def _filtered_tickets(query: Select, user: User, filters: TicketFilters) -> Select:
    """Narrow a query over tickets to the ones `user` may see that match `filters`."""
    query = visible_only(query, Ticket.project_id, user, lead_only=filters.waiting_for is not None)
    if filters.project:
        query = query.where(Ticket.project_id == _project_id(filters.project))
    if filters.waiting_for is not None:
        query = query.where(Ticket.state == State.PENDING_APPROVAL.value)
    elif filters.state:
        query = query.where(Ticket.state == filters.state)
    if filters.author:
        query = query.where(Ticket.author_id == _user_id(filters.author))
    if filters.kind:
        query = query.where(Ticket.kind == filters.kind)
    if filters.text:
        query = query.where(Ticket.reason.ilike(like_pattern(filters.text), escape="\\"))
    return query


class TicketRow(NamedTuple):
    """A ticket as the list page shows it."""

    id: int
    project_name: str
    kind: str
    state: str
    reason: str
    author_name: str
    version: int | None
    updated_at: datetime


class TicketBrief(NamedTuple):
    """A ticket as the API's list shows it, with what its allowed actions depend on."""

    id: int
    project_id: int
    project_name: str
    staging_url: str
    requires_approval: bool
    allow_self_approval: bool
    kind: str
    state: str
    reason: str
    svn_paths: list
    svn_revision: int | None
    staging_revision: int | None
    staging_commit: str | None
    tested_commit: str | None
    version: int | None
    author_id: int
    author_name: str
    approved_by_name: str | None
    last_error: str
    contributor_ids: list
    created_at: datetime
    updated_at: datetime

    def row(self) -> TicketRow:
        """Return the ticket as the list page shows it (its fields are a subset of a brief's)."""
        return TicketRow._make(getattr(self, name) for name in TicketRow._fields)


_approver = aliased(User)
# The columns of each row type, by field name (the query labels them so).
_COLUMNS = {
    "id": Ticket.id,
    "project_id": Ticket.project_id,
    "project_name": Project.name,
    "staging_url": Project.staging_url,
    "requires_approval": Project.requires_approval,
    "allow_self_approval": Project.allow_self_approval,
    "kind": Ticket.kind,
    "state": Ticket.state,
    "reason": Ticket.reason,
    "svn_paths": Ticket.svn_paths,
    "svn_revision": Ticket.svn_revision,
    "staging_revision": Ticket.staging_revision,
    "staging_commit": Ticket.staging_commit,
    "tested_commit": Ticket.tested_commit,
    "version": Ticket.version,
    "author_id": Ticket.author_id,
    "author_name": User.username,
    "approved_by_name": _approver.username,
    "last_error": Ticket.last_error,
    "contributor_ids": Ticket.contributor_ids,
    "created_at": Ticket.created_at,
    "updated_at": Ticket.updated_at,
}


def ticket_brief(ticket: Ticket) -> TicketBrief:
    """Return a loaded ticket as a TicketBrief (the API shows one ticket as it shows a list's)."""
    return TicketBrief(
        id=ticket.id,
        project_id=ticket.project_id,
        project_name=ticket.project.name,
        staging_url=ticket.project.staging_url,
        requires_approval=ticket.project.requires_approval,
        allow_self_approval=ticket.project.allow_self_approval,
        kind=ticket.kind,
        state=ticket.state,
        reason=ticket.reason,
        svn_paths=ticket.svn_paths,
        svn_revision=ticket.svn_revision,
        staging_revision=ticket.staging_revision,
        staging_commit=ticket.staging_commit,
        tested_commit=ticket.tested_commit,
        version=ticket.version,
        author_id=ticket.author_id,
        author_name=ticket.author.username,
        approved_by_name=ticket.approved_by.username if ticket.approved_by else None,
        last_error=ticket.last_error,
        contributor_ids=ticket.contributor_ids,
        created_at=ticket.created_at,
        updated_at=ticket.updated_at,
    )


def ticket_rows_page(
    session: Session,
    row_type: type[TicketRow] | type[TicketBrief],
    user: User,
    filters: TicketFilters,
    limit: int = DEFAULT_LIMIT,
    after: int | None = None,
    before: int | None = None,
) -> Page:
    """Return one page of tickets, newest first, as `row_type` rows (TicketRow for the list page, TicketBrief
    for the API and a lead's approvals): one query of the columns it names, no ORM objects."""
    columns = [_COLUMNS[name].label(name) for name in row_type._fields]
    query = _filtered_tickets(select(*columns), user, filters)
    query = query.join(Project, Project.id == Ticket.project_id).join(User, User.id == Ticket.author_id)
    if "approved_by_name" in row_type._fields:
        query = query.outerjoin(_approver, _approver.id == Ticket.approved_by_id)
    page = keyset(session, query, Ticket.id, limit, after, before, lambda row: row.id, columns=True)
    page.items = [row_type._make(row) for row in page.items]
    return page


def releases_page(session: Session, project: Project, limit: int = DEFAULT_LIMIT, after: int | None = None) -> Page:
    """Return one page of a project's versions, newest first (the cursor is a version)."""
    query = (
        select(Release)
        .where(Release.project_id == project.id)
        .options(joinedload(Release.released_by), joinedload(Release.ticket))
    )
    return keyset(session, query, Release.version, limit, after, None, lambda r: r.version)


def runs_page(
    session: Session,
    user: User,
    project: str = "",
    ticket_id: int | None = None,
    limit: int = DEFAULT_LIMIT,
    after: int | None = None,
) -> Page:
    """Return one page of the runs `user` may see, newest first, optionally of one project or ticket."""
    query = visible_only(select(Run), Run.project_id, user)
    if project:
        query = query.where(Run.project_id == _project_id(project))
    if ticket_id is not None:
        query = query.where(Run.ticket_id == ticket_id)
    query = query.options(defer(Run.log), defer(Run.outputs), selectinload(Run.hosts), joinedload(Run.project))
    return keyset(session, query, Run.id, limit, after, None, lambda r: r.id)
