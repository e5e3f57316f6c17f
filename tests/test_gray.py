"""Gray releases: canary first, health-gated batches, automatic switch back, manual pause (local hosts)."""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.flow import Flow
from tests.test_ssh_release import make_world  # noqa: F401  (fixture)
from webapp.extensions import db
from webapp.models import Project, Run

pytestmark = pytest.mark.integration


def health_server(roots: dict):
    """Start a server for /<host>/health: 200 "ok" when the host's live health.txt says ok, else 500 with its text.

    Returns (url template, list of (host, what `current` pointed to) per request, server).
    """
    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            host = self.path.strip("/").split("/")[0]
            path = roots[host] / "current" / "health.txt"
            text = path.read_text() if path.exists() else "missing"
            version = os.readlink(roots[host] / "current") if (roots[host] / "current").is_symlink() else "-"
            seen.append((host, version))
            code = 200 if text.strip() == "ok" else 500
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            """Quiet."""

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}/{{host}}/health", seen, srv


@pytest.fixture
def health(world):
    """A health server for the world's local hosts."""
    url, seen, srv = health_server(world.hosts.roots)
    yield url, seen
    srv.shutdown()
    srv.server_close()


def setup(world, url: str, batches: str = "1,50%,100%", pause: str = "auto", n_hosts: int = 3) -> Flow:
    """Configure the gray release settings and ship version 1 (healthy) all the way."""
    project = db.session.get(Project, world.project.id)
    project.batches, project.batch_pause, project.health_url = batches, pause, url
    project.health_retries, project.health_interval = 2, 0
    db.session.commit()
    return project


def current(world) -> dict[str, str]:
    """Return where `current` points on each host."""
    return {h: os.readlink(r / "current") for h, r in world.hosts.roots.items()}


@pytest.fixture
def flow(client, world):
    """Return API shortcuts."""
    return Flow(client, world)


def test_failed_health_check_on_the_canary_switches_it_back_and_touches_no_other_host(flow, world, health):
    """v2 is broken: only the first batch (web1) ever serves it, then every host is back on v1; message says why."""
    url, seen = health
    setup(world, url)
    flow.ship({"health.txt": "ok\n", "index.html": "one\n"}, "one")
    assert set(current(world).values()) == {"releases/1"}
    seen.clear()
    world.svn.commit({"health.txt": "Fatal error: broken\n"}, "two")
    tid = flow.staged(reason="two")
    flow.approve(tid)
    t = flow.release(tid)
    assert t["state"] == "release_failed"
    assert "web1" in t["last_error"] and "/web1/health" in t["last_error"] and "status 500" in t["last_error"]
    assert "Fatal error" in t["last_error"] and "every host is back on version 1" in t["last_error"]
    assert set(current(world).values()) == {"releases/1"}
    assert {h for h, v in seen if v == "releases/2"} == {"web1"}  # nobody else ever served v2
    assert [b["status"] for b in t["batches"]] == ["failed", "pending", "pending"]
    assert db.session.get(Project, world.project.id).live_version == 1


def test_healthy_three_batch_release(flow, world, health):
    """1,50%,100% on 3 hosts: three batches, each checked, then released."""
    url, seen = health
    setup(world, url)
    flow.ship({"health.txt": "ok\n"}, "one")
    world.svn.commit({"index.html": "two\n"}, "two")
    tid = flow.staged(reason="two")
    flow.approve(tid)
    t = flow.release(tid)
    assert t["state"] == "released", t["last_error"]
    assert [b["hosts"] for b in t["batches"]] == [["web1"], ["web2"], ["web3"]]
    assert [b["status"] for b in t["batches"]] == ["healthy", "healthy", "healthy"]
    assert set(current(world).values()) == {"releases/2"}
    run = db.session.scalars(db.select(Run).where(Run.ticket_id == tid)).all()[-1]
    assert "batch 2: web2" in run.log and "batch 3: web3" in run.log


def test_manual_pause_continue_and_abort(flow, world, health):
    """Manual: after the canary the ticket pauses; continue releases the rest; abort puts everything back."""
    url, _ = health
    setup(world, url, batches="1,100%", pause="manual")
    world.svn.commit({"health.txt": "ok\n"}, "one")
    first = flow.staged(reason="one")
    flow.approve(first)
    flow.act(first, "release")
    world.work()
    assert flow.get(first)["state"] == "release_paused"  # the first release pauses after its canary too
    flow.act(first, "continue")
    world.work()
    assert flow.get(first)["state"] == "released", flow.get(first)["last_error"]
    world.svn.commit({"index.html": "two\n"}, "two")
    tid = flow.staged(reason="two")
    flow.approve(tid)
    flow.act(tid, "release")
    world.work()
    t = flow.get(tid)
    assert t["state"] == "release_paused" and {"continue", "abort"} <= set(t["allowed_actions"])
    assert current(world) == {"web1": "releases/2", "web2": "releases/1", "web3": "releases/1"}
    assert [b["status"] for b in t["batches"]] == ["healthy", "pending"]
    flow.act(tid, "continue", user="dev2", expect=403)  # neither the releaser's side nor a lead
    flow.act(tid, "continue")
    world.work()
    t = flow.get(tid)
    assert t["state"] == "released" and set(current(world).values()) == {"releases/2"}, t["last_error"]
    assert any(h["action"] == "continue" for h in t["history"])

    world.svn.commit({"index.html": "three\n"}, "three")
    tid = flow.staged(reason="three")
    flow.approve(tid)
    flow.act(tid, "release")
    world.work()
    assert flow.get(tid)["state"] == "release_paused"
    flow.act(tid, "abort", user="lead")
    world.work()
    t = flow.get(tid)
    assert t["state"] == "release_failed" and "aborted by lead" in t["last_error"]
    assert set(current(world).values()) == {"releases/2"}
    assert db.session.get(Project, world.project.id).live_version == 2
    assert any(h["action"] == "abort" for h in t["history"])


def test_bad_settings_are_refused(flow, world, client):
    """Batch specs, pause modes, URLs and status specs are checked, naming the field."""
    from webapp import projects as svc
    from webapp.errors import BadInput

    project = db.session.get(Project, world.project.id)
    for field, value in (
        ("batches", "0,abc"),
        ("batch_pause", "sometimes"),
        ("health_url", "ftp://x"),
        ("health_expect", "ok"),
        ("health_playbook", "../../etc/passwd"),
    ):
        with pytest.raises(BadInput) as e:
            svc.update_project(db.session, project, **{field: value})
        assert e.value.field == field
    db.session.rollback()


def test_worker_killed_mid_batch_leaves_one_version_and_retry_completes(flow, world, health, app, tmp_path):
    """SIGKILL while batch 1 (web1 switched) runs its hook: reconciler → switch_back run → all on v1 → retry."""
    import time

    from jobs.reconcile import reconcile
    from tests.support.workers import ansible_processes, kill_worker, start_worker, wait_for

    url, _ = health
    setup(world, url)
    flow.ship({"health.txt": "ok\n"}, "one")
    app.config["FERRY_HEARTBEAT_TTL"] = 2
    project = db.session.get(Project, world.project.id)
    project.hook_tasks = "hooks/sleep.yml"  # the batch sleeps 30 s after its switch: time to kill the worker
    db.session.commit()
    world.svn.commit({"index.html": "two\n"}, "two")
    tid = flow.staged(reason="two")
    flow.approve(tid)
    flow.act(tid, "release")
    worker = start_worker(app, tmp_path / "worker.log")
    roots = world.hosts.roots
    wait_for(lambda: os.readlink(roots["web1"] / "current") == "releases/2", timeout=90, what="web1 switched")
    kill_worker(worker)
    assert current(world) == {"web1": "releases/2", "web2": "releases/1", "web3": "releases/1"}  # mixed, for now
    time.sleep(2.5)
    assert reconcile()["lost"] == 1
    assert ansible_processes(str(tmp_path)) == []
    back = db.session.scalars(db.select(Run).where(Run.ticket_id == tid, Run.stage == "switch_back")).all()
    assert len(back) == 1
    project = db.session.get(Project, world.project.id)
    project.hook_tasks = ""
    db.session.commit()
    world.work()  # the switch_back run
    assert set(current(world).values()) == {"releases/1"}  # one version again: the live one
    t = flow.get(tid)
    assert t["state"] == "release_failed" and "every host is back on version 1" in t["last_error"]
    assert any(h["action"] == "switch-back" for h in t["history"])
    flow.act(tid, "retry")
    world.work()
    t = flow.get(tid)
    assert t["state"] == "released", t["last_error"]
    assert set(current(world).values()) == {"releases/2"}


@pytest.mark.ssh
def test_failed_canary_over_ssh_switches_back(make_world, tmp_path):  # noqa: F811
    """SSH hosts: the canary's failed check puts it back; the other hosts never served the broken version."""
    sw = make_world()
    for root in sw.roots.values():
        root.mkdir(parents=True, exist_ok=True)
    url, seen, srv = health_server(sw.roots)
    try:
        setup(sw.world, url)
        sw.flow.ship({"health.txt": "ok\n"}, "one")
        seen.clear()
        sw.world.svn.commit({"health.txt": "broken\n"}, "two")
        tid = sw.flow.staged(reason="two")
        sw.flow.approve(tid)
        t = sw.flow.release(tid)
        assert t["state"] == "release_failed" and "status 500" in t["last_error"], t["last_error"]
        first = sw.names[0]
        assert {h for h, v in seen if v == "releases/2"} == {first}
        assert {sw.live(h) for h in sw.names} == {"releases/1"}
    finally:
        srv.shutdown()
        srv.server_close()
