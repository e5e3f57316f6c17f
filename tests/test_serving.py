"""How the web process serves: worker start-up (webapp/serving.py), the Procfile's web line, row links."""

from __future__ import annotations

import gc
import logging
import urllib.request
from types import SimpleNamespace

import pytest

from tests.conftest import PASSWORD
from tests.support.servers import gunicorn, procfile_line, session_cookie
from tests.test_runs import running_run
from webapp import serving
from webapp.views import row_url


def test_warm_compiles_every_template(app):
    """Every template compiles at worker start (a broken one fails here, not in a user's first request)."""
    env = app.jinja_env
    env.cache.clear()
    names = env.list_templates()
    assert "tickets.html" in names and "base.html" in names
    assert serving.warm(app) == len(names)
    assert {key[1] for key in env.cache.keys()} >= set(names)  # compiled and kept
    assert serving.warm(object()) == 0  # not a Flask app: nothing to do


def test_post_worker_init_freezes_start_up_objects(app, caplog):
    """Gunicorn's hook leaves start-up's objects in the permanent generation, out of the collector's walks."""
    worker = SimpleNamespace(wsgi=app, log=logging.getLogger("gunicorn-test"))
    try:
        with caplog.at_level(logging.INFO, "gunicorn-test"):
            serving.post_worker_init(worker)
        assert gc.get_freeze_count() > 10_000
        assert "templates compiled" in caplog.text
    finally:
        gc.unfreeze()  # this test process lives on


def test_row_url_is_the_link_up_to_the_id(app):
    with app.test_request_context("/"):
        assert row_url("pages.ticket_detail", "ticket_id") == "/tickets/"
        with pytest.raises(ValueError):
            row_url("runs.log", "run_id")  # /runs/<id>/log: the id is not at the end


def test_the_web_line_serves_pages_on_sync_workers_and_no_streams(app, world, tmp_path):
    """The Procfile's web line as it is: pages answer, each request on a fresh connection (sync workers close
    it, so no client stays on one worker), and a live-log watcher is told to poll instead of holding a worker."""
    assert "--worker-class sync" in procfile_line("web") and "FERRY_MAX_STREAMS=0" in procfile_line("web")
    run = running_run()
    with gunicorn(app, tmp_path / "gunicorn.log") as base:
        cookie = session_cookie(base, "dev", PASSWORD)
        for _ in range(3):
            request = urllib.request.Request(f"{base}/tickets", headers={"Cookie": cookie})
            with urllib.request.urlopen(request, timeout=30) as r:
                assert r.status == 200 and r.headers["Connection"] == "close"
                assert "ticket-table" in r.read().decode()
        events = urllib.request.Request(f"{base}/runs/{run.id}/events", headers={"Cookie": cookie})
        with urllib.request.urlopen(events, timeout=5) as r:
            assert r.read().decode() == f'event: poll\ndata: {{"url": "/runs/{run.id}/log"}}\n\n'
    assert "templates compiled" in (tmp_path / "gunicorn.log").read_text()
