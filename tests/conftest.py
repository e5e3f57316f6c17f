"""Shared fixtures: app on a real database, a real Redis, an SVN repo, local hosts, users, a project."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from flask import g
from redis import Redis
from rq import Queue, SimpleWorker

from tests.support.site import LocalHosts, SvnRepo, make_local_hosts, make_svn_repo
from webapp import create_app, models
from webapp import projects as svc
from webapp.auth import issue_token
from webapp.extensions import db

pytest_plugins = ["tests.support.hosts_fixture", "tests.support.browser"]

TEST_REDIS_URL = os.environ.get("FERRY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PASSWORD = "correct-horse-battery"


@pytest.fixture(autouse=True)
def quick_hashing(monkeypatch):
    """Hash test users' passwords with cheap argon2id parameters (the real ones cost ~0.3 s per user).

    Only the cost changes; test_security.test_passwords_are_argon2id checks the app's real hasher.
    """
    monkeypatch.setattr(models, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def app(tmp_path):
    """Return an app bound to a fresh database, a flushed Redis db and a temp data dir."""
    database = os.environ.get("FERRY_TEST_DATABASE_URL") or f"sqlite:///{tmp_path / 'ferry.sqlite3'}"
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": database,
            "REDIS_URL": TEST_REDIS_URL,
            "FERRY_DATA_DIR": tmp_path / "data",
            "FERRY_INVENTORY_DIR": tmp_path / "inventory",
            "FERRY_QUEUE": "ferry-test",
            "WTF_CSRF_ENABLED": False,
            "SECRET_KEY": "test-secret-key",
        }
    )
    (tmp_path / "inventory").mkdir()

    @app.before_request
    def _like_a_fresh_request():
        # Tests keep one app context open, which Flask reuses for requests: drop what a real request
        # would not inherit (the logged-in user cached in g, rows cached in the session).
        g.pop("_login_user", None)
        g.pop("_flask_babel", None)  # Flask-Babel's per-request language, zone and catalog
        db.session.expire_all()

    redis = Redis.from_url(TEST_REDIS_URL)
    redis.flushdb()
    with app.app_context():
        db.drop_all()
        db.create_all()
        yield app
        db.session.remove()
        db.drop_all()
        db.engine.dispose()
    redis.flushdb()


@pytest.fixture
def client(app):
    """Return a test client for pages and the API."""
    return app.test_client()


@dataclass
class World:
    """A ready project with its SVN repo, local hosts and users (dev, dev2, lead, lead2, other, admin)."""

    app: object
    svn: SvnRepo
    hosts: LocalHosts
    project: object
    tokens: dict
    staging_dir: Path

    def work(self) -> None:
        """Run every queued job with a real RQ worker (burst), in this process."""
        redis = Redis.from_url(self.app.config["REDIS_URL"])
        queue = Queue(self.app.config["FERRY_QUEUE"], connection=redis)
        SimpleWorker([queue], connection=redis).work(burst=True)
        db.session.expire_all()

    def headers(self, user: str) -> dict:
        """Return API headers authenticating as `user`."""
        return {"Authorization": f"Bearer {self.tokens[user]}"}


def build_world(app, tmp_path: Path, n_hosts: int = 3, **settings) -> World:
    """Create users, an SVN repo, local hosts and a project with members."""
    svn = make_svn_repo(tmp_path / "svn")
    # Project inventories must live in the configured inventory directory.
    hosts = make_local_hosts(tmp_path / "prod", n_hosts, inventory=app.config["FERRY_INVENTORY_DIR"] / "hosts.ini")
    staging_dir = tmp_path / "staging" / "wc"
    users = {}
    for name in ("dev", "dev2", "lead", "lead2", "other", "admin"):
        users[name] = svc.create_user(db.session, name, PASSWORD, is_admin=name == "admin")
    project = svc.create_project(
        db.session,
        "site",
        svn_url=svn.url,
        staging_dir=str(staging_dir),
        staging_url="http://staging.site.test/",
        inventory=str(hosts.inventory),
        group=hosts.group,
        **settings,
    )
    other_project = svc.create_project(
        db.session,
        "elsewhere",
        svn_url=svn.url,
        staging_dir=str(tmp_path / "staging2"),
        inventory=str(hosts.inventory),
        group=hosts.group,
    )
    svc.set_member(db.session, project, users["dev"], "developer")
    svc.set_member(db.session, project, users["dev2"], "developer")
    svc.set_member(db.session, project, users["lead"], "lead")
    svc.set_member(db.session, other_project, users["other"], "developer")
    svc.set_member(db.session, other_project, users["lead2"], "lead")
    tokens = {name: issue_token(u) for name, u in users.items()}
    db.session.commit()
    return World(
        app=app,
        svn=svn,
        hosts=hosts,
        project=project,
        tokens=tokens,
        staging_dir=staging_dir,
    )


@pytest.fixture
def world(app, tmp_path):
    """Return a ready project on local hosts (atomic mode)."""
    return build_world(app, tmp_path)


def pytest_configure(config):
    """Register markers and turn warnings from our own code into errors."""
    config.addinivalue_line("markers", "integration: talks to real svn/git/rsync/ansible-runner/Redis")
    warnings.filterwarnings("error", module="webapp")
    warnings.filterwarnings("error", module="jobs")
