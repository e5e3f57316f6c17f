"""Database models: users, projects, tickets, their history, releases and runs."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from flask_login import UserMixin
from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .config import DEFAULT_FORKS, DEFAULT_KEEP_RELEASES, DEFAULT_STAGE_TIMEOUT
from .extensions import db
from .workflow import Kind, Role, State

_hasher = PasswordHasher()  # argon2id: memory-hard


_dummy_hash: str | None = None


def spend_password_check(password: str) -> None:
    """Verify `password` against a throwaway hash, so a login for an unknown user costs as much as a real one."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash("no-such-user")
    try:
        _hasher.verify(_dummy_hash, password)
    except VerificationError:
        pass


def utcnow() -> datetime:
    """Return the current time in UTC without tzinfo (portable across SQLite and PostgreSQL)."""
    return datetime.now(UTC).replace(tzinfo=None)


class User(UserMixin, db.Model):
    """A person who logs in; admins manage users, projects and memberships."""

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))  # "" for company-directory (LDAP) users
    # "local": Ferry checks the password; "ldap": the company directory does, Ferry stores none.
    auth_source: Mapped[str] = mapped_column(String(16), default="local", server_default="local")
    is_admin: Mapped[bool] = mapped_column(default=False)
    disabled: Mapped[bool] = mapped_column(default=False)  # no login, no session, no API token works
    # Part of every session cookie (get_id); bumping it ends every session of this user at once.
    session_generation: Mapped[int] = mapped_column(default=0)
    # Page language ("" = the browser's Accept-Language, "en", "zh_CN") and time zone ("" = FERRY_TIMEZONE,
    # else an IANA name); both chosen on the profile page (webapp/i18n.py).
    language: Mapped[str] = mapped_column(String(16), default="", server_default="")
    timezone: Mapped[str] = mapped_column(String(64), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="user", cascade="all, delete-orphan")

    @property
    def is_active(self) -> bool:
        """Tell Flask-Login whether this user may have a session (a disabled user may not)."""
        return not self.disabled

    def get_id(self) -> str:
        """Return what the session cookie stores: the user id and the session generation."""
        return f"{self.id}:{self.session_generation or 0}"

    def end_sessions(self) -> None:
        """End every session of this user (logout, password change, disabling): old cookies stop matching."""
        self.session_generation = (self.session_generation or 0) + 1

    def set_password(self, password: str) -> None:
        """Store an argon2 hash of `password`."""
        self.password_hash = _hasher.hash(password)

    def check_password(self, password: str) -> bool:
        """Tell whether `password` matches the stored hash (a user without one, e.g. from LDAP, never matches)."""
        if not self.password_hash:
            return False
        try:
            return _hasher.verify(self.password_hash, password)
        except VerificationError:
            return False

    def role_in(self, project: Project) -> Role | None:
        """Return this user's role in `project`, or None."""
        return self.role_in_project(project.id)

    def role_in_project(self, project_id: int) -> Role | None:
        """Return this user's role in the project with id `project_id`, or None (for rows without ORM objects)."""
        for m in self.memberships:
            if m.project_id == project_id:
                return Role(m.role)
        return None


class ApiToken(db.Model):
    """A bearer token for the JSON API; only its SHA-256 is stored."""

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()

    @staticmethod
    def digest(token: str) -> str:
        """Return the stored form of a token."""
        return hashlib.sha256(token.encode()).hexdigest()


class Project(db.Model):
    """A website released from one SVN working copy to one inventory group."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    svn_url: Mapped[str] = mapped_column(String(1024))
    staging_dir: Mapped[str] = mapped_column(String(1024))
    staging_url: Mapped[str] = mapped_column(String(1024), default="")
    inventory: Mapped[str] = mapped_column(String(1024))  # file path, relative to inventory/ or absolute
    group: Mapped[str] = mapped_column(String(128))
    requires_approval: Mapped[bool] = mapped_column(default=True)
    allow_self_approval: Mapped[bool] = mapped_column(default=False)
    deploy_mode: Mapped[str] = mapped_column(String(16), default="atomic")  # atomic | inplace
    keep_releases: Mapped[int] = mapped_column(default=DEFAULT_KEEP_RELEASES)
    shared_paths: Mapped[list] = mapped_column(JSON, default=list)
    hook_tasks: Mapped[str] = mapped_column(String(1024), default="")
    forks: Mapped[int] = mapped_column(default=DEFAULT_FORKS)
    stage_timeout: Mapped[int] = mapped_column(default=DEFAULT_STAGE_TIMEOUT)
    live_version: Mapped[int | None]
    # Gray releases: batches ("" = all hosts at once, "1,50%,100%"), the health gate, pauses between batches.
    batches: Mapped[str] = mapped_column(String(128), default="")
    batch_pause: Mapped[str] = mapped_column(String(16), default="auto")  # auto | manual
    health_url: Mapped[str] = mapped_column(String(1024), default="")  # {host}, {address}; host var ferry_health_url
    health_expect: Mapped[str] = mapped_column(String(64), default="2xx")
    health_body: Mapped[str] = mapped_column(String(255), default="")
    health_retries: Mapped[int] = mapped_column(default=3)
    health_interval: Mapped[int] = mapped_column(default=2)
    health_playbook: Mapped[str] = mapped_column(String(1024), default="")  # checks/<name>.yml instead of the URL
    staging_commit: Mapped[str | None] = mapped_column(String(40))  # the snapshot staging serves now
    # The worker pool (RQ queue) whose machines run the project's stages and hold its data; created
    # projects get FERRY_QUEUE.
    queue: Mapped[str] = mapped_column(String(64), default="ferry", server_default="ferry")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="project", cascade="all, delete-orphan")


class Membership(db.Model):
    """A user's role (developer or lead) in a project."""

    __table_args__ = (UniqueConstraint("user_id", "project_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id"))
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id"))
    role: Mapped[str] = mapped_column(String(16), default=Role.DEVELOPER.value)

    user: Mapped[User] = relationship(back_populates="memberships")
    project: Mapped[Project] = relationship(back_populates="memberships")


class Ticket(db.Model):
    """A release or rollback request and where it stands."""

    # The ticket lists are keyset pages, newest first (webapp/listing.py): each filter gets an index that
    # ends in id, so "WHERE <filter> AND id < :cursor ORDER BY id DESC LIMIT n" reads n index entries.
    __table_args__ = (
        Index("ix_ticket_project_state_id", "project_id", "state", "id"),
        Index("ix_ticket_state_id", "state", "id"),
        Index("ix_ticket_author_id_id", "author_id", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default=Kind.RELEASE.value)
    state: Mapped[str] = mapped_column(String(32), index=True)
    reason: Mapped[str] = mapped_column(Text)
    svn_paths: Mapped[list] = mapped_column(JSON, default=list)
    svn_revision: Mapped[int | None]  # requested revision; None = HEAD
    staging_revision: Mapped[int | None]  # svn revision staging was updated to
    staging_commit: Mapped[str | None] = mapped_column(String(40))  # snapshot of the last staging update
    tested_commit: Mapped[str | None] = mapped_column(String(40))  # snapshot live when test passed
    version: Mapped[int | None]  # version released (release) or targeted (rollback)
    last_error: Mapped[str] = mapped_column(Text, default="")
    author_id: Mapped[int] = mapped_column(ForeignKey("user.id"))
    # Users other than the author who changed the ticket's content or marked it tested: no self-approval.
    contributor_ids: Mapped[list] = mapped_column(JSON, default=list)
    approved_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    project: Mapped[Project] = relationship()
    author: Mapped[User] = relationship(foreign_keys=[author_id])
    approved_by: Mapped[User | None] = relationship(foreign_keys=[approved_by_id])
    history: Mapped[list[TicketEvent]] = relationship(order_by="TicketEvent.id", back_populates="ticket")
    runs: Mapped[list[Run]] = relationship(order_by="Run.id", back_populates="ticket")

    @property
    def state_enum(self) -> State:
        """Return the state as the workflow's enum."""
        return State(self.state)


class TicketEvent(db.Model):
    """One line of a ticket's history: who did what, when, from which state to which."""

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))  # None: the system
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)

    ticket: Mapped[Ticket] = relationship(back_populates="history")
    user: Mapped[User | None] = relationship()


class Release(db.Model):
    """A version of a project: a git tag on a tested staging commit, shipped to its hosts."""

    __table_args__ = (UniqueConstraint("project_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id"), index=True)
    version: Mapped[int]
    commit: Mapped[str] = mapped_column(String(40))
    svn_revision: Mapped[int | None]
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"))
    released_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    bad: Mapped[bool] = mapped_column(default=False)  # abandoned by a rollback

    ticket: Mapped[Ticket] = relationship()
    released_by: Mapped[User | None] = relationship()


class Run(db.Model):
    """One execution of a pipeline stage (staging update or release) for a ticket."""

    __table_args__ = (Index("ix_run_project_id_id", "project_id", "id"),)  # GET /api/runs?project=, newest first
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id"), index=True)
    stage: Mapped[str] = mapped_column(String(16))  # staging | release
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    started_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    rq_job_id: Mapped[str] = mapped_column(String(64), default="")
    waiting_for: Mapped[str] = mapped_column(String(255), default="")
    only_hosts: Mapped[list] = mapped_column(JSON, default=list)  # retry: failed hosts only
    overwrite_drift: Mapped[bool] = mapped_column(default=False)  # retry: no drift check, content compared
    version: Mapped[int | None]
    commit: Mapped[str | None] = mapped_column(String(40))
    rc: Mapped[int | None]
    error: Mapped[str] = mapped_column(Text, default="")
    run_dir: Mapped[str] = mapped_column(String(1024), default="")
    log: Mapped[str] = mapped_column(Text, default="")
    outputs: Mapped[dict] = mapped_column(JSON, default=dict)  # what the stage reported (e.g. unversioned files)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    worker: Mapped[str] = mapped_column(String(255), default="", server_default="")  # host that claimed it

    ticket: Mapped[Ticket] = relationship(back_populates="runs")
    project: Mapped[Project] = relationship()
    started_by: Mapped[User | None] = relationship()
    hosts: Mapped[list[HostResult]] = relationship(order_by="HostResult.host", back_populates="run")


class HostResult(db.Model):
    """The outcome of one run on one production host."""

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id"), index=True)
    host: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # ok | changed | failed | unreachable | skipped
    message: Mapped[str] = mapped_column(Text, default="")
    changed_files: Mapped[int] = mapped_column(default=0)

    run: Mapped[Run] = relationship(back_populates="hosts")


class HostState(db.Model):
    """What one production host of a project serves, as the last verify or release found it."""

    __table_args__ = (UniqueConstraint("project_id", "host"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id"), index=True)
    host: Mapped[str] = mapped_column(String(255))
    version: Mapped[int | None]  # the version the host serves (None: nothing, or not known)
    state: Mapped[str] = mapped_column(String(16))  # in_sync | drifted | unreachable | new
    drift: Mapped[dict] = mapped_column(JSON, default=dict)  # {added, modified, deleted}: lists of paths
    message: Mapped[str] = mapped_column(Text, default="")
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)


class NotifyChannel(db.Model):
    """Where a project's ticket events are sent: a webhook (json, chat robots) or a mail address."""

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # json | dingtalk | wecom | feishu | slack | email
    target: Mapped[str] = mapped_column(String(1024))  # webhook URL, or the mail address(es) for email
    secret: Mapped[str] = mapped_column(String(255), default="")  # write-only: signs messages, never shown
    events: Mapped[list] = mapped_column(JSON, default=list)  # event names; empty = every event
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    project: Mapped[Project] = relationship()


class Delivery(db.Model):
    """One notification of one event to one channel, delivered by a job (status queued | sent | failed)."""

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("ticket.id"), index=True)  # None: a test message
    channel_id: Mapped[int | None] = mapped_column(ForeignKey("notify_channel.id"), index=True)  # None: removed
    channel_label: Mapped[str] = mapped_column(String(255), default="")  # kind and masked target, kept after removal
    event: Mapped[str] = mapped_column(String(32))
    facts: Mapped[dict] = mapped_column(JSON, default=dict)  # what happened, as the message tells it (no secrets)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempted_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]

    channel: Mapped[NotifyChannel | None] = relationship()
