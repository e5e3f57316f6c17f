"""The app over real HTTP for tests and benchmarks: a threaded werkzeug server, or gunicorn as the Procfile runs it."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from werkzeug.serving import make_server

from tests.support.workers import REPO, worker_env

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


@contextmanager
def threaded_server(app) -> Iterator[str]:
    """Serve `app` with werkzeug (one thread per request) on a free port and yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="ferry-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procfile_line(name: str) -> str:
    """Return the command of the Procfile's `name` line (web, stream, worker, reconciler)."""
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise KeyError(f"the Procfile has no {name!r} line")


@contextmanager
def gunicorn(app, log: Path, stream: bool = False, **env: str) -> Iterator[str]:
    """Run the app exactly as the Procfile's `web` line does (its own command, through the shell, bound to a
    free port), yield its base URL.

    `stream=True`: as the Procfile's `stream` line does instead (one gevent worker, for /runs/<id>/events).
    """
    port = free_port()
    bind = "FERRY_STREAM_BIND" if stream else "FERRY_BIND"
    env = worker_env(app, **env, **{bind: f"127.0.0.1:{port}"})
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", procfile_line("stream" if stream else "web")],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the shell, gunicorn's master and workers
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/login", timeout=5).read()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):  # not listening yet, or busy starting
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield base
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started in its own session and everything in its group: TERM, then KILL what is left
    after `timeout` seconds (gunicorn's master lets its workers finish their requests first)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()  # reap the shell, or the group never empties
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def session_cookie(base: str, username: str, password: str, user_agent: str | None = None) -> str:
    """Log in through the real form (with its CSRF token) and return the `Cookie` header a browser would send.

    `user_agent`: the User-Agent to log in with; a client that sends the same one with the cookie keeps its
    session as a browser does (a different one makes Flask-Login's session protection re-issue the cookie).
    """
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    if user_agent:
        opener.addheaders = [("User-Agent", user_agent)]
    page = opener.open(f"{base}/login", timeout=30).read().decode()
    found = CSRF_INPUT.search(page)
    fields = {"username": username, "password": password, **({"csrf_token": found.group(1)} if found else {})}
    opener.open(f"{base}/login", data=urllib.parse.urlencode(fields).encode(), timeout=30).read()
    cookie = "; ".join(f"{c.name}={c.value}" for c in jar if c.name == "session")
    if not cookie:
        raise RuntimeError(f"login as {username} failed")
    return cookie
