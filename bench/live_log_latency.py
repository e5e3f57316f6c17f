"""Benchmark: how long after ansible emits an event does it reach a browser following the ticket page?

Runs the real thing on this machine: the Flask app served over HTTP (werkzeug, one thread per request),
a real `flask worker` process, a real staging update and release to local hosts, and an SSE client that
follows /runs/<id>/events like the page does. For each log line it compares the event's `created`
timestamp (set by ansible-runner's callback) with the arrival time. Prints min/median/p95/max per stage.

With `--watchers N` it measures something else: the app served by gunicorn as the Procfile's lines run it
(web: sync workers that serve no stream; stream: gevent), N watchers following one real release (a 30 s
sleep hook on each host) the way the ticket page does (SSE, or polling when told to), and meanwhile a loop
loading the ticket list and calling the API. Prints page and API latency p50/p95/max and how the watchers
followed the run.

Usage: .venv/bin/python -m bench.live_log_latency [--releases 3] [--watchers N]
Needs Redis at FERRY_BENCH_REDIS_URL (default redis://127.0.0.1:6379/14, flushed).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.cookiejar
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from redis import Redis
from werkzeug.serving import make_server

from tests.support.servers import gunicorn, session_cookie
from tests.support.site import make_local_hosts, make_svn_repo
from tests.support.watchers import Watch, created_at
from tests.support.watchers import follow as watch_run
from tests.support.workers import start_worker, stop_worker
from webapp import create_app
from webapp import projects as svc
from webapp.auth import issue_token
from webapp.extensions import db
from webapp.models import Run

PASSWORD = "bench-password-1"
WATCHER_PROCESSES = 4
SLOW_SECONDS = 0.2  # answers slower than this are listed with their time
BROWSE_PAUSE = 1.0  # seconds between one browsing person's requests (a page a second: a busy person)


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
                    created = created_at(entry["at"])
                    if created >= opened_at:
                        latencies.append(time.time() - created)
            elif line.startswith("data: ") and event == "end":
                return latencies
    return latencies


def percentile(values: list[float], share: float) -> float:
    """Return the value below which `share` of the sorted `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def stats(values: list[float]) -> dict:
    """Return p50/p95/max of `values` (seconds) in milliseconds, and how many there were."""
    if not values:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    row = [percentile(values, 0.5), percentile(values, 0.95), max(values)]
    return {
        "n": len(values),
        **{k: round(v * 1000, 1) for k, v in zip(("p50_ms", "p95_ms", "max_ms"), row, strict=True)},
    }


def browse(base: str, cookie: str, token: str, ticket_id: int, stop: threading.Event) -> dict[str, list]:
    """Load pages and call the API in a loop on one kept-alive connection, as one person browsing does."""
    split = urllib.parse.urlsplit(base)
    paths = [("list", "/tickets", {"Cookie": cookie}), ("ticket", f"/tickets/{ticket_id}", {"Cookie": cookie})]
    paths.append(("api", "/api/tickets", {"Authorization": f"Bearer {token}"}))
    timings: dict[str, list] = {"list": [], "ticket": [], "api": [], "slow": []}
    connection = http.client.HTTPConnection(split.hostname, split.port, timeout=30)
    while not stop.is_set():
        for kind, path, headers in paths:
            started = time.monotonic()
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                connection.close()  # reopened by the next request
                ok = False
            timings[kind].append(time.monotonic() - started if ok else float("inf"))
            if timings[kind][-1] > SLOW_SECONDS:  # when, to line slow answers up with what the runs did then
                timings["slow"].append((time.time() - (time.monotonic() - started), kind, timings[kind][-1]))
            time.sleep(BROWSE_PAUSE)
    connection.close()
    return timings


def watch_group(base: str, run_ids: list[int], cookie: str, timeout: float) -> list[tuple[Watch | None, str]]:
    """Follow runs with one thread per watcher, in one client process; return (watch or None, error) each."""
    with ThreadPoolExecutor(len(run_ids)) as pool:
        futures = [pool.submit(watch_run, base, run_id, cookie, timeout) for run_id in run_ids]
        return [(f.result(), "") if not f.exception() else (None, repr(f.exception())) for f in futures]


def watchers_bench(app, work: Path, tokens: dict, svns: list, args: argparse.Namespace) -> dict:
    """Follow real releases with many watchers under gunicorn while people browse pages; time both."""
    projects = ["site"] + [f"other{i}" for i in range(1, len(svns))]
    workers = [start_worker(app, work / f"worker{i}.log") for i in range(len(projects))]
    try:
        with contextlib.ExitStack() as servers:
            base = servers.enter_context(gunicorn(app, work / "gunicorn.log"))
            # The Procfile's stream line; a reverse proxy sends /runs/<id>/events there (README, Runs).
            streams = base
            if not args.no_stream_process:
                streams = servers.enter_context(gunicorn(app, work / "gunicorn-stream.log", stream=True))
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
                deadline = time.monotonic() + 300
                while (t := ticket(tid))["state"] != state:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"ticket {tid} stayed {t['state']}: {t['last_error']}")
                    time.sleep(0.2)
                return t

            tids = []
            for project, svn in zip(projects, svns, strict=True):
                svn.commit({"index.html": f"<h1>watched {project}</h1>\n"}, "watched")
                body = {"project": project, "reason": "watched release", "svn_paths": []}
                tids.append(api("dev", "/tickets", body)["id"])
            for tid in tids:
                wait_state(tid, "testing")
                api("dev", f"/tickets/{tid}/test-passed")
                api("lead", f"/tickets/{tid}/approve")
            for tid in tids:
                api("dev", f"/tickets/{tid}/release")
            run_ids = [wait_state(tid, "releasing")["last_run"]["id"] for tid in tids]
            others = run_ids[1:] or run_ids
            # Warm the web processes as a running server is (templates compiled, catalogs loaded), so that the
            # first page loads do not measure gunicorn's start; a cold first load is printed on its own.
            cold = []
            for path in ("/tickets", f"/tickets/{tids[0]}") * 4:
                started = time.monotonic()
                urllib.request.urlopen(urllib.request.Request(f"{base}{path}", headers={"Cookie": cookie})).read()
                cold.append(round(time.monotonic() - started, 3))
            print(f"warm-up page loads (s, first ones cold): {cold}")
            targets = [("main", run_ids[0])] * args.watchers
            targets += [("other", others[i % len(others)]) for i in range(args.other_watchers)]
            # Watchers spread over a few client processes: in one, 220 threads would queue for its GIL and
            # the client, not the server, would make lines late.
            groups = [targets[i::WATCHER_PROCESSES] for i in range(WATCHER_PROCESSES)]
            stop = threading.Event()
            with ProcessPoolExecutor(WATCHER_PROCESSES) as procs, ThreadPoolExecutor(args.browsers) as pool:
                watches = [procs.submit(watch_group, streams, [r for _k, r in g], cookie, 300) for g in groups]
                time.sleep(1)  # the watchers have connected (replaying what the run logged so far)
                browsers = [
                    pool.submit(browse, base, cookie, tokens["dev"], tids[0], stop) for _ in range(args.browsers)
                ]
                while not all(w.done() for w in watches):
                    time.sleep(0.2)
                stop.set()
                timings: dict[str, list[float]] = {"page": [], "list": [], "ticket": [], "api": []}
                slow = []
                for b in browsers:
                    for kind, values in b.result().items():
                        if kind == "slow":
                            slow += values
                            continue
                        timings[kind] += values
                        timings["page"] += values if kind != "api" else []
                results = [
                    (kind, watch, error)
                    for g, w in zip(groups, watches, strict=True)
                    for (kind, _run), (watch, error) in zip(g, w.result(), strict=True)
                ]
            for tid in tids:
                final = wait_state(tid, "released")
                assert final["state"] == "released", final
                run = final["last_run"]
                print(f"ticket {tid}: release run {run['id']} {run.get('started_at')} → {run.get('finished_at')}")
    finally:
        for worker in workers:
            stop_worker(worker)
    expected = {}
    for kind, watch, _error in results:
        if watch is not None:
            expected[kind] = max(expected.get(kind, 0), len(watch.lines))
    summary: dict = {
        "design": "web (sync) + stream process (gevent)" if not args.no_stream_process else "web only",
        "watchers": args.watchers,
        "other_watchers": args.other_watchers,
        "other_runs": len(others) if args.other_watchers else 0,
        "browsers": args.browsers,
        "load_average": os.getloadavg(),
    }
    print(
        f"{summary['design']}: {args.watchers} watchers on one release, {args.other_watchers} on "
        f"{summary['other_runs']} other releases, {args.browsers} people browsing"
    )
    print(
        f"{'watchers':<8} {'n':>4} {'failed':>6} {'streamed':>8} {'polled':>6} {'complete':>8} {'lines':>6} "
        f"{'lag p50 ms':>10} {'p95 ms':>7} {'max ms':>7}   (target: max <= 1000 ms)"
    )
    for kind in ("main", "other"):
        mine = [(w, e) for k, w, e in results if k == kind]
        if not mine:
            continue
        seen = [w for w, _e in mine if w is not None]
        lags = [lag for w in seen for lag in w.lags]
        row = {
            "n": len(mine),
            "failed": sum(1 for w, _e in mine if w is None),
            "errors": sorted({e for _w, e in mine if e})[:3],
            "streamed_to_end": sum(1 for w in seen if not w.polls),
            "polled": sum(1 for w in seen if w.polls),
            "reconnects": sum(w.connections - 1 for w in seen),
            "complete": sum(1 for w in seen if len(w.lines) == expected[kind] and w.status == "successful"),
            "lines": expected.get(kind, 0),
            "lag": stats(lags),
            "worst_watcher_max_ms": round(max((max(w.lags) for w in seen if w.lags), default=0) * 1000, 1),
            # How many lines came later than 0.5 s, and when they were logged (below).
            "late_lines": len([x for w in seen for x in w.late]),
        }
        first = min((w.started for w in seen), default=0)
        row["late_at_seconds"] = sorted({round(created - first, 1) for w in seen for created, _lag in w.late})
        summary[kind] = row
        lag = row["lag"]
        print(
            f"{kind:<8} {row['n']:>4} {row['failed']:>6} {row['streamed_to_end']:>8} {row['polled']:>6} "
            f"{row['complete']:>8} {row['lines']:>6} {lag['p50_ms']:>10} {lag['p95_ms']:>7} {lag['max_ms']:>7}"
        )
        if row["errors"]:
            print(f"  failed watchers, e.g. {row['errors'][0]}")
        print(
            f"  lines later than 0.5 s: {row['late_lines']}, created at (s after the watchers started): "
            f"{row['late_at_seconds'][:30]}"
        )
    print(f"{'request':<8} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}   (target: page p95 <= 200 ms)")
    for kind, values in timings.items():
        summary[kind] = stats(values)
        row = summary[kind]
        print(f"{kind:<8} {row['n']:>5} {row['p50_ms']:>8} {row['p95_ms']:>8} {row['max_ms']:>8}")
    print(f"load average (1, 5, 15 min) at the end: {summary['load_average']}")
    summary["slow"] = [(datetime.fromtimestamp(at, UTC).isoformat(), kind, round(sec, 3)) for at, kind, sec in slow]
    print(f"answers slower than {SLOW_SECONDS * 1000:.0f} ms (UTC start, kind, s): ", end="")
    print(", ".join(f"{at[11:23]} {kind} {sec}" for at, kind, sec in sorted(summary["slow"])) or "none")
    return summary


def main() -> None:
    """Run the benchmark and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=3)
    parser.add_argument("--watchers", type=int, default=0, help="follow one release with N watchers under gunicorn")
    parser.add_argument("--other-watchers", type=int, default=0, help="watchers of other projects' releases")
    parser.add_argument("--other-runs", type=int, default=2, help="other releases running meanwhile")
    parser.add_argument("--browsers", type=int, default=1, help="people loading pages and the API meanwhile")
    parser.add_argument(
        "--no-stream-process",
        action="store_true",
        help="no Procfile stream line: the web line alone (it serves no stream: every watcher polls)",
    )
    parser.add_argument("--redis-url", default=os.environ.get("FERRY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-log-"))
    redis_url = args.redis_url
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
    other_runs = args.other_runs if args.watchers and args.other_watchers else 0
    with app.app_context():
        db.create_all()
        dev = svc.create_user(db.session, "dev", PASSWORD)
        lead = svc.create_user(db.session, "lead", PASSWORD)
        svns = []
        for i in range(1 + other_runs):
            name = "site" if i == 0 else f"other{i}"
            svn = make_svn_repo(work / f"svn-{name}")
            hosts = make_local_hosts(work / f"prod-{name}", 3)
            project = svc.create_project(
                db.session,
                name,
                svn_url=svn.url,
                staging_dir=str(work / f"staging-{name}"),
                inventory=str(hosts.inventory),
                group=hosts.group,
                # A release that logs a line per host every half second (the watchers' lines).
                **({"hook_tasks": "hooks/ticker.yml"} if args.watchers else {}),
            )
            svc.set_member(db.session, project, dev, "developer")
            svc.set_member(db.session, project, lead, "lead")
            svns.append(svn)
        svn = svns[0]
        tokens = {"dev": issue_token(dev), "lead": issue_token(lead)}
        db.session.commit()

    if args.watchers:
        summary = watchers_bench(app, work, tokens, svns, args)
        out = Path(__file__).parent / "results"
        out.mkdir(exist_ok=True)
        name = f"live_log_watchers_{args.watchers}_{args.other_watchers}_{args.browsers}"
        name += "_web_only" if args.no_stream_process else ""
        (out / f"{name}.json").write_text(json.dumps(summary, indent=2))
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
