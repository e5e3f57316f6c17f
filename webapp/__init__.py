"""Ferry: a web-based code release system.

Set `FERRY_ENV=production` on production hosts: the app then refuses to start with the
development SECRET_KEY (sessions and CSRF tokens signed with a public key can be forged).
"""

from __future__ import annotations

import os

from flask import Flask

from . import auth, cli, config, views
from .extensions import csrf, db, login_manager, migrate


def _refuse_unsafe_production(app: Flask) -> None:
    """Raise RuntimeError when a production app would sign sessions with the public default key."""
    if app.testing or os.environ.get("FERRY_ENV", "") != "production":
        return
    if app.config.get("SECRET_KEY") in (None, "", config.DEFAULT_SECRET_KEY):
        raise RuntimeError(
            "FERRY_ENV=production but SECRET_KEY is unset or the development default; "
            'set SECRET_KEY to a long random value (e.g. python -c "import secrets; print(secrets.token_hex(32))")'
        )


def create_app(test_config: dict | None = None) -> Flask:
    """Create and wire the Flask app; read config, bind extensions, register blueprints."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(config.from_env())
    if test_config:
        app.config.update(test_config)
    _refuse_unsafe_production(app)
    db.init_app(app)
    migrate.init_app(app, db, directory=str(config.REPO_ROOT / "migrations"))
    login_manager.init_app(app)
    csrf.init_app(app)
    auth.init_app(app)
    views.init_app(app)
    cli.init_app(app)
    return app
