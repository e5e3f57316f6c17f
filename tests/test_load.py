"""Reads that never fail under load: SQLite in WAL mode, no write on the read path, no 5xx while a release runs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, select, text

from tests.support.flow import Flow
from tests.support.servers import gunicorn
from tests.support.workers import REPO, start_worker, stop_worker, wait_for, worker_env
from webapp.database import SQLITE_BUSY_TIMEOUT_MS
from webapp.extensions import db
from webapp.models import ApiToken, Run, Ticket, User, utcnow

CLIENTS = 16
LOAD_SECONDS = 20  # each client stops after this long or ROUNDS rounds, whichever comes first
ROUNDS = 40


def on_sqlite(app) -> bool:
    """Tell whether the test app runs on SQLite (FERRY_TEST_DATABASE_URL may point at PostgreSQL)."""
    return db.engine.dialect.name == "sqlite"


def test_sqlite_connections_use_wal_and_a_busy_timeout(app):
    """Every SQLite connection is in WAL mode (readers never block the writer) and waits for the write lock."""
    if not on_sqlite(app):
        pytest.skip("SQLite only: PostgreSQL engines are left as they are")
    for _ in range(2):  # a new connection gets the same settings
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS
        db.engine.dispose()


def test_api_reads_record_token_use_at_most_once_a_minute(app, client, world):
    """Reads write nothing on the request path: token use is recorded once a minute, on its own connection."""
    writes: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE")):
            writes.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        for path in ("/api/projects", "/api/tickets", "/api/projects/site/releases", "/api/runs") * 3:
            assert client.get(path, headers=world.headers("dev")).status_code == 200
        assert len(writes) == 1 and "api_token" in writes[0], writes  # the first call records the use
        token = db.session.scalar(select(ApiToken).join(User).where(User.username == "dev"))
        db.session.refresh(token)
        assert utcnow() - token.last_used_at < timedelta(seconds=10)
        token.last_used_at = utcnow() - timedelta(minutes=2)
        db.session.commit()
        writes.clear()
        for _ in range(3):
            assert client.get("/api/tickets", headers=world.headers("dev")).status_code == 200
        assert len(writes) == 1, writes  # a minute later: recorded again, once
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    db.session.refresh(token)
    assert utcnow() - token.last_used_at < timedelta(seconds=10)


def add_tickets(world, n: int) -> None:
    """Insert `n` tickets in one go (the list has something to page through)."""
    dev = db.session.scalar(select(User).where(User.username == "dev"))
    db.session.add_all(
        Ticket(project_id=world.project.id, state="released", reason=f"old change {i}", author_id=dev.id)
        for i in range(n)
    )
    db.session.commit()


def call(base: str, token: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """Make one API call over HTTP; return the status and the JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{base}/api{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_sixteen_api_clients_during_a_release_get_no_5xx(app, world, tmp_path):
    """16 parallel API clients (one token each for dev and lead) list tickets, read one and file + cancel tickets
    under gunicorn while a real release runs, its heartbeats beat and the reconciler loops: no answer is a 5xx."""
    if not on_sqlite(app):
        pytest.skip("the load that broke SQLite; PostgreSQL has row locks")
    app.config["FERRY_HEARTBEAT_TTL"] = 8  # a heartbeat write every 2 s, and a reconciler that would notice a gap
    add_tickets(world, 500)
    with world.hosts.inventory.open("a") as inventory:
        inventory.write("hook_sleep=12\n")  # the release runs through the whole load
    world.project.hook_tasks = "hooks/sleep.yml"
    db.session.commit()
    flow = Flow(app.test_client(), world)
    tid = flow.staged(reason="released under load")
    flow.approve(tid)
    worker = start_worker(app, tmp_path / "worker.log")
    with (tmp_path / "reconciler.log").open("ab") as out:  # the child keeps its own copy of the descriptor
        reconciler = subprocess.Popen(
            [str(Path(sys.executable).parent / "flask"), "--app", "webapp", "reconcile", "--every", "1"],
            cwd=REPO,
            env=worker_env(app),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    statuses: dict[int, int] = {}
    failures: list[str] = []
    lock = threading.Lock()
    try:
        with gunicorn(app, tmp_path / "gunicorn.log", FERRY_HEARTBEAT_TTL="8") as base:
            assert call(base, world.tokens["dev"], "POST", f"/tickets/{tid}/release", {})[0] == 200
            wait_for(lambda: (t := db.session.get(Ticket, tid)) and t.state == "releasing", what="release started")
            wait_for(lambda: db.session.scalar(select(Run).where(Run.ticket_id == tid, Run.status == "running")))
            deadline = time.monotonic() + LOAD_SECONDS

            def client(number: int) -> None:
                token = world.tokens["lead" if number % 4 == 0 else "dev"]
                for round_ in range(ROUNDS):
                    if time.monotonic() > deadline:
                        return
                    answers = [call(base, token, "GET", "/tickets?limit=50")]
                    answers.append(call(base, token, "GET", f"/tickets/{tid}"))
                    if round_ % 4 == number % 4:  # a write now and then: file a ticket, then cancel it
                        status, body = call(base, token, "POST", "/tickets", {"project": "site", "reason": "load"})
                        answers.append((status, body))
                        if status == 201:
                            answers.append(call(base, token, "POST", f"/tickets/{body['id']}/cancel", {}))
                    with lock:
                        for status, body in answers:
                            statuses[status] = statuses.get(status, 0) + 1
                            if status >= 500:
                                failures.append(f"{status} {body}")

            threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=LOAD_SECONDS + 60)
            assert not any(t.is_alive() for t in threads)
            wait_for(lambda: db.session.get(Ticket, tid).state != "releasing", timeout=60, what="release done")
    finally:
        stop_worker(worker)
        alive = reconciler.poll() is None
        reconciler.terminate()
        reconciler.wait(timeout=20)
    print(f"answers by status: {statuses}")
    assert not failures, (statuses, failures[:5])
    assert sum(statuses.values()) >= CLIENTS * 4, statuses
    assert set(statuses) <= {200, 201}, statuses  # nothing refused either: every write got its turn
    assert db.session.get(Ticket, tid).state == "released", db.session.get(Ticket, tid).last_error
    assert alive, (tmp_path / "reconciler.log").read_text()[-2000:]  # the reconciler never died of a locked DB
    text_log = (tmp_path / "gunicorn.log").read_text()
    assert "database is locked" not in text_log, text_log[-2000:]
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM run WHERE status = 'lost'")).scalar() == 0
