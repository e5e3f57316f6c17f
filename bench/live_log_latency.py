"""Benchmark: how long after ansible emits an event does it reach a browser following the ticket page?

Runs the real thing on this machine: the Flask app served over HTTP (werkzeug, one thread per request),
a real `flask worker` process, a real staging update and release to local hosts, and an SSE client that
follows /runs/<id>/events like the page does. For each log line it compares the event's `created`
timestamp (set by ansible-runner's callback) with the arrival time. Prints min/median/p95/max per stage.

With `--watchers N` it measures something else: the app served by gunicorn as the Procfile runs it
(2 workers x 8 threads), N watchers following one real release (a 30 s sleep hook on each host) the way
the ticket page does (SSE, or polling when the server has no stream slot free), and meanwhile a loop
loading the ticket list and calling the API. Prints page and API latency p50/p95/max and how the
watchers followed the run.

Usage: .venv/bin/python -m bench.live_log_latency [--releases 3] [--watchers N]
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
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from redis import Redis
from werkzeug.serving import make_server

from tests.support.servers import gunicorn, session_cookie
from tests.support.site import make_local_hosts, make_svn_repo
from tests.support.watchers import follow as watch_run
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


def percentile(values: list[float], share: float) -> float:
    """Return the value below which `share` of the sorted `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def watchers_bench(app, work: Path, tokens: dict, svn, watchers: int) -> dict:
    """Follow one real release with `watchers` watchers under gunicorn while timing page loads and API calls."""
    worker = start_worker(app, work / "worker.log")
    try:
        with gunicorn(app, work / "gunicorn.log") as base:
            cookie = session_cookie(base, "dev", PASSWORD)

            def api(user: str, path: str, body: dict | None = None) -> dict:
                req = urllib.request.Request(f"{base}/api{path}", data=json.dumps(body or {}).encode(), method="POST")
                req.add_header("Authorization", f"Bearer {tokens[user]}")
                req.add_header("Content-Type", "application/json")
                return json.load(urllib.request.urlopen(req))

            def ticket(tid: int) -> dict:
                req = urllib.request.Request(
                    f"{base}/api/tickets/{tid}", headers={"Authorization": f"Bearer {tokens['dev']}"}
                )
                return json.load(urllib.request.urlopen(req))

            def wait_state(tid: int, state: str) -> dict:
                deadline = time.monotonic() + 180
                while (t := ticket(tid))["state"] != state:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"ticket {tid} stayed {t['state']}: {t['last_error']}")
                    time.sleep(0.2)
                return t

            svn.commit({"index.html": "<h1>watched</h1>\n"}, "watched")
            tid = api("dev", "/tickets", {"project": "site", "reason": "watched release", "svn_paths": []})["id"]
            wait_state(tid, "testing")
            api("dev", f"/tickets/{tid}/test-passed")
            api("lead", f"/tickets/{tid}/approve")
            api("dev", f"/tickets/{tid}/release")
            run_id = wait_state(tid, "releasing")["last_run"]["id"]
            page = urllib.request.Request(f"{base}/tickets", headers={"Cookie": cookie})
            call = urllib.request.Request(f"{base}/api/tickets", headers={"Authorization": f"Bearer {tokens['dev']}"})
            timings: dict[str, list[float]] = {"page": [], "api": []}
            with ThreadPoolExecutor(watchers) as pool:
                watches = [pool.submit(watch_run, base, run_id, cookie, 300) for _ in range(watchers)]
                while not all(w.done() for w in watches):
                    for kind, request in (("page", page), ("api", call)):
                        started = time.monotonic()
                        try:
                            with urllib.request.urlopen(request, timeout=30) as r:
                                r.read()
                            timings[kind].append(time.monotonic() - started)
                        except OSError:
                            timings[kind].append(float("inf"))
                    time.sleep(0.2)
                seen = [w.result() for w in watches if not w.exception()]
                failed = [repr(w.exception()) for w in watches if w.exception()]
            final = wait_state(tid, "released")
            assert final["state"] == "released", final
    finally:
        stop_worker(worker)
    expected = max((len(w.lines) for w in seen), default=0)
    summary = {
        "watchers": watchers,
        "failed": len(failed),
        "streamed_to_end": sum(1 for w in seen if not w.polls),
        "polled": sum(1 for w in seen if w.polls),
        "reconnects": sum(w.connections - 1 for w in seen),
        "complete": sum(1 for w in seen if len(w.lines) == expected and w.status == "successful"),
        "lines": expected,
    }
    print(f"{watchers} watchers on one release run ({expected} log lines), gunicorn 2 workers x 8 threads")
    print(f"  followed by SSE to the end: {summary['streamed_to_end']}, switched to polling: {summary['polled']}, ")
    print(f"  SSE reconnects: {summary['reconnects']}, watchers with every line: {summary['complete']}/{watchers}")
    if failed:
        print(f"  watchers that failed: {len(failed)}, e.g. {failed[0]}")
    print(f"{'request':<8} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}   (target: < 2000 ms)")
    for kind, values in timings.items():
        row = [percentile(values, 0.5) * 1000, percentile(values, 0.95) * 1000, max(values) * 1000]
        summary[kind] = dict(zip(["p50_ms", "p95_ms", "max_ms"], row, strict=True), n=len(values))
        print(f"{kind:<8} {len(values):>5} {row[0]:>8.0f} {row[1]:>8.0f} {row[2]:>8.0f}")
    return summary


def main() -> None:
    """Run the benchmark and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=3)
    parser.add_argument("--watchers", type=int, default=0, help="follow one release with N watchers under gunicorn")
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
            **({"hook_tasks": "hooks/sleep.yml"} if args.watchers else {}),  # a release that lasts ~30 s
        )
        svc.set_member(db.session, project, dev, "developer")
        svc.set_member(db.session, project, lead, "lead")
        tokens = {"dev": issue_token(dev), "lead": issue_token(lead)}
        db.session.commit()

    if args.watchers:
        summary = watchers_bench(app, work, tokens, svn, args.watchers)
        out = Path(__file__).parent / "results"
        out.mkdir(exist_ok=True)
        (out / f"live_log_watchers_{args.watchers}.json").write_text(json.dumps(summary, indent=2))
        return

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
