"""Ferry: a web-based code release system."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import auth, cli, config, database, i18n, instance, notify, views
from .extensions import csrf, db, login_manager, migrate


def create_app(test_config: dict | None = None) -> Flask:
    """Create and wire the Flask app; read config, bind extensions, register blueprints."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(config.from_env())
    if test_config:
        app.config.update(test_config)
    app.instance_path = str(app.config["FERRY_INSTANCE_DIR"])
    instance.init_app(app)
    hops = app.config["FERRY_PROXY_HOPS"]
    if hops:  # trust X-Forwarded-For/-Proto from exactly that many proxies; without proxies a client could forge them
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
    db.init_app(app)
    database.init_app(app)  # SQLite: WAL + busy timeout on every connection
    migrate.init_app(app, db, directory=str(config.REPO_ROOT / "migrations"))
    login_manager.init_app(app)
    csrf.init_app(app)
    auth.init_app(app)
    i18n.init_app(app)
    notify.init_app(app)
    views.init_app(app)
    cli.init_app(app)
    return app
