"""Runs you can watch, stop, replay and trust: live log, cancel, timeout, locks, crash recovery, replay."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import select

from jobs.cli import runs_cli
from jobs.reconcile import reconcile
from tests.conftest import PASSWORD
from tests.support.flow import Flow
from tests.support.servers import gunicorn, session_cookie
from tests.support.watchers import follow
from tests.support.workers import ansible_processes, kill_worker, start_worker, stop_worker, wait_for
from tests.test_permissions import make_ticket
from webapp.extensions import db
from webapp.live import log_stream_key, progress_key
from webapp.models import Run, Ticket, utcnow

pytestmark = pytest.mark.integration


@pytest.fixture
def flow(client, world):
    """Return API shortcuts for the world."""
    return Flow(client, world)


def run_of(tid: int, stage: str) -> Run | None:
    """Return the newest run of a stage for a ticket."""
    return db.session.scalar(select(Run).where(Run.ticket_id == tid, Run.stage == stage).order_by(Run.id.desc()))


def approved_with_sleep_hook(flow, world, seconds: int = 30) -> int:
    """Return an approved ticket of a project whose release runs a hook that sleeps on every host."""
    world.project.hook_tasks = "hooks/sleep.yml"
    db.session.commit()
    tid = flow.staged(reason="slow release")
    flow.approve(tid)
    return tid


def test_log_lines_and_host_progress_live_and_after_redis_flush(flow, world, client, app):
    """A run's log and per-host results are in the API; after Redis is flushed they come from the DB."""
    t = flow.ship({"index.html": "<h1>two</h1>\n"}, "two")
    run = run_of(t["id"], "release")
    body = client.get(f"/api/runs/{run.id}", headers=world.headers("dev")).get_json()
    assert body["status"] == "successful"
    assert any("Stage release" in e["line"] for e in body["lines"])
    assert not any("\x1b" in e["line"] for e in body["lines"])  # plain text, no colour codes
    assert {h for h in body["progress"]} == {"web1", "web2", "web3"}
    tail = client.get(f"/api/runs/{run.id}?offset={body['next_offset'] - 2}", headers=world.headers("dev")).get_json()
    assert tail["lines"] == body["lines"][-2:]
    Redis.from_url(app.config["REDIS_URL"]).flushdb()
    after = client.get(f"/api/runs/{run.id}", headers=world.headers("dev")).get_json()
    assert [e["line"] for e in after["lines"]] == [e["line"] for e in body["lines"]]
    assert client.get(f"/api/runs/{run.id}", headers=world.headers("other")).status_code == 404


def test_event_stream_replays_then_ends(flow, world, app):
    """The page's SSE endpoint replays a finished run's log from the start and then says it ended."""
    tid = flow.staged(reason="sse")
    run = run_of(tid, "staging")
    c = app.test_client()
    c.post("/login", data={"username": "dev", "password": "correct-horse-battery"})
    body = c.get(f"/runs/{run.id}/events").get_data(as_text=True)
    events = [block for block in body.split("\n\n") if block]
    assert events[-1].startswith("event: end")
    lines = [json.loads(b.split("data: ", 1)[1])["line"] for b in events if b.startswith("id:") or "event: line" in b]
    assert any("Svn update and snapshot commit" in line for line in lines)
    assert '"successful"' in events[-1]


def test_cancel_a_running_release_stops_ansible_and_fails_the_ticket(flow, world, app, tmp_path):
    """Cancel during a release: run canceled, ticket release_failed (retryable), no ansible/rsync left."""
    tid = approved_with_sleep_hook(flow, world)
    flow.act(tid, "release")
    worker = start_worker(app, tmp_path / "worker.log", burst=True)
    try:
        wait_for(lambda: (r := run_of(tid, "release")) and r.status == "running", what="release running")
        wait_for(lambda: ansible_processes(str(tmp_path)), what="ansible running")
        r = flow.client.post(f"/api/runs/{run_of(tid, 'release').id}/cancel", headers=world.headers("dev2"))
        assert r.status_code == 403  # neither who started it nor a lead
        started = time.monotonic()
        r = flow.client.post(f"/api/runs/{run_of(tid, 'release').id}/cancel", headers=world.headers("lead"))
        assert r.status_code == 200
        wait_for(lambda: run_of(tid, "release").status == "canceled", timeout=30, what="run canceled")
        elapsed = time.monotonic() - started
        worker.wait(timeout=30)
    finally:
        stop_worker(worker)
    assert elapsed < 15
    t = flow.get(tid)
    assert t["state"] == "release_failed" and "canceled" in t["last_error"]
    assert "retry" in t["allowed_actions"]
    time.sleep(0.5)
    assert ansible_processes(str(tmp_path)) == []


def test_stage_timeout_fails_the_run(flow, world, app):
    """A release that outlives the project's stage timeout ends as timeout and release_failed."""
    world.project.stage_timeout = 4
    tid = approved_with_sleep_hook(flow, world)
    t = flow.release(tid)
    assert t["state"] == "release_failed"
    assert "timed out" in t["last_error"]
    assert run_of(tid, "release").status == "timeout"


def test_second_release_of_a_project_waits_for_the_lock(flow, world, app, tmp_path):
    """Two workers: a second release of the same project waits, and the run says what it waits for."""
    world.project.hook_tasks = "hooks/sleep.yml"
    db.session.commit()
    first = approved_with_sleep_hook(flow, world)
    world.svn.commit({"b.html": "B\n"}, "B")
    second = flow.staged(reason="second")
    flow.approve(second)
    flow.act(first, "release")
    flow.act(second, "release")
    workers = [start_worker(app, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        waiting = wait_for(
            lambda: db.session.scalar(select(Run).where(Run.waiting_for != "", Run.stage == "release")),
            timeout=60,
            what="a run waiting for the release lock",
        )
        assert "release run #" in waiting.waiting_for
        body = flow.client.get(f"/api/tickets/{waiting.ticket_id}", headers=world.headers("dev")).get_json()
        assert "release run #" in body["last_run"]["waiting_for"]
        # Cancel the holder so the waiting one proceeds.
        holder = db.session.scalar(
            select(Run).where(Run.status == "running", Run.waiting_for == "", Run.stage == "release")
        )
        flow.client.post(f"/api/runs/{holder.id}/cancel", headers=world.headers("lead"))
        wait_for(
            lambda: (
                db.session.get(Run, waiting.id).status in ("canceled", "successful", "failed", "timeout")
                or db.session.get(Run, waiting.id).waiting_for == ""
            ),
            timeout=60,
            what="waiter proceeds",
        )
    finally:
        for w in workers:
            stop_worker(w)


def test_worker_killed_mid_staging_update_is_reconciled_and_resubmit_completes(flow, world, app, tmp_path):
    """SIGKILL of the worker mid staging update: the run is lost, the ticket staging_failed, resubmit works."""
    app.config["FERRY_HEARTBEAT_TTL"] = 2
    tid = flow.file(reason="crash me")
    worker = start_worker(app, tmp_path / "worker.log")
    wait_for(lambda: (r := run_of(tid, "staging")) and r.status == "running", what="staging running")
    kill_worker(worker)
    time.sleep(2.5)
    db.session.expire_all()
    db.session.commit()
    assert reconcile()["lost"] == 1, (run_of(tid, "staging").status, (tmp_path / "worker.log").read_text()[-3000:])
    db.session.expire_all()
    run = run_of(tid, "staging")
    assert run.status == "lost" and "worker lost" in run.error
    t = flow.get(tid)
    assert t["state"] == "staging_failed" and "worker lost" in t["last_error"]
    assert ansible_processes(str(tmp_path)) == []
    flow.act(tid, "resubmit")
    world.work()
    assert flow.get(tid)["state"] == "testing"


def test_worker_killed_mid_release_is_reconciled_and_retry_completes(flow, world, app, tmp_path):
    """SIGKILL of the worker during a release: run lost, ticket release_failed, lock freed, retry releases."""
    app.config["FERRY_HEARTBEAT_TTL"] = 2
    tid = approved_with_sleep_hook(flow, world, 30)
    flow.act(tid, "release")
    worker = start_worker(app, tmp_path / "worker.log")
    wait_for(lambda: ansible_processes(str(tmp_path)), what="ansible running")
    kill_worker(worker)
    time.sleep(2.5)
    assert reconcile()["lost"] == 1
    assert ansible_processes(str(tmp_path)) == []  # the orphaned ansible-playbook was stopped
    t = flow.get(tid)
    assert t["state"] == "release_failed" and "worker lost" in t["last_error"]
    world.project.hook_tasks = ""
    db.session.commit()
    flow.act(tid, "retry")
    world.work()
    t = flow.get(tid)
    assert t["state"] == "released", t["last_error"]


def test_redis_flushed_mid_run_still_completes_and_queued_runs_are_requeued(flow, world, app, tmp_path):
    """Flushing Redis under a running release does not lose it; runs whose queue entry vanished are re-enqueued."""
    app.config["FERRY_REQUEUE_GRACE"] = 0
    tid = approved_with_sleep_hook(flow, world, 3)
    flow.act(tid, "release")
    queued = flow.file(reason="queued behind")
    worker = start_worker(app, tmp_path / "worker.log")
    try:
        wait_for(lambda: (r := run_of(tid, "release")) and r.status == "running", what="release running")
        Redis.from_url(app.config["REDIS_URL"]).flushdb()  # the queued staging job disappears with it
        wait_for(lambda: run_of(tid, "release").status != "running", timeout=60, what="release ends")
        assert flow.get(tid)["state"] == "released"
        assert run_of(queued, "staging").status == "queued"
        assert reconcile()["requeued"] == 1
        wait_for(lambda: run_of(queued, "staging").status == "successful", timeout=60, what="requeued run done")
    finally:
        stop_worker(worker)
    assert flow.get(queued)["state"] == "testing"


def test_enqueue_failure_is_repaired_by_the_reconciler(flow, world, app):
    """Redis down at filing: the ticket is still filed (run queued); the reconciler enqueues it later."""
    app.config["FERRY_REQUEUE_GRACE"] = 0
    good = app.config["REDIS_URL"]
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    tid = flow.file(reason="redis down")
    app.config["REDIS_URL"] = good
    assert run_of(tid, "staging").rq_job_id == ""
    assert reconcile()["requeued"] == 1
    world.work()
    assert flow.get(tid)["state"] == "testing"


def test_replay_cli_records_a_new_run_and_old_run_dirs_are_pruned(flow, world, app):
    """`flask runs replay` repeats a release from its run dir as a new run; retention prunes old run dirs."""
    t = flow.ship({"index.html": "<h1>two</h1>\n"}, "two")
    run = run_of(t["id"], "release")
    assert (Path(run.run_dir) / "env" / "extravars").is_file()
    (world.hosts.roots["web1"] / "current" / "index.html").write_text("tampered\n")
    runner = app.test_cli_runner()
    r = runner.invoke(runs_cli, ["replay", str(run.id), "--limit", "web1"])
    assert r.exit_code == 0, r.output
    assert "successful" in r.output
    assert (world.hosts.roots["web1"] / "current" / "index.html").read_text() == "<h1>two</h1>\n"
    new = db.session.scalar(select(Run).order_by(Run.id.desc()))
    assert new.id != run.id and [h.host for h in new.hosts] == ["web1"]
    assert "replayed run" in db.session.get(Ticket, t["id"]).history[-1].comment
    r = runner.invoke(runs_cli, ["show", str(run.id)])
    assert "ansible-runner run" in r.output and str(run.run_dir) in r.output
    assert f"#{new.id}" in runner.invoke(runs_cli, ["list"]).output
    app.config["FERRY_RUN_RETENTION"] = 1
    flow.ship({"index.html": "<h1>three</h1>\n"}, "three")
    db.session.expire_all()
    dirs = [r.run_dir for r in db.session.scalars(select(Run).order_by(Run.id))]
    assert dirs[-1] and not any(dirs[:-1])
    assert sorted(p.name for p in (Path(app.config["FERRY_DATA_DIR"]) / "runs").iterdir()) == [str(new.id + 2)]


def test_staging_updates_serialise_per_project_and_run_in_parallel_across_projects(flow, world, app, tmp_path):
    """With two workers: two staging updates of one project never overlap; two projects' updates do."""
    same = [flow.file(reason="one"), flow.file(reason="two")]
    workers = [start_worker(app, tmp_path / f"w{i}.log", burst=True) for i in range(2)]
    for w in workers:
        w.wait(timeout=120)
    a, b = (run_of(t, "staging") for t in same)
    assert a.status == b.status == "successful"
    first, second = sorted((a, b), key=lambda r: r.finished_at)
    started_second = [e.at for e in db.session.get(Ticket, second.ticket_id).history if e.action == "staging_started"]
    assert started_second[-1] >= first.finished_at  # the lock held the second update back

    other = flow.file(reason="elsewhere", user="other", project="elsewhere")
    mine = flow.file(reason="mine")
    workers = [start_worker(app, tmp_path / f"v{i}.log", burst=True) for i in range(2)]
    for w in workers:
        w.wait(timeout=120)
    x, y = run_of(other, "staging"), run_of(mine, "staging")
    assert x.status == y.status == "successful"
    assert x.started_at < y.finished_at and y.started_at < x.finished_at  # they overlapped


# --- many watchers: stream cap, polling fallback, bounded stream lifetime --------------------------------------


def running_run(author: str = "dev") -> Run:
    """Insert a release run in `running` for a new ticket; the test feeds its Redis log stream itself."""
    ticket = make_ticket("release", author=author)
    run = Run(
        ticket_id=ticket.id,
        project_id=ticket.project_id,
        stage="release",
        status="running",
        started_by_id=ticket.author_id,
        started_at=utcnow(),
        heartbeat_at=utcnow(),
    )
    db.session.add(run)
    db.session.commit()
    return run


def feed(redis: Redis, run_id: int, lines: list[str], every: float = 0.0) -> None:
    """Append log lines and host progress to a run's live stream, as the worker's event handler does."""
    for line in lines:
        redis.xadd(log_stream_key(run_id), {"line": line, "host": "web1", "task": line, "at": ""})
        redis.hset(progress_key(run_id), "web1", json.dumps({"status": "running", "task": line, "message": ""}))
        time.sleep(every)


def finish(run: Run, lines: list[str]) -> None:
    """Mark a run successful with its log stored, as the worker does at the end."""
    run.status, run.log, run.finished_at = "successful", "\n".join(lines), utcnow()
    db.session.commit()


def test_stream_cap_answers_poll_and_the_log_endpoint_serves_the_same_lines(app, world):
    """Beyond FERRY_MAX_STREAMS the events URL answers at once with `poll`; /runs/<id>/log pages the log by offset."""
    run = running_run()
    lines = [f"line {i}" for i in range(7)]
    feed(Redis.from_url(app.config["REDIS_URL"]), run.id, lines)
    dev = app.test_client()
    dev.post("/login", data={"username": "dev", "password": PASSWORD})
    app.config["FERRY_MAX_STREAMS"] = 0  # read when the first stream asks for a slot
    started = time.monotonic()
    r = dev.get(f"/runs/{run.id}/events")
    assert time.monotonic() - started < 1 and r.mimetype == "text/event-stream"
    assert r.get_data(as_text=True) == f'event: poll\ndata: {{"url": "/runs/{run.id}/log"}}\n\n'

    body = dev.get(f"/runs/{run.id}/log").get_json()
    assert [e["line"] for e in body["lines"]] == lines and body["next_offset"] == 7
    assert body["active"] is True and body["status"] == "running" and body["progress"]["web1"]["task"] == "line 6"
    tail = dev.get(f"/runs/{run.id}/log?offset=5").get_json()
    assert [e["line"] for e in tail["lines"]] == lines[5:] and tail["offset"] == 5
    for bad in ("-1", "x", "²", "1" * 30):
        r = dev.get(f"/runs/{run.id}/log", query_string={"offset": bad})
        assert r.status_code == 400 and "offset" in r.get_json()["error"], bad
    finish(run, lines)
    Redis.from_url(app.config["REDIS_URL"]).delete(log_stream_key(run.id))
    done = dev.get(f"/runs/{run.id}/log?offset=6").get_json()
    assert (
        done["active"] is False and done["status"] == "successful" and [e["line"] for e in done["lines"]] == ["line 6"]
    )

    # Same permission checks as the stream: another project's member gets 404, nobody logged in goes to login.
    other = app.test_client()
    other.post("/login", data={"username": "other", "password": PASSWORD})
    assert other.get(f"/runs/{run.id}/log").status_code == 404
    assert other.get(f"/runs/{run.id}/events").status_code == 404
    assert app.test_client().get(f"/runs/{run.id}/log").status_code == 302


def test_a_stream_slot_is_freed_when_the_stream_ends(app, world):
    """With one slot: a stream ending at its lifetime gives the slot back; the next watcher streams again."""
    run = running_run()
    feed(Redis.from_url(app.config["REDIS_URL"]), run.id, ["one"])
    app.config.update(FERRY_MAX_STREAMS=1, FERRY_STREAM_SECONDS=1)
    dev = app.test_client()
    dev.post("/login", data={"username": "dev", "password": PASSWORD})
    first = dev.get(f"/runs/{run.id}/events", buffered=False)
    assert "event: poll" in dev.get(f"/runs/{run.id}/events").get_data(as_text=True)  # the one slot is taken
    text = first.get_data(as_text=True)
    first.close()
    assert '"line": "one"' in text and text.endswith("event: reconnect\ndata: {}\n\n")
    again = dev.get(f"/runs/{run.id}/events", headers={"Last-Event-ID": text.split("id: ")[1].split("\n")[0]})
    resumed = again.get_data(as_text=True)
    assert "event: poll" not in resumed and "event: line" not in resumed  # streamed, from after the last id


def test_forty_watchers_never_starve_pages_or_the_api(app, world, tmp_path):
    """The Procfile's web line (sync workers: a stream would hold a whole worker, so it serves none), 40 watchers
    on a live run: each is told to poll at once, the ticket list and an API call answer in < 2 s throughout,
    and every watcher gets every log line by polling."""
    watchers = 40
    run = running_run()
    lines = [f"line {i}" for i in range(60)]
    redis = Redis.from_url(app.config["REDIS_URL"])
    with gunicorn(app, tmp_path / "gunicorn.log", FERRY_STREAM_SECONDS="3") as base:
        cookie = session_cookie(base, "dev", PASSWORD)
        api = urllib.request.Request(f"{base}/api/tickets", headers=world.headers("dev"))
        page = urllib.request.Request(f"{base}/tickets", headers={"Cookie": cookie})
        with ThreadPoolExecutor(watchers + 1) as pool:
            watches = [pool.submit(follow, base, run.id, cookie, 90) for _ in range(watchers)]
            time.sleep(1)  # every watcher has connected (or is polling)
            feeding = pool.submit(feed, redis, run.id, lines, 0.2)  # ~12 s of log
            timings = {"page": [], "api": []}
            while not feeding.done():
                for kind, request in (("page", page), ("api", api)):
                    started = time.monotonic()
                    try:
                        with urllib.request.urlopen(request, timeout=10) as r:
                            assert r.status == 200
                            r.read()
                        timings[kind].append(time.monotonic() - started)
                    except OSError:  # timed out or refused: starved
                        timings[kind].append(float("inf"))
                time.sleep(0.2)
            feeding.result()
            finish(run, lines)
            seen = [w.result(timeout=60) for w in watches]
    assert len(timings["page"]) >= 10, timings
    for kind, values in timings.items():
        assert max(values) < 2, (kind, sorted(values)[-5:])
    for watch in seen:
        assert watch.lines == lines and watch.status == "successful", (len(watch.lines), watch)
    # No worker was held by a stream: every watcher was sent to poll, and got every line that way.
    assert all(w.polls for w in seen) and sum(w.sse_lines for w in seen) == 0, [(w.polls, w.sse_lines) for w in seen]


def test_two_hundred_watchers_stream_from_the_gevent_process_within_a_second(app, world, tmp_path):
    """The Procfile's stream process (one gevent worker) streams to 200 watchers of one run at once, none told to
    poll, every line at every watcher less than 1 s after it was logged, from one shared reader of the run."""
    watchers = 200
    run = running_run()
    lines = [f"line {i}" for i in range(30)]
    redis = Redis.from_url(app.config["REDIS_URL"])
    with gunicorn(app, tmp_path / "stream.log", stream=True, FERRY_STREAM_SECONDS="4") as base:
        cookie = session_cookie(base, "dev", PASSWORD)
        with ThreadPoolExecutor(watchers) as pool:
            watches = [pool.submit(follow, base, run.id, cookie, 60) for _ in range(watchers)]
            time.sleep(2)  # every watcher has connected
            for line in lines:  # ~6 s of log, stamped as ansible-runner's `created`
                at = datetime.now(UTC).isoformat()
                redis.xadd(log_stream_key(run.id), {"line": line, "host": "web1", "task": "t", "at": at})
                time.sleep(0.2)
            mine = str(redis.connection_pool.connection_kwargs.get("db", 0))
            clients = [c for c in redis.client_list() if c["db"] == mine]
            finish(run, lines)
            seen = [w.result(timeout=60) for w in watches]
    for watch in seen:
        assert watch.lines == lines and watch.status == "successful" and not watch.polls, watch.polls
    lags = sorted(lag for w in seen for lag in w.lags)
    assert len(lags) == watchers * len(lines) and lags[-1] < 1.0, lags[-10:]
    assert max(w.connections for w in seen) > 1  # lifetimes ended and the watchers resumed by Last-Event-ID
    # Nothing was imported before gevent patched it (the master loads only webapp/serving.py, by its path).
    assert "MonkeyPatchWarning" not in (tmp_path / "stream.log").read_text()
    # One reader per run in the process, not one Redis connection (and blocked XREAD) per watcher: 200 watchers
    # would be ~200 connections; the rest (this test process's own pools, RQ) add a dozen or so.
    assert len(clients) < 30, [c["cmd"] for c in clients]
    assert sum(1 for c in clients if c["cmd"] in ("xread", "xrange", "xrevrange")) < 5, [c["cmd"] for c in clients]
