"""The app over real HTTP for tests and benchmarks: a threaded werkzeug server, or gunicorn as the Procfile runs it."""

from __future__ import annotations

import http.cookiejar
import re
import socket
import subprocess
import sys
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


@contextmanager
def gunicorn(app, log: Path, workers: int = 2, threads: int = 8, stream: bool = False, **env: str) -> Iterator[str]:
    """Run the app under gunicorn exactly as the Procfile's `web` line does (gthread), yield its base URL.

    `stream=True`: as the Procfile's `stream` line does instead (one gevent worker, for /runs/<id>/events).
    """
    port = free_port()
    argv = [str(Path(sys.executable).parent / "gunicorn")]
    if stream:
        argv += ["--worker-class", "gevent", "--workers", "1", "--worker-connections", "2000"]
    else:
        argv += ["--workers", str(workers), "--threads", str(threads)]
    argv += ["--bind", f"127.0.0.1:{port}", "webapp:create_app()"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=worker_env(app, **env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
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
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def session_cookie(base: str, username: str, password: str) -> str:
    """Log in through the real form (with its CSRF token) and return the `Cookie` header a browser would send."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base}/login", timeout=30).read().decode()
    found = CSRF_INPUT.search(page)
    fields = {"username": username, "password": password, **({"csrf_token": found.group(1)} if found else {})}
    opener.open(f"{base}/login", data=urllib.parse.urlencode(fields).encode(), timeout=30).read()
    cookie = "; ".join(f"{c.name}={c.value}" for c in jar if c.name == "session")
    if not cookie:
        raise RuntimeError(f"login as {username} failed")
    return cookie
