"""Configuration read from the environment, with named defaults."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_STAGE_TIMEOUT = 1800  # seconds a playbook may run before it is stopped
DEFAULT_KEEP_RELEASES = 5  # releases kept per host (a project setting)
DEFAULT_FORKS = 10  # hosts synced in parallel (a project setting)
DEFAULT_RUN_RETENTION = 50  # run directories kept per project
# Live-log (SSE) streams one threaded web process serves at once (e.g. `flask run`, gunicorn --threads N: keep
# it at most half the threads); the rest stay free for pages and the API. The Procfile's web line sets 0: a
# sync worker serves one request at a time, so a stream would hold it whole; its pages' watchers poll or, as
# in every layout the README describes, stream from the `stream` line (gevent, no cap).
DEFAULT_MAX_STREAMS = 4
DEFAULT_STREAM_SECONDS = 60  # one SSE connection's lifetime; the browser reconnects with Last-Event-ID
DEFAULT_BASE_URL = "http://127.0.0.1:5000"  # where ticket links in notifications point
DEFAULT_NOTIFY_BACKOFF = "30,120"  # seconds before the 2nd and 3rd delivery attempt
DEFAULT_LDAP_USER_FILTER = "(uid={username})"


def from_env() -> dict:
    """Return the settings taken from the environment at app creation time."""
    instance = Path(os.environ.get("FERRY_INSTANCE_DIR", REPO_ROOT / "instance")).resolve()
    data_dir = Path(os.environ.get("FERRY_DATA_DIR", instance / "data")).resolve()
    return {
        # No built-in key: without SECRET_KEY the app generates one in the instance folder (webapp/instance.py).
        "SECRET_KEY": os.environ.get("SECRET_KEY") or None,
        "SQLALCHEMY_DATABASE_URI": os.environ.get("DATABASE_URL", f"sqlite:///{instance / 'ferry.sqlite3'}"),
        "FERRY_INSTANCE_DIR": instance,
        "REDIS_URL": os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        "FERRY_DATA_DIR": data_dir,
        "FERRY_INVENTORY_DIR": Path(os.environ.get("FERRY_INVENTORY_DIR", REPO_ROOT / "inventory")).resolve(),
        "FERRY_PLAYBOOK_DIR": Path(os.environ.get("FERRY_PLAYBOOK_DIR", REPO_ROOT / "playbooks")).resolve(),
        "FERRY_QUEUE": os.environ.get("FERRY_QUEUE", "ferry"),
        "FERRY_HOSTNAME": os.environ.get("FERRY_HOSTNAME", ""),  # a worker machine's name on runs (default: hostname)
        "FERRY_STAGE_TIMEOUT": int(os.environ.get("FERRY_STAGE_TIMEOUT", DEFAULT_STAGE_TIMEOUT)),
        "FERRY_RUN_RETENTION": int(os.environ.get("FERRY_RUN_RETENTION", DEFAULT_RUN_RETENTION)),
        "FERRY_HEARTBEAT_TTL": int(os.environ.get("FERRY_HEARTBEAT_TTL", 45)),
        "FERRY_REQUEUE_GRACE": int(os.environ.get("FERRY_REQUEUE_GRACE", 20)),
        "FERRY_PROXY_HOPS": int(os.environ.get("FERRY_PROXY_HOPS", 0)),  # reverse proxies in front (ProxyFix)
        "FERRY_MAX_STREAMS": int(os.environ.get("FERRY_MAX_STREAMS", DEFAULT_MAX_STREAMS)),
        "FERRY_STREAM_SECONDS": int(os.environ.get("FERRY_STREAM_SECONDS", DEFAULT_STREAM_SECONDS)),
        # The Procfile's stream line as browsers reach it when no proxy routes /runs/<id>/events to it (e.g.
        # http://127.0.0.1:5001); empty: the page's own origin. Pages must come from FERRY_BASE_URL's origin.
        "FERRY_STREAM_URL": os.environ.get("FERRY_STREAM_URL", "").rstrip("/"),
        "FERRY_BASE_URL": os.environ.get("FERRY_BASE_URL", DEFAULT_BASE_URL),
        "FERRY_SMTP_URL": os.environ.get("FERRY_SMTP_URL", ""),  # smtp://user:pass@host:587?starttls=1, smtps://…
        "FERRY_MAIL_FROM": os.environ.get("FERRY_MAIL_FROM", "ferry@localhost"),
        "FERRY_NOTIFY_TIMEOUT": int(os.environ.get("FERRY_NOTIFY_TIMEOUT", 10)),  # seconds per delivery attempt
        "FERRY_NOTIFY_TRIES": int(os.environ.get("FERRY_NOTIFY_TRIES", 3)),
        "FERRY_NOTIFY_BACKOFF": os.environ.get("FERRY_NOTIFY_BACKOFF", DEFAULT_NOTIFY_BACKOFF),
        "FERRY_LDAP_URL": os.environ.get("FERRY_LDAP_URL", ""),  # empty: company logins off
        "FERRY_LDAP_BIND_DN": os.environ.get("FERRY_LDAP_BIND_DN", ""),
        "FERRY_LDAP_BIND_PASSWORD": os.environ.get("FERRY_LDAP_BIND_PASSWORD", ""),
        "FERRY_LDAP_USER_BASE": os.environ.get("FERRY_LDAP_USER_BASE", ""),
        "FERRY_LDAP_USER_FILTER": os.environ.get("FERRY_LDAP_USER_FILTER", DEFAULT_LDAP_USER_FILTER),
        "FERRY_LDAP_USERNAME_ATTR": os.environ.get("FERRY_LDAP_USERNAME_ATTR", "uid"),
        "FERRY_LDAP_ADMIN_GROUPS": os.environ.get("FERRY_LDAP_ADMIN_GROUPS", ""),  # group DNs separated by ";"
        "FERRY_LDAP_TIMEOUT": int(os.environ.get("FERRY_LDAP_TIMEOUT", 5)),
        # Time zone of dates on pages for users who chose none in their profile (an IANA name, e.g. Asia/Shanghai).
        "FERRY_TIMEZONE": os.environ.get("FERRY_TIMEZONE", "UTC"),
        "FERRY_BENCH": os.environ.get("FERRY_BENCH", "") == "1",  # X-Ferry-SQL/-Time/-Worker headers (database.py)
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": os.environ.get("FERRY_HTTPS", "") == "1",
        "MAX_CONTENT_LENGTH": 1024 * 1024,  # no form or API body needs more than 1 MB
    }
