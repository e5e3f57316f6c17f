"""Gunicorn settings for the Procfile's web and stream lines (`gunicorn -c webapp/serving.py …`).

A worker that has just loaded the app still has to compile every template on the first request that uses
it, and every gen-2 garbage collection walks the ~150,000 objects that importing Flask, SQLAlchemy, Babel
and the models created (measured: a 60 ms pause about once per 1,000 requests, in the middle of one).
So, once a worker has loaded the app, it compiles the templates and then freezes what exists (gc.freeze):
those objects live as long as the worker and the collector no longer walks them.

Gunicorn loads this file by its path in the master, before forking: it must import nothing but the standard
library. As `python:webapp.serving` it would import the `webapp` package (Flask, redis, ssl…) into the master,
before the stream line's gevent worker monkey-patches them, and its streams would block the one OS thread.
"""

from __future__ import annotations

import gc


def warm(app) -> int:
    """Compile every template of `app` now (Jinja keeps them); return how many. Not a Flask app: 0."""
    env = getattr(app, "jinja_env", None)
    if env is None:
        return 0
    names = env.list_templates()
    for name in names:
        env.get_template(name)
    return len(names)


def post_worker_init(worker) -> None:
    """Gunicorn hook, after the worker loaded the app: compile its templates, then freeze start-up's objects."""
    templates = warm(worker.wsgi)
    gc.freeze()
    worker.log.info("templates compiled: %d; objects frozen out of gc: %d", templates, gc.get_freeze_count())
