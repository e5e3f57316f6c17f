"""Database engine settings: SQLite in WAL mode with a busy timeout, and a per-request SQL count for benchmarks.

With SQLite's default rollback journal a reader blocks a writer's commit and a writer blocks every new
reader; in WAL mode readers never wait and never make a writer wait, so only writers queue for the one
write lock, and the busy timeout lets them queue instead of failing with "database is locked".
PostgreSQL engines are left as they are.
"""

from __future__ import annotations

from flask import Flask, g, has_request_context
from sqlalchemy import event
from sqlalchemy.engine import Engine

from .extensions import db

SQLITE_BUSY_TIMEOUT_MS = 15000  # a writer waits this long for the write lock (gunicorn's timeout is 30 s)
SQL_COUNT_HEADER = "X-Ferry-SQL"  # statements one request ran; only with FERRY_BENCH=1


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


def _sql_count_header(response):
    """Tell a benchmark how many SQL statements the request ran."""
    response.headers[SQL_COUNT_HEADER] = str(g.get("ferry_sql_count", 0))
    return response


def configure_engine(engine: Engine, count_sql: bool = False) -> None:
    """Attach Ferry's connection settings to one engine (SQLite only) and, for benchmarks, the SQL counter."""
    if engine.dialect.name == "sqlite" and not event.contains(engine, "connect", sqlite_pragmas):
        event.listen(engine, "connect", sqlite_pragmas)
    if count_sql and not event.contains(engine, "before_cursor_execute", _count_statement):
        event.listen(engine, "before_cursor_execute", _count_statement)


def init_app(app: Flask) -> None:
    """Configure the app's engines (created by Flask-SQLAlchemy's init_app); FERRY_BENCH=1 adds the SQL count."""
    count_sql = bool(app.config.get("FERRY_BENCH"))
    with app.app_context():
        for engine in db.engines.values():
            configure_engine(engine, count_sql)
    if count_sql:
        app.after_request(_sql_count_header)
