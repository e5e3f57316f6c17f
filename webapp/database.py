"""Database engine settings: SQLite in WAL mode with a busy timeout, and per-request numbers for benchmarks.

With SQLite's default rollback journal a reader blocks a writer's commit and a writer blocks every new
reader; in WAL mode readers never wait and never make a writer wait, so only writers queue for the one
write lock, and the busy timeout lets them queue instead of failing with "database is locked".
PostgreSQL engines are left as they are.
"""

from __future__ import annotations

import os
import time

from flask import Flask, g, has_request_context
from sqlalchemy import event
from sqlalchemy.engine import Engine

from .extensions import db

SQLITE_BUSY_TIMEOUT_MS = 15000  # a writer waits this long for the write lock (gunicorn's timeout is 30 s)
SQL_COUNT_HEADER = "X-Ferry-SQL"  # statements one request ran; only with FERRY_BENCH=1
APP_TIME_HEADER = "X-Ferry-Time"  # ms from the view's start to its response (before_request to after_request)
WORKER_HEADER = "X-Ferry-Worker"  # the process that answered (gunicorn worker pid)


def sqlite_pragmas(dbapi_connection, _record) -> None:
    """Put a new SQLite connection in WAL mode with a busy timeout (WAL is persistent; the pragma is cheap)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")  # answers "memory" for in-memory databases: nothing to do
    finally:
        cursor.close()


def _count_statement(*_args) -> None:
    """Count one SQL statement for the current request (benchmark mode)."""
    if has_request_context():
        g.ferry_sql_count = g.get("ferry_sql_count", 0) + 1


def _start_clock() -> None:
    """Note when the request reached the app's view (benchmark mode)."""
    g.ferry_started = time.perf_counter()


def _bench_headers(response):
    """Tell a benchmark how many SQL statements the request ran, how long the app took and which worker it was."""
    response.headers[SQL_COUNT_HEADER] = str(g.get("ferry_sql_count", 0))
    started = g.get("ferry_started")
    if started is not None:
        response.headers[APP_TIME_HEADER] = f"{(time.perf_counter() - started) * 1000:.2f}"
    response.headers[WORKER_HEADER] = str(os.getpid())
    return response


def configure_engine(engine: Engine, count_sql: bool = False) -> None:
    """Attach Ferry's connection settings to one engine (SQLite only) and, for benchmarks, the SQL counter."""
    if engine.dialect.name == "sqlite" and not event.contains(engine, "connect", sqlite_pragmas):
        event.listen(engine, "connect", sqlite_pragmas)
    if count_sql and not event.contains(engine, "before_cursor_execute", _count_statement):
        event.listen(engine, "before_cursor_execute", _count_statement)


def init_app(app: Flask) -> None:
    """Configure the app's engines (created by Flask-SQLAlchemy's init_app); FERRY_BENCH=1 adds the bench headers."""
    count_sql = bool(app.config.get("FERRY_BENCH"))
    with app.app_context():
        for engine in db.engines.values():
            configure_engine(engine, count_sql)
    if count_sql:
        app.before_request(_start_clock)
        app.after_request(_bench_headers)
