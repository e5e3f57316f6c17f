"""Run pages: the live log as Server-Sent Events (or JSON polling when no stream slot is free), and cancel.

Each SSE connection holds one web-server thread for as long as it is open. So that watchers can never
starve pages and API calls, a web process serves at most FERRY_MAX_STREAMS streams at once; a watcher
beyond that gets a `poll` event and the page polls /runs/<id>/log instead (one short request a second).
Every stream also closes after FERRY_STREAM_SECONDS, so slots are freed regularly; the browser reconnects
with Last-Event-ID and carries on where it was.
"""

from __future__ import annotations

import json
import threading
import time

from flask import Blueprint, Response, current_app, flash, jsonify, redirect, request, stream_with_context, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required
from redis.exceptions import RedisError

from .. import runs, validation
from ..errors import BadInput
from ..extensions import db
from ..live import log_stream_key, redis_connection
from ..models import Run

bp = Blueprint("runs", __name__)

BLOCK_MS = 500  # how long one XREAD waits: bounds the delay between an event and the page
KEEPALIVE_SECONDS = 10  # a comment line when nothing else was sent: a gone browser is noticed and its slot freed
RETRY_MS = 1000  # how soon the browser reconnects after a stream's lifetime ends
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_slots_lock = threading.Lock()


def _sse(event: str, data: object, event_id: str | None = None) -> str:
    """Format one Server-Sent Event."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


def _stream_slots() -> threading.BoundedSemaphore:
    """Return this process's stream slots (FERRY_MAX_STREAMS), made on first use (gunicorn forks before that)."""
    app = current_app._get_current_object()
    with _slots_lock:
        slots = app.extensions.get("ferry_stream_slots")
        if slots is None:
            slots = threading.BoundedSemaphore(max(0, app.config["FERRY_MAX_STREAMS"]))
            app.extensions["ferry_stream_slots"] = slots
        return slots


def _release_once(slots: threading.BoundedSemaphore):
    """Return a function that gives one slot back, however often it is called."""
    lock = threading.Lock()
    held = [True]

    def release() -> None:
        with lock:
            if held[0]:
                held[0] = False
                slots.release()

    return release


@bp.get("/runs/<int:run_id>/events")
@login_required
def events(run_id: int):
    """Stream a run's log lines and host progress: replay from the start (or Last-Event-ID), then follow."""
    runs.get_run(db.session, run_id, current_user)  # 404 unless visible
    poll_url = url_for("runs.log", run_id=run_id)
    slots = _stream_slots()
    if not slots.acquire(blocking=False):
        # Every stream slot of this process is busy: answer at once and let the page poll.
        return Response(_sse("poll", {"url": poll_url}), mimetype="text/event-stream", headers=SSE_HEADERS)
    release = _release_once(slots)
    last_id = request.headers.get("Last-Event-ID") or "0"
    lifetime = current_app.config["FERRY_STREAM_SECONDS"]

    def generate():
        nonlocal last_id
        redis = redis_connection()
        key = log_stream_key(run_id)
        sent_progress = None
        deadline = time.monotonic() + lifetime
        last_write = time.monotonic()
        streamed = False
        yield f"retry: {RETRY_MS}\n\n"
        while time.monotonic() < deadline:
            # Read the run before the stream: a run seen finished here wrote its last line before this XREAD.
            # Re-read each round: the generator outlives the view, and may run under another session.
            run = db.session.get(Run, run_id, populate_existing=True)
            db.session.commit()  # end the read transaction so the next round sees the worker's commits
            try:
                batch = redis.xread({key: last_id}, block=BLOCK_MS, count=500) or []
            except RedisError:
                batch = []
                time.sleep(BLOCK_MS / 1000)
            for _key, entries in batch:
                for entry_id, fields in entries:
                    last_id = entry_id.decode()
                    streamed = True
                    last_write = time.monotonic()
                    yield _sse("line", {k.decode(): v.decode() for k, v in fields.items()}, last_id)
            progress = runs.progress(run)
            if progress != sent_progress:
                sent_progress = progress
                last_write = time.monotonic()
                yield _sse("progress", progress)
            if run.status not in runs.ACTIVE and not batch:
                if not streamed and last_id == "0":  # live stream gone (Redis flushed/expired): replay from the DB
                    for entry in runs.log_lines(run):
                        yield _sse("line", entry)
                yield _sse("end", {"status": run.status, "error": run.error})
                return
            if time.monotonic() - last_write > KEEPALIVE_SECONDS:
                last_write = time.monotonic()
                yield ": keepalive\n\n"
        yield _sse("reconnect", {})

    try:
        response = Response(stream_with_context(generate()), mimetype="text/event-stream", headers=SSE_HEADERS)
        response.call_on_close(release)  # the WSGI server closes every response, also when the browser left
    except BaseException:
        release()
        raise
    return response


@bp.get("/runs/<int:run_id>/log")
@login_required
def log(run_id: int):
    """Return a run's status, host progress and log lines from `offset` as JSON (the page polls this)."""
    run = runs.get_run(db.session, run_id, current_user)  # read before the lines: "finished" means all lines are in
    try:
        offset = validation.integer(request.args.get("offset", "0"), "offset")
    except BadInput as e:
        return jsonify(error=e.message), 400
    lines = runs.log_lines(run, offset)
    return jsonify(
        status=run.status,
        error=run.error,
        active=run.status in runs.ACTIVE,
        progress=runs.progress(run),
        offset=offset,
        next_offset=offset + len(lines),
        lines=lines,
    )


@bp.post("/runs/<int:run_id>/cancel")
@login_required
def cancel(run_id: int):
    """Cancel a queued or running run from the ticket page."""
    run = runs.get_run(db.session, run_id, current_user)
    runs.cancel(db.session, run, current_user)
    db.session.commit()
    flash(_("Cancel requested for run #%(id)s.", id=run.id), "warning")
    return redirect(url_for("pages.ticket_detail", ticket_id=run.ticket_id), code=303)
