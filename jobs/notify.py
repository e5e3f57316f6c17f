"""Delivering one notification: POST a webhook or send a mail, record the outcome on the Delivery row.

Enqueued by name ("jobs.notify.deliver") with an RQ Retry: a failed attempt raises so RQ tries again after
the back-off; the last allowed attempt records "failed" instead. A ticket's flow never waits for this.
"""

from __future__ import annotations

import smtplib
import ssl
import time
import urllib.error
import urllib.request
from urllib.parse import parse_qs, unquote, urlsplit

from flask import current_app

from webapp import notify
from webapp.extensions import db
from webapp.models import Delivery, NotifyChannel, utcnow

from .context import app_context

ANSWER_LIMIT = 64 * 1024  # bytes of a receiver's answer read (only chat robots' error codes are looked at)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: a webhook answers where it was configured, or the delivery fails."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, D102
        return None


def post(request: notify.HttpRequest, kind: str, timeout: int) -> None:
    """POST one webhook request; raise DeliveryError unless it answered 2xx (and, for robots, errcode 0)."""
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(request.url, data=request.body, headers=request.headers, method="POST")
    try:
        with opener.open(req, timeout=timeout) as answer:
            notify.check_answer(kind, answer.read(ANSWER_LIMIT))
    except urllib.error.HTTPError as e:
        raise notify.DeliveryError(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise notify.DeliveryError(f"unreachable: {reason}") from None


def send_mail(channel: NotifyChannel, facts: dict, timeout: int) -> None:
    """Send one mail through FERRY_SMTP_URL (smtp://user:pass@host:port?starttls=1 or smtps://…)."""
    url = current_app.config.get("FERRY_SMTP_URL") or ""
    if not url:
        raise notify.DeliveryError("FERRY_SMTP_URL is not set")
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise notify.DeliveryError("FERRY_SMTP_URL: smtp://host:port or smtps://host:port")
    options = parse_qs(parts.query)
    message = notify.email_message(channel.target, current_app.config["FERRY_MAIL_FROM"], facts)
    context = ssl.create_default_context()
    try:
        if parts.scheme == "smtps":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(parts.hostname, parts.port or 465, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(parts.hostname, parts.port or 25, timeout=timeout)
        with smtp:
            if parts.scheme == "smtp" and options.get("starttls", ["0"])[0] in ("1", "true", "yes"):
                smtp.starttls(context=context)
            if parts.username:
                smtp.login(unquote(parts.username), unquote(parts.password or ""))
            smtp.send_message(message)
    except (smtplib.SMTPException, OSError) as e:
        raise notify.DeliveryError(f"mail not sent: {e}") from None


def send(channel: NotifyChannel, facts: dict) -> None:
    """Deliver one message to one channel or raise DeliveryError."""
    timeout = int(current_app.config.get("FERRY_NOTIFY_TIMEOUT", 10))
    if channel.kind == "email":
        send_mail(channel, facts, timeout)
        return
    request = notify.http_request(channel.kind, channel.target, channel.secret, facts, time.time())
    post(request, channel.kind, timeout)


def deliver(delivery_id: int) -> str:
    """Try one delivery once; raise DeliveryError for RQ to retry, or record it sent or finally failed."""
    with app_context():
        delivery = db.session.get(Delivery, delivery_id)
        if delivery is None or delivery.status != "queued":
            return "skipped"  # already sent or failed: safe to run twice
        channel = delivery.channel
        if channel is None:
            delivery.status, delivery.error = "failed", "channel removed"
            db.session.commit()
            return "failed"
        delivery.attempts += 1
        delivery.attempted_at = utcnow()
        smtp_password = urlsplit(current_app.config.get("FERRY_SMTP_URL") or "").password or ""
        try:
            send(channel, delivery.facts)
        except notify.DeliveryError as e:
            # Errors are shown on the ticket page: never the secret, the URL's tokens or the SMTP password.
            query = urlsplit(channel.target).query if channel.kind != "email" else ""
            delivery.error = notify.scrub(str(e), channel.secret, query, smtp_password)[:500]
            tries = int(current_app.config.get("FERRY_NOTIFY_TRIES", 3))
            if delivery.attempts >= tries:
                delivery.status = "failed"
                db.session.commit()
                current_app.logger.warning("delivery %s failed after %s tries", delivery.id, delivery.attempts)
                return "failed"
            db.session.commit()
            raise notify.DeliveryError(f"delivery {delivery_id}: attempt {delivery.attempts} failed") from None
        delivery.status, delivery.sent_at, delivery.error = "sent", utcnow(), ""
        db.session.commit()
        return "sent"
