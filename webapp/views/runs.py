"""Run pages: the live log as Server-Sent Events (or JSON polling when no stream slot is free), and cancel.

Every stream of a run in one process reads the same in-memory feed (webapp/run_feed.py: one reader of the
run's Redis stream and status per process), so a watcher costs no DB or Redis work of its own. Under the
Procfile's `stream` line (gunicorn's gevent worker, where the reverse proxy sends /runs/<id>/events) a stream
is a greenlet and there is no cap. Anywhere else an SSE connection holds a thread (or, under the Procfile's
sync `web` line, the whole worker) while it is open: so that watchers never starve pages and API calls, such
a process serves at most FERRY_MAX_STREAMS streams at once (the web line: 0); a watcher beyond that gets a
`poll` event and the page polls /runs/<id>/log instead (one short request a second). Every stream closes
after FERRY_STREAM_SECONDS, so slots are freed regularly; the browser reconnects with Last-Event-ID and
carries on where it was.
"""

from __future__ import annotations

import sys
import threading
import time
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, flash, jsonify, redirect, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required

from .. import run_feed, runs, validation
from ..errors import BadInput
from ..extensions import db
from ..run_feed import sse

bp = Blueprint("runs", __name__)

KEEPALIVE_SECONDS = 10  # a comment line when nothing else was sent: a gone browser is noticed and its slot freed
RETRY_MS = 1000  # how soon the browser reconnects after a stream's lifetime ends
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_slots_lock = threading.Lock()


def serves_on_greenlets() -> bool:
    """Tell whether this process serves requests on gevent greenlets (the Procfile's `stream` line)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("socket"))


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
    slots = None if serves_on_greenlets() else _stream_slots()  # a greenlet per stream costs no thread
    if slots is not None and not slots.acquire(blocking=False):
        # Every stream slot of this process is busy: answer at once and let the page poll.
        return Response(sse("poll", {"url": poll_url}), mimetype="text/event-stream", headers=SSE_HEADERS)
    release = _release_once(slots) if slots is not None else lambda: None
    last_id = request.headers.get("Last-Event-ID") or "0"
    lifetime = current_app.config["FERRY_STREAM_SECONDS"]
    app = current_app._get_current_object()
    db.session.remove()  # the stream reads the shared feed only: no DB connection held while it is open

    def generate():
        feed = run_feed.watch(app, run_id)
        try:
            position = feed.position_after(last_id)
            version = -1
            sent_progress = None
            deadline = time.monotonic() + lifetime
            last_write = time.monotonic()
            yield f"retry: {RETRY_MS}\n\n"
            while time.monotonic() < deadline:
                version = feed.wait(version, min(KEEPALIVE_SECONDS, max(0.0, deadline - time.monotonic())))
                # The feed renders each event once for all its watchers; one write sends what is new.
                parts = feed.events[position:]  # append-only: a slice is a consistent snapshot
                position += len(parts)
                if feed.progress_event is not sent_progress:
                    sent_progress = feed.progress_event
                    parts.append(sent_progress)
                if parts:
                    last_write = time.monotonic()
                    yield "".join(parts)
                if feed.ended and position >= len(feed.events):
                    if feed.status in runs.ACTIVE or not feed.status:
                        break  # the feed stopped while the run goes on (its reader failed): reconnect to a new one
                    yield sse("end", {"status": feed.status, "error": feed.error})
                    return
                if time.monotonic() - last_write > KEEPALIVE_SECONDS:
                    last_write = time.monotonic()
                    yield ": keepalive\n\n"
            yield sse("reconnect", {})
        finally:
            run_feed.leave(feed)

    try:
        response = Response(generate(), mimetype="text/event-stream", headers=SSE_HEADERS)
        response.call_on_close(release)  # the WSGI server closes every response, also when the browser left
    except BaseException:
        release()
        raise
    return response


@bp.after_request
def _stream_cors(response):
    """Let the pages' origin (FERRY_BASE_URL) read the live log from a stream process on another origin."""
    origin = request.headers.get("Origin", "")
    if request.endpoint == "runs.events" and current_app.config["FERRY_STREAM_URL"] and origin:
        page = urlsplit(current_app.config["FERRY_BASE_URL"])
        if origin == f"{page.scheme}://{page.netloc}":
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Allow-Headers"] = "Last-Event-ID, Cache-Control"
            response.headers["Vary"] = "Origin"
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
