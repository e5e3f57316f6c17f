"""The health check action plugin's logic against a real local HTTP server (status ranges, body, retries)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.plugins import load_plugin

health = load_plugin("ferry_health")


class Handler(BaseHTTPRequestHandler):
    """/ok → 200 "all good"; /broken → 500; /flaky → 503 twice, then 200; /slow → 200 after 2 s."""

    hits: dict[str, int] = {}

    def do_GET(self):  # noqa: N802
        """Answer by path."""
        n = Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        if self.path == "/slow":
            time.sleep(2)
        code = {"/ok": 200, "/broken": 500, "/slow": 200}.get(self.path, 503 if n <= 2 else 200)
        body = b"all good" if code == 200 else b"<h1>Fatal error</h1> in index.php"
        try:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (the timeout case)

    def log_message(self, *args):
        """Stay quiet."""


@pytest.fixture(scope="module")
def server():
    """Serve Handler on a free loopback port."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_status_specs():
    """2xx, lists and ranges; anything else is refused."""
    assert health.parse_expect("2xx") == [(200, 299)]
    assert health.parse_expect("200,301") == [(200, 200), (301, 301)]
    assert health.parse_expect("200-399") == [(200, 399)]
    with pytest.raises(ValueError):
        health.parse_expect("abc")


def test_healthy_unhealthy_body_and_retries(server):
    """A 200 with the body passes; a 500 fails with its status and body excerpt; flaky passes on retry."""
    ok = health.check(f"{server}/ok", "2xx", "all good", 3, 0.1, 2)
    assert ok["healthy"] and ok["status"] == 200 and ok["attempts"] == 1
    bad = health.check(f"{server}/broken", "2xx", "", 2, 0.1, 2)
    assert not bad["healthy"] and bad["status"] == 500 and "Fatal error" in bad["excerpt"] and bad["attempts"] == 2
    assert "expected 2xx" in bad["why"]
    lacks = health.check(f"{server}/ok", "2xx", "welcome", 1, 0.1, 2)
    assert not lacks["healthy"] and "lacks" in lacks["why"]
    flaky = health.check(f"{server}/flaky", "200", "", 3, 0.1, 2)
    assert flaky["healthy"] and flaky["attempts"] == 3
    slow = health.check(f"{server}/slow", "2xx", "", 1, 0.1, 0.5)
    assert not slow["healthy"] and slow["status"] is None and "no answer" in slow["why"]
    down = health.check("http://127.0.0.1:9/", "2xx", "", 1, 0.1, 1)
    assert not down["healthy"] and "no answer" in down["why"]
