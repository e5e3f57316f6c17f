"""Benchmark: how long after ansible emits an event does it reach a browser following the ticket page?

Runs the real thing on this machine: the Flask app served over HTTP (werkzeug, one thread per request),
a real `flask worker` process, a real staging update and release to local hosts, and an SSE client that
follows /runs/<id>/events like the page does. For each log line it compares the event's `created`
timestamp (set by ansible-runner's callback) with the arrival time. Prints min/median/p95/max per stage.

Usage: .venv/bin/python -m bench.live_log_latency [--releases 3]
Needs Redis at FERRY_BENCH_REDIS_URL (default redis://127.0.0.1:6379/14, flushed).
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from redis import Redis
from werkzeug.serving import make_server

from tests.support.site import make_local_hosts, make_svn_repo
from tests.support.workers import start_worker, stop_worker
from webapp import create_app
from webapp import projects as svc
from webapp.auth import issue_token
from webapp.extensions import db
from webapp.models import Run

PASSWORD = "bench-password-1"


def parse_created(text: str) -> float:
    """Return the epoch seconds of an ansible-runner `created` timestamp (UTC, with or without offset)."""
    at = datetime.fromisoformat(text)
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def follow(opener, base: str, run_id: int, opened_at: float) -> list[float]:
    """Follow a run's SSE stream to its end and return the latency of each line emitted after opening."""
    latencies = []
    with opener.open(f"{base}/runs/{run_id}/events", timeout=120) as stream:
        event = None
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "line":
                entry = json.loads(line[6:])
                if entry.get("at"):
                    created = parse_created(entry["at"])
                    if created >= opened_at:
                        latencies.append(time.time() - created)
            elif line.startswith("data: ") and event == "end":
                return latencies
    return latencies


def main() -> None:
    """Run the benchmark and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-log-"))
    redis_url = os.environ.get("FERRY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    Redis.from_url(redis_url).flushdb()
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{work / 'bench.sqlite3'}",
            "REDIS_URL": redis_url,
            "FERRY_DATA_DIR": work / "data",
            "FERRY_INVENTORY_DIR": work,
            "FERRY_QUEUE": "ferry-bench",
            "WTF_CSRF_ENABLED": False,
            "SECRET_KEY": "bench",
        }
    )
    with app.app_context():
        db.create_all()
        svn = make_svn_repo(work / "svn")
        hosts = make_local_hosts(work / "prod", 3)
        dev = svc.create_user(db.session, "dev", PASSWORD)
        lead = svc.create_user(db.session, "lead", PASSWORD)
        project = svc.create_project(
            db.session,
            "site",
            svn_url=svn.url,
            staging_dir=str(work / "staging"),
            inventory=str(hosts.inventory),
            group=hosts.group,
        )
        svc.set_member(db.session, project, dev, "developer")
        svc.set_member(db.session, project, lead, "lead")
        tokens = {"dev": issue_token(dev), "lead": issue_token(lead)}
        db.session.commit()

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    opener.open(f"{base}/login", data=f"username=dev&password={PASSWORD}".encode()).read()
    worker = start_worker(app, work / "worker.log")

    def api(user: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(f"{base}/api{path}", data=json.dumps(body or {}).encode(), method="POST")
        req.add_header("Authorization", f"Bearer {tokens[user]}")
        req.add_header("Content-Type", "application/json")
        return json.load(urllib.request.urlopen(req))

    def newest_run(ticket_id: int, stage: str) -> int:
        with app.app_context():
            while True:
                db.session.expire_all()
                run = db.session.scalar(
                    db.select(Run).where(Run.ticket_id == ticket_id, Run.stage == stage).order_by(Run.id.desc())
                )
                if run is not None:
                    return run.id
                time.sleep(0.01)

    results: dict[str, list[float]] = {"staging": [], "release": []}
    try:
        for i in range(args.releases):
            svn.commit({"index.html": f"<h1>v{i}</h1>\n"}, f"v{i}")
            opened = time.time()
            ticket = api("dev", "/tickets", {"project": "site", "reason": f"bench {i}", "svn_paths": []})
            results["staging"] += follow(opener, base, newest_run(ticket["id"], "staging"), opened)
            api("dev", f"/tickets/{ticket['id']}/test-passed")
            api("lead", f"/tickets/{ticket['id']}/approve")
            opened = time.time()
            api("dev", f"/tickets/{ticket['id']}/release")
            results["release"] += follow(opener, base, newest_run(ticket["id"], "release"), opened)
    finally:
        stop_worker(worker)
        server.shutdown()
    print("target: max <= 1000 ms")
    print(f"{'stage':<8} {'lines':>6} {'min ms':>8} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
    summary = {}
    for stage, values in results.items():
        values.sort()
        if not values:
            print(f"{stage:<8} no lines")
            continue
        p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
        row = [min(values) * 1000, statistics.median(values) * 1000, p95 * 1000, max(values) * 1000]
        summary[stage] = dict(zip(["min_ms", "median_ms", "p95_ms", "max_ms"], row, strict=True), lines=len(values))
        print(f"{stage:<8} {len(values):>6} {row[0]:>8.0f} {row[1]:>10.0f} {row[2]:>8.0f} {row[3]:>8.0f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "live_log_latency.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
