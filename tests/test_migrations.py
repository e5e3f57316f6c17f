"""The schema is managed by Alembic: `flask db upgrade` builds exactly what the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from webapp.extensions import db


def test_upgrade_creates_the_models_schema_and_downgrade_removes_it(app):
    """Upgrading an empty database yields the models' schema with no difference left; downgrade empties it."""
    db.drop_all()
    upgrade()
    tables = set(inspect(db.engine).get_table_names())
    assert {"user", "project", "membership", "ticket", "ticket_event", "release", "run", "host_result"} <= tables
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
    assert diff == []
    downgrade(revision="base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    db.create_all()  # the fixture's teardown drops the models' tables
