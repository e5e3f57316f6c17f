"""A live run's log as one shared feed per web process: one reader follows the run, every watcher reads memory.

Without it each SSE watcher read the run from the DB and blocked in its own XREAD every round, so 200 watchers
of one run cost 200 DB reads and 200 Redis reads per round. A feed's reader thread (a greenlet under the gevent
stream process) reads the run's status, then its Redis log stream and host progress, appends what is new and
wakes its watchers; it stops once the run has ended or nobody has watched it for a while.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time

from flask import Flask
from redis.exceptions import RedisError

from . import runs
from .extensions import db
from .live import log_stream_key, redis_connection
from .models import Run

BLOCK_MS = 500  # how long one XREAD waits: bounds how late a status change (the run's end) is noticed
LINGER_SECONDS = 5.0  # a feed nobody watches stays this long (browsers reconnect after a stream's lifetime)
_registry_lock = threading.Lock()
logger = logging.getLogger(__name__)


def sse(event: str, data: object, event_id: str | None = None) -> str:
    """Format one Server-Sent Event."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


def _stream_id(text: str) -> tuple[int, int]:
    """Return a Redis stream entry id (`ms-seq`) as a sortable pair."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RunFeed:
    """What one process knows of a live run: its log entries so far, host progress and status."""

    def __init__(self, app: Flask, run_id: int):
        self.app = app
        self.run_id = run_id
        self.events: list[str] = []  # each log line as its SSE `line` event (id: the stream id), in order
        self._ids: list[tuple[int, int]] = []  # sortable stream ids of `events` (for Last-Event-ID)
        self.progress: dict = {}
        self.progress_event: str | None = None  # the progress as its SSE event, a new string on each change
        self.status = ""
        self.error = ""
        self.ended = False
        self.version = 0  # bumped on every change; watchers wait for it to move
        self.watchers = 0
        self._idle_since = time.monotonic()
        self._changed = threading.Condition()

    def start(self) -> None:
        """Start the reader."""
        threading.Thread(target=self._read, name=f"ferry-run-feed-{self.run_id}", daemon=True).start()

    def position_after(self, last_id: str) -> int:
        """Return the index of the first entry after stream id `last_id` ("0": from the start)."""
        if last_id == "0":
            return 0
        try:
            wanted = _stream_id(last_id)
        except ValueError:
            return 0
        with self._changed:
            if len(self._ids) < len(self.events):  # the stored log (no ids): a resumed watcher has it already
                return len(self.events)
            return bisect.bisect_right(self._ids, wanted)

    def wait(self, version: int, timeout: float) -> int:
        """Wait until the feed changed since `version` (or `timeout` passed); return the current version."""
        with self._changed:
            if self.version == version and not self.ended:
                self._changed.wait(timeout)
            return self.version

    def _publish(self, entries: list[tuple[str | None, dict]], run: Run | None, progress: dict, ended: bool) -> None:
        """Take one round's news and wake the watchers if anything changed."""
        with self._changed:
            changed = bool(entries) or ended
            for entry_id, entry in entries:
                self.events.append(sse("line", entry, entry_id))
                if entry_id is not None:
                    self._ids.append(_stream_id(entry_id))
            if run is not None and (run.status, run.error or "", progress) != (self.status, self.error, self.progress):
                if progress != self.progress or self.progress_event is None:
                    self.progress_event = sse("progress", progress)
                self.status, self.error, self.progress = run.status, run.error or "", progress
                changed = True
            self.ended = self.ended or ended
            if changed:
                self.version += 1
                self._changed.notify_all()

    def _idle(self) -> bool:
        """Tell whether nobody has watched this feed for LINGER_SECONDS."""
        with self._changed:
            if self.watchers:
                self._idle_since = time.monotonic()
            return time.monotonic() - self._idle_since > LINGER_SECONDS

    def _read(self) -> None:
        """Follow the run until it ends or nobody watches; never raise (a thread's error would go unseen)."""
        try:
            with self.app.app_context():
                try:
                    self._follow()
                finally:
                    db.session.remove()
        except Exception:  # noqa: BLE001 - the watchers get `end` below and reconnect to a new feed
            logger.exception("live feed of run %s failed", self.run_id)
        finally:
            _forget(self)
            self._publish([], None, self.progress, ended=True)

    def _follow(self) -> None:
        """Read the run's status, then new stream entries and progress, round after round."""
        redis = redis_connection()
        key = log_stream_key(self.run_id)
        last_id = "0"
        streamed = False
        while not self._idle():
            # The run before the stream: a run seen finished here wrote its last line before this XREAD.
            run = db.session.get(Run, self.run_id, populate_existing=True)
            db.session.commit()  # end the read transaction so the next round sees the worker's commits
            if run is None:
                return
            try:
                batch = redis.xread({key: last_id}, block=BLOCK_MS, count=1000) or []
            except RedisError:
                batch = []
                time.sleep(BLOCK_MS / 1000)
            entries: list[tuple[str | None, dict]] = []
            for _key, items in batch:
                for entry_id, fields in items:
                    last_id = entry_id.decode()
                    entries.append((last_id, {k.decode(): v.decode() for k, v in fields.items()}))
            streamed = streamed or bool(entries)
            ended = run.status not in runs.ACTIVE and not batch
            if ended and not streamed:  # live stream gone (Redis flushed or expired): the stored log
                entries = [(None, entry) for entry in runs.log_lines(run)]
            self._publish(entries, run, runs.progress(run), ended)
            if ended:
                return


def _feeds(app: Flask) -> dict[int, RunFeed]:
    """Return this process's live feeds by run id."""
    return app.extensions.setdefault("ferry_run_feeds", {})


def _forget(feed: RunFeed) -> None:
    """Drop an ended feed, so the next watcher starts a new one."""
    with _registry_lock:
        feeds = _feeds(feed.app)
        if feeds.get(feed.run_id) is feed:
            del feeds[feed.run_id]


def watch(app: Flask, run_id: int) -> RunFeed:
    """Return the run's feed in this process (started if needed), counting one more watcher; see `leave`."""
    with _registry_lock:
        feeds = _feeds(app)
        feed = feeds.get(run_id)
        if feed is None:
            feed = feeds[run_id] = RunFeed(app, run_id)
            feed.start()
        with feed._changed:
            feed.watchers += 1
        return feed


def leave(feed: RunFeed) -> None:
    """Count one watcher less."""
    with feed._changed:
        feed.watchers -= 1
        feed._idle_since = time.monotonic()
