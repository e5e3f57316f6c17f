"""Watchers following a run's live log as ferry.js does: SSE, reconnect with Last-Event-ID, poll when told."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime

POLL_SECONDS = 1.0  # as ferry.js
LATE_SECONDS = 0.5  # lines later than this are kept with their time, to see when lateness happens


def created_at(text: str) -> float | None:
    """Return the epoch seconds of a log entry's `at` (ansible-runner's `created`, UTC), or None when absent."""
    if not text:
        return None
    at = datetime.fromisoformat(text)
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


@dataclass
class Watch:
    """What one watcher saw: the log lines in order, and how it got them."""

    lines: list[str] = field(default_factory=list)
    status: str = ""
    sse_lines: int = 0
    polled_lines: int = 0
    connections: int = 0  # SSE connections opened (1 + reconnects)
    polls: int = 0
    started: float = field(default_factory=time.time)
    lags: list[float] = field(default_factory=list)  # seconds from ansible's event to arrival, lines emitted since
    late: list[tuple[float, float]] = field(default_factory=list)  # (created, lag) of lines later than LATE_SECONDS

    def add(self, entry: dict) -> None:
        """Record one log entry and, for a line ansible emitted after the watcher started, how late it arrived."""
        self.lines.append(entry["line"])
        created = created_at(entry.get("at", ""))
        if created is not None and created >= self.started:
            self.lags.append(time.time() - created)
            if self.lags[-1] > LATE_SECONDS:
                self.late.append((created, self.lags[-1]))


def _get(base: str, path: str, cookie: str, headers: dict | None = None, timeout: float = 30):
    """Open a GET request with the page's session cookie."""
    request = urllib.request.Request(f"{base}{path}", headers={"Cookie": cookie, **(headers or {})})
    return urllib.request.urlopen(request, timeout=timeout)


def _poll(base: str, url: str, cookie: str, watch: Watch, deadline: float) -> Watch:
    """Poll the JSON log endpoint from the number of lines seen until the run ends, on one kept-alive connection
    (as a browser's fetch does)."""
    host, port = urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        while time.monotonic() < deadline:
            try:
                connection.request("GET", f"{url}?offset={len(watch.lines)}", headers={"Cookie": cookie})
                response = connection.getresponse()
                data = json.loads(response.read())
            except (http.client.HTTPException, ConnectionError):  # the server closed an idle connection: reopen
                connection.close()
                time.sleep(0.1)
                continue
            if response.status != 200:
                raise RuntimeError(f"GET {url}: {response.status}")
            watch.polls += 1
            for entry in data["lines"]:
                watch.add(entry)
            watch.polled_lines += len(data["lines"])
            if not data["active"]:
                watch.status = data["status"]
                return watch
            time.sleep(POLL_SECONDS)
    finally:
        connection.close()
    raise TimeoutError(f"run still active after polling {watch.polls} times")


def follow(base: str, run_id: int, cookie: str, timeout: float = 120) -> Watch:
    """Follow a run to its end like the ticket page: SSE, reconnect after the stream's lifetime, poll when told."""
    watch = Watch()
    last_id = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id} if last_id else {})}
        watch.connections += 1
        poll_url = None
        with _get(base, f"/runs/{run_id}/events", cookie, headers) as stream:
            event = data = event_id = None
            for raw in stream:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line.startswith("id: "):
                    event_id = line[4:]
                elif line == "" and event:  # end of one event
                    if event_id:
                        last_id = event_id  # EventSource remembers it for the reconnect
                    if event == "line":
                        watch.add(json.loads(data))
                        watch.sse_lines += 1
                    elif event == "poll":
                        poll_url = json.loads(data)["url"]
                        break
                    elif event == "end":
                        watch.status = json.loads(data)["status"]
                        return watch
                    event = data = event_id = None
        # Closed, as EventSource.close() does: a connection left open would hold the server's socket.
        if poll_url:
            return _poll(base, poll_url, cookie, watch, deadline)
        # The stream ended without "end" (its lifetime is over): reconnect, as EventSource does.
    raise TimeoutError(f"run not ended after {watch.connections} connections")
