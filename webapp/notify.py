"""Notifications: per-project channels, which ticket transitions notify, and each channel kind's message.

`tickets.set_state` calls `on_transition` for every state change; it records one Delivery per channel in
the same transaction, and the ids are enqueued on RQ once that transaction commits (`jobs.notify.deliver`
sends them; the reconciler re-enqueues deliveries whose enqueue failed). Building and signing a message is
pure (`http_request`, `email_message`): the job only does the I/O. A channel's secret is write-only: it
signs messages and is never shown, logged, put in a delivery's facts or in an API answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import quote_plus, urlsplit

from flask import Flask, current_app, has_app_context
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from . import validation
from .errors import BadInput, Forbidden, NotFound
from .models import Delivery, NotifyChannel, Project, Ticket, User, utcnow
from .workflow import Role, State

KINDS = ("json", "dingtalk", "wecom", "feishu", "slack", "email")
EVENTS = (
    "approval_needed",
    "approved",
    "rejected",
    "returned",
    "staging_failed",
    "released",
    "release_failed",
    "rollback_requested",
    "run_lost",
)
TEST_EVENT = "test"
JOB = "jobs.notify.deliver"  # enqueued by name: webapp never imports jobs
MASK = "••••"
HEADLINES = {
    "approval_needed": "waits for approval",
    "approved": "approved",
    "rejected": "rejected",
    "returned": "returned for changes",
    "staging_failed": "staging update failed",
    "released": "released",
    "release_failed": "release failed",
    "rollback_requested": "rollback requested",
    "run_lost": "run lost (its worker is gone)",
    TEST_EVENT: "test message",
}
_PENDING = "ferry_notify_pending"  # Session.info key: delivery ids to enqueue after commit
_EMAIL = re.compile(r"[^@\s,;<>\"']+@[^@\s,;<>\"']+\.[^@\s,;<>\"']+")


class DeliveryError(Exception):
    """A delivery attempt failed (the receiver is down, answered an error, or refused the message)."""


# --- which transitions notify ----------------------------------------------------------------------------


def events_for(action: str, from_state: str | None, to_state: str) -> list[str]:
    """Return the events a transition raises, most specific first (each channel gets the first it wants)."""
    if action == "run_lost":
        return ["run_lost"]
    events = []
    if action == "request-rollback":
        events.append("rollback_requested")
    if to_state == State.PENDING_APPROVAL and from_state != State.PENDING_APPROVAL:
        events.append("approval_needed")
    elif to_state == State.APPROVED and action in ("approve", "test-passed"):
        events.append("approved")  # test passed on a project that needs no approval approves at once
    elif action == "reject":
        events.append("rejected")
    elif action == "return":
        events.append("returned")
    elif to_state in (State.STAGING_FAILED, State.RELEASED, State.RELEASE_FAILED) and from_state != to_state:
        events.append(str(to_state))
    return events


def ticket_url(ticket_id: int) -> str:
    """Return the absolute link to a ticket's page (FERRY_BASE_URL)."""
    return f"{current_app.config['FERRY_BASE_URL'].rstrip('/')}/tickets/{ticket_id}"


def ticket_facts(ticket: Ticket) -> dict:
    """Return the ticket part of a message: what a receiver needs to know, nothing secret."""
    return {
        "id": ticket.id,
        "project": ticket.project.name,
        "kind": ticket.kind,
        "state": ticket.state,
        "reason": ticket.reason,
        "author": ticket.author.username,
        "version": ticket.version,
        "url": ticket_url(ticket.id),
    }


def leads_of(session: Session, project: Project) -> list[str]:
    """Return the user names of the project's leads (whom approval_needed is for)."""
    return sorted(m.user.username for m in project.memberships if m.role == Role.LEAD and not m.user.disabled)


def on_transition(
    session: Session,
    ticket: Ticket,
    action: str,
    from_state: str | None,
    to_state: str,
    user: User | None,
    comment: str,
) -> list[Delivery]:
    """Record the deliveries a ticket transition causes; they are enqueued when the transaction commits."""
    events = events_for(action, from_state, to_state)
    if not events:
        return []
    channels = session.scalars(select(NotifyChannel).where(NotifyChannel.project_id == ticket.project_id)).all()
    if not channels:
        return []
    base = {
        "ticket": ticket_facts(ticket),
        "actor": user.username if user else "system",
        "comment": comment,
        "at": utcnow().isoformat() + "Z",
    }
    deliveries = []
    for channel in channels:
        wanted = [e for e in events if not channel.events or e in channel.events]
        if not wanted:
            continue
        facts = {"event": wanted[0], **base}
        if wanted[0] == "approval_needed":
            facts["leads"] = leads_of(session, ticket.project)
        deliveries.append(_record(session, channel, facts, ticket.id))
    return deliveries


def _record(session: Session, channel: NotifyChannel, facts: dict, ticket_id: int | None) -> Delivery:
    """Add one queued delivery and remember its id for enqueueing after commit."""
    delivery = Delivery(
        ticket_id=ticket_id, channel=channel, channel_label=label(channel), event=facts["event"], facts=facts
    )
    session.add(delivery)
    session.flush()
    session.info.setdefault(_PENDING, []).append(delivery.id)
    return delivery


# --- channels ---------------------------------------------------------------------------------------------


def can_manage(user: User, project: Project) -> bool:
    """Tell whether `user` may add, remove and test the project's channels (admins and its leads)."""
    return user.is_admin or user.role_in(project) is Role.LEAD


def mask_target(kind: str, target: str) -> str:
    """Return a channel target safe to show: webhook URLs carry tokens in path and query, so only the host."""
    if kind == "email":
        return target
    parts = urlsplit(target)
    return f"{parts.scheme}://{parts.netloc}/{MASK}"


def label(channel: NotifyChannel) -> str:
    """Return how a channel is shown: its kind and masked target."""
    return f"{channel.kind} {mask_target(channel.kind, channel.target)}"


def parse_events(raw: object) -> list[str]:
    """Return the event names from a list or a comma-separated string; empty means every event."""
    if raw is None or raw == "":
        return []
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(e, str) for e in items):
        raise BadInput("events: a list of event names", "events")
    events = sorted({e.strip() for e in items if e.strip()})
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise BadInput(
            "events: unknown %(unknown)s (known: %(known)s)",
            "events",
            unknown=", ".join(unknown),
            known=", ".join(EVENTS),
        )
    return [] if set(events) == set(EVENTS) else events


def check_target(kind: object, target: object) -> tuple[str, str]:
    """Return (kind, target) when the target fits the kind: an http(s) URL, or mail addresses for email."""
    if kind not in KINDS:
        raise BadInput("kind: one of %(kinds)s", "kind", kinds=", ".join(KINDS))
    if not isinstance(target, str) or not target.strip():
        if kind == "email":
            raise BadInput("to: a mail address", "to")
        raise BadInput("url: required", "url")
    target = validation.plain_text(target.strip(), "to" if kind == "email" else "url", single_line=True)
    if kind == "email":
        addresses = [a.strip() for a in target.split(",") if a.strip()]
        if not addresses or not all(_EMAIL.fullmatch(a) for a in addresses) or len(target) > 1024:
            raise BadInput("to: mail addresses separated by commas", "to")
        return kind, ", ".join(addresses)
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(target) > 1024 or " " in target:
        raise BadInput("url: an http:// or https:// URL", "url")
    return kind, target


def add_channel(
    session: Session,
    project: Project,
    user: User | None,
    kind: object,
    target: object,
    secret: object = "",
    events: object = None,
) -> NotifyChannel:
    """Add a channel to a project (admins and the project's leads; `user` None: ops on the CLI)."""
    if user is not None and not can_manage(user, project):
        raise Forbidden("only an admin or a lead of the project may manage its notifications")
    kind, target = check_target(kind, target)
    if secret is None:
        secret = ""
    if not isinstance(secret, str) or len(secret) > 255:
        raise BadInput("secret: at most 255 characters", "secret")
    secret = validation.plain_text(secret.strip(), "secret", single_line=True)
    channel = NotifyChannel(
        project_id=project.id,
        kind=kind,
        target=target,
        secret=secret,
        events=parse_events(events),
        created_by_id=user.id if user else None,
    )
    session.add(channel)
    session.flush()
    return channel


def get_channel(session: Session, channel_id: int, project: Project | None = None) -> NotifyChannel:
    """Return a channel (of `project`, when given) or raise NotFound."""
    channel = session.get(NotifyChannel, channel_id)
    if channel is None or (project is not None and channel.project_id != project.id):
        raise NotFound("channel %(id)s not found", id=channel_id)
    return channel


def remove_channel(session: Session, channel: NotifyChannel, user: User | None) -> None:
    """Remove a channel; its past deliveries stay on the tickets, labelled as they were."""
    if user is not None and not can_manage(user, channel.project):
        raise Forbidden("only an admin or a lead of the project may manage its notifications")
    session.execute(
        update(Delivery)
        .where(Delivery.channel_id == channel.id, Delivery.status == "queued")
        .values(status="failed", error="channel removed")
    )
    session.execute(update(Delivery).where(Delivery.channel_id == channel.id).values(channel_id=None))
    session.delete(channel)
    session.flush()


def send_test(session: Session, channel: NotifyChannel, user: User | None) -> Delivery:
    """Queue a test message to a channel."""
    if user is not None and not can_manage(user, channel.project):
        raise Forbidden("only an admin or a lead of the project may manage its notifications")
    facts = {
        "event": TEST_EVENT,
        "ticket": None,
        "project": channel.project.name,
        "actor": user.username if user else "ops",
        "comment": "Ferry can reach this channel.",
        "at": utcnow().isoformat() + "Z",
    }
    return _record(session, channel, facts, None)


def channel_json(session: Session, channel: NotifyChannel) -> dict:
    """Return a channel as pages and the CLI show it: the target masked, the secret only as set or not."""
    last = session.scalar(
        select(Delivery).where(Delivery.channel_id == channel.id).order_by(Delivery.id.desc()).limit(1)
    )
    return {
        "id": channel.id,
        "kind": channel.kind,
        "target": mask_target(channel.kind, channel.target),
        "secret": MASK if channel.secret else "",
        "events": list(channel.events or []),
        "last_status": last.status if last else None,
        "last_error": last.error if last else "",
    }


def project_channels(session: Session, project: Project) -> list[NotifyChannel]:
    """Return a project's channels, oldest first."""
    return list(
        session.scalars(select(NotifyChannel).where(NotifyChannel.project_id == project.id).order_by(NotifyChannel.id))
    )


def ticket_deliveries(session: Session, ticket: Ticket) -> list[Delivery]:
    """Return the deliveries of a ticket's events, oldest first."""
    return list(session.scalars(select(Delivery).where(Delivery.ticket_id == ticket.id).order_by(Delivery.id)))


def delivery_json(delivery: Delivery) -> dict:
    """Return a delivery as the ticket page and API show it (no target URL, no secret)."""
    return {
        "id": delivery.id,
        "event": delivery.event,
        "channel": delivery.channel_label,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "error": delivery.error,
        "created_at": delivery.created_at.isoformat() + "Z",
        "sent_at": delivery.sent_at.isoformat() + "Z" if delivery.sent_at else None,
    }


# --- messages ---------------------------------------------------------------------------------------------


def subject(facts: dict) -> str:
    """Return the one-line summary of a message."""
    ticket = facts.get("ticket")
    headline = HEADLINES.get(facts["event"], facts["event"])
    if ticket is None:
        return f"[Ferry] {facts.get('project', '')}: {headline}"
    if facts["event"] in ("released", "rollback_requested") and ticket.get("version"):
        headline = f"{headline}: version {ticket['version']}"
    return f"[Ferry] {ticket['project']} #{ticket['id']} {headline}"


def text_lines(facts: dict) -> list[str]:
    """Return the body of a message as lines: what happened, to which ticket, who, why, which version."""
    ticket = facts.get("ticket")
    lines = [subject(facts)]
    if ticket is not None:
        lines.append(f"Ticket #{ticket['id']} ({ticket['kind']}, by {ticket['author']}): {ticket['reason']}")
        lines.append(f"State: {ticket['state']}" + (f" · version {ticket['version']}" if ticket.get("version") else ""))
    lines.append(f"By: {facts.get('actor') or 'system'}")
    if facts.get("leads"):
        lines.append("For: " + ", ".join(f"@{name}" for name in facts["leads"]))
    if facts.get("comment"):
        lines.append(f"Comment: {facts['comment']}")
    if ticket is not None:
        lines.append(ticket["url"])
    return lines


def markdown(facts: dict) -> str:
    """Return the message as the chat robots' markdown (a title line, then the details and the link)."""
    ticket = facts.get("ticket")
    lines = text_lines(facts)
    body = [f"#### {lines[0]}"] + [f"> {line}" for line in lines[1 : -1 if ticket else None]]
    if ticket is not None:
        body.append(f"[Open ticket #{ticket['id']}]({ticket['url']})")
    return "\n\n".join(body)


def json_body(facts: dict) -> dict:
    """Return the `json` kind's body: {event, ticket, actor, comment, at}."""
    return {k: facts.get(k) for k in ("event", "ticket", "actor", "comment", "at")}


def json_signature(body: bytes, secret: str) -> str:
    """Return the X-Ferry-Signature header value: sha256=<hex HMAC-SHA256 of the raw body>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def dingtalk_sign(timestamp_ms: int, secret: str) -> str:
    """Return DingTalk's signed-mode sign: base64 HMAC-SHA256 (key: secret) of "timestamp\\nsecret", URL-encoded."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest).decode())


def feishu_sign(timestamp_s: int, secret: str) -> str:
    """Return Feishu's bot sign: base64 HMAC-SHA256 keyed with "timestamp\\nsecret" over an empty message."""
    return base64.b64encode(hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class HttpRequest:
    """A webhook POST ready to send."""

    url: str
    body: bytes
    headers: dict


def http_request(kind: str, url: str, secret: str, facts: dict, now: float) -> HttpRequest:
    """Build the POST for a webhook channel of `kind` at time `now` (seconds since the epoch)."""
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "Ferry"}
    text = "\n".join(text_lines(facts))
    if kind == "json":
        payload: dict = json_body(facts)
    elif kind == "dingtalk":
        payload = {"msgtype": "markdown", "markdown": {"title": subject(facts), "text": markdown(facts)}}
        if secret:
            ts = int(now * 1000)
            url += ("&" if "?" in url else "?") + f"timestamp={ts}&sign={dingtalk_sign(ts, secret)}"
    elif kind == "wecom":
        payload = {"msgtype": "markdown", "markdown": {"content": markdown(facts)}}
    elif kind == "feishu":
        payload = {"msg_type": "text", "content": {"text": text}}
        if secret:
            ts = int(now)
            payload = {"timestamp": str(ts), "sign": feishu_sign(ts, secret), **payload}
    elif kind == "slack":
        payload = {"text": text}
    else:
        raise ValueError(f"not a webhook kind: {kind}")
    body = json.dumps(payload, ensure_ascii=False).encode()
    if kind == "json" and secret:
        headers["X-Ferry-Signature"] = json_signature(body, secret)
    return HttpRequest(url=url, body=body, headers=headers)


def check_answer(kind: str, body: bytes) -> None:
    """Raise DeliveryError when a chat robot answered 200 but refused the message (errcode/code not 0)."""
    if kind not in ("dingtalk", "wecom", "feishu"):
        return
    try:
        answer = json.loads(body)
    except ValueError:
        return  # not JSON: nothing says it failed
    if not isinstance(answer, dict):
        return
    code = answer.get("errcode", answer.get("code", answer.get("StatusCode", 0)))
    if code not in (0, "0", None):
        message = str(answer.get("errmsg") or answer.get("msg") or answer.get("StatusMessage") or "")[:200]
        raise DeliveryError(f"refused: code {code} {message}".strip())


def email_message(to: str, mail_from: str, facts: dict) -> EmailMessage:
    """Build the mail for an email channel."""
    message = EmailMessage()
    message["Subject"] = subject(facts)
    message["From"] = mail_from
    message["To"] = to
    message.set_content("\n".join(text_lines(facts)) + "\n")
    return message


def scrub(text: str, *secrets: str) -> str:
    """Replace every secret in `text` by the mask (errors are stored and shown)."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, MASK)
    return text


def backoff() -> list[int]:
    """Return the seconds to wait before each retry (FERRY_NOTIFY_BACKOFF, e.g. "30,120")."""
    raw = str(current_app.config.get("FERRY_NOTIFY_BACKOFF", "30,120"))
    return [int(s) for s in raw.split(",") if s.strip()] or [0]


# --- enqueueing after commit ------------------------------------------------------------------------------


def enqueue(delivery_ids: list[int]) -> bool:
    """Put deliveries on the queue, retried by RQ with back-off; False when Redis is unreachable."""
    from rq import Queue, Retry

    tries = max(1, int(current_app.config.get("FERRY_NOTIFY_TRIES", 3)))
    try:
        queue = Queue(current_app.config["FERRY_QUEUE"], connection=Redis.from_url(current_app.config["REDIS_URL"]))
        for delivery_id in delivery_ids:
            queue.enqueue(
                JOB,
                delivery_id,
                job_id=f"notify-{delivery_id}",
                retry=Retry(max=tries - 1, interval=backoff()) if tries > 1 else None,
                job_timeout=int(current_app.config.get("FERRY_NOTIFY_TIMEOUT", 10)) * 3 + 30,
                result_ttl=86400,
                failure_ttl=7 * 86400,
            )
    except RedisError as e:
        current_app.logger.warning("deliveries %s not enqueued (%s); the reconciler will retry", delivery_ids, e)
        return False
    return True


def _after_commit(session: Session) -> None:
    """Enqueue the deliveries the committed transaction recorded (a failure never undoes the commit)."""
    ids = session.info.pop(_PENDING, None)
    if ids and has_app_context():
        enqueue(ids)


def _after_soft_rollback(session: Session, previous_transaction: object) -> None:
    """Forget deliveries of a transaction that was rolled back (a savepoint's rollback leaves the outer ones)."""
    if not getattr(previous_transaction, "nested", False):
        session.info.pop(_PENDING, None)


def init_app(app: Flask) -> None:
    """Enqueue recorded deliveries whenever a session commits."""
    if not event.contains(Session, "after_commit", _after_commit):
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_soft_rollback", _after_soft_rollback)
