"""Run pages: the live log as Server-Sent Events, and the cancel button."""

from __future__ import annotations

import json
import time

from flask import Blueprint, Response, flash, redirect, request, stream_with_context, url_for
from flask_login import current_user, login_required
from redis.exceptions import RedisError

from .. import runs
from ..extensions import db
from ..live import log_stream_key, redis_connection
from ..models import Run

bp = Blueprint("runs", __name__)

STREAM_SECONDS = 300  # one SSE connection lasts at most this long; the browser reconnects with Last-Event-ID
BLOCK_MS = 500  # how long one XREAD waits: bounds the delay between an event and the page


def _sse(event: str, data: object, event_id: str | None = None) -> str:
    """Format one Server-Sent Event."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


@bp.get("/runs/<int:run_id>/events")
@login_required
def events(run_id: int):
    """Stream a run's log lines and host progress: replay from the start (or Last-Event-ID), then follow."""
    runs.get_run(db.session, run_id, current_user)  # 404 unless visible
    last_id = request.headers.get("Last-Event-ID") or "0"

    def generate():
        nonlocal last_id
        redis = redis_connection()
        key = log_stream_key(run_id)
        sent_progress = None
        deadline = time.monotonic() + STREAM_SECONDS
        streamed = False
        while time.monotonic() < deadline:
            try:
                batch = redis.xread({key: last_id}, block=BLOCK_MS, count=500) or []
            except RedisError:
                batch = []
                time.sleep(BLOCK_MS / 1000)
            for _key, entries in batch:
                for entry_id, fields in entries:
                    last_id = entry_id.decode()
                    streamed = True
                    yield _sse("line", {k.decode(): v.decode() for k, v in fields.items()}, last_id)
            # Re-read each round: the generator outlives the view, and may run under another session.
            run = db.session.get(Run, run_id, populate_existing=True)
            db.session.commit()  # end the read transaction so the next round sees the worker's commits
            progress = runs.progress(run)
            if progress != sent_progress:
                sent_progress = progress
                yield _sse("progress", progress)
            if run.status not in runs.ACTIVE and not batch:
                if not streamed and last_id == "0":  # live stream gone (Redis flushed/expired): replay from the DB
                    for entry in runs.log_lines(run):
                        yield _sse("line", entry)
                yield _sse("end", {"status": run.status, "error": run.error})
                return
        yield _sse("reconnect", {})

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(stream_with_context(generate()), mimetype="text/event-stream", headers=headers)


@bp.post("/runs/<int:run_id>/cancel")
@login_required
def cancel(run_id: int):
    """Cancel a queued or running run from the ticket page."""
    run = runs.get_run(db.session, run_id, current_user)
    runs.cancel(db.session, run, current_user)
    db.session.commit()
    flash(f"Cancel requested for run #{run.id}.", "warning")
    return redirect(url_for("pages.ticket_detail", ticket_id=run.ticket_id), code=303)
