"""Benchmark: page and API latency with a company's worth of tickets, under gunicorn as the Procfile runs it.

Seeds a database in bulk (default 10,000 tickets over 5 projects and 20 authors, 100,000 history rows, a
staging and a release run per ticket with 3 host results), serves it exactly as the Procfile's `web` line
does (FERRY_BENCH=1 so every answer names its SQL statement count in X-Ferry-SQL, the app's own time in
X-Ferry-Time and the worker in X-Ferry-Worker), logs in as a developer of every project and times, case by
case, 8 clients (threads, each keeping its connection alive when the server lets it, as browsers do) loading:
the ticket list page, a filtered ticket list page, a ticket page and the API's ticket list. Prints p50/p95/max
per case, the statements per request, the app's time (view start to response: the rest of the latency is
waiting for a worker or a core, HTTP and the client) and how the first requests fell on the workers.

PostgreSQL gets the planner setting the README recommends for Ferry's database (random_page_cost = 1.1: its
tables are small and stay in memory); --random-page-cost "" keeps the server's default (4).

    .venv/bin/python -m bench.web_load                                   # PostgreSQL (ferry_bench, dropped after)
    .venv/bin/python -m bench.web_load --sqlite --cases api              # the embedded default
    .venv/bin/python -m bench.web_load --help

PostgreSQL: --admin-url names a server where the benchmark may create and drop its own database.
Redis: FERRY_BENCH_REDIS_URL (default redis://127.0.0.1:6379/14; nothing is enqueued).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import insert, make_url, text

from tests.support.servers import gunicorn, procfile_line, session_cookie
from webapp import create_app
from webapp import projects as svc
from webapp.auth import issue_token
from webapp.extensions import db
from webapp.models import HostResult, Run, Ticket, TicketEvent

PASSWORD = "bench-password-1"
TARGET_MS = 50
USER_AGENT = "ferry-bench/1 (a browser sends the User-Agent it logged in with)"
STATES = ["released"] * 6 + ["cancelled", "rejected", "release_failed", "staging_failed"]
WORDS = "fix header footer checkout cart login search banner cache css image typo price mobile menu".split()


def create_database(admin_url: str, name: str, random_page_cost: str = "") -> str:
    """Create an empty PostgreSQL database `name` (dropping a leftover one), with the given planner cost of a
    random page read (empty: the server's), and return its URL."""
    import psycopg  # PostgreSQL only

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
        if random_page_cost:
            conn.execute(f'ALTER DATABASE "{name}" SET random_page_cost = {float(random_page_cost)}')
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    """Drop the benchmark's database."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(n_tickets: int, n_history: int, work: Path) -> dict:
    """Create projects, users and, in bulk, tickets with history, runs and host results; return what to ask for."""
    (work / "hosts.ini").write_text("[web]\nweb1 ansible_connection=local deploy_root=/nonexistent\n")
    projects = []
    for i in range(5):
        projects.append(
            svc.create_project(
                db.session,
                f"site{i}",
                svn_url=f"file:///nonexistent/svn{i}",
                staging_dir=str(work / f"staging{i}"),
                inventory=str(work / "hosts.ini"),
                group="web",
            )
        )
    dev = svc.create_user(db.session, "dev", PASSWORD)
    authors = [dev] + [svc.create_user(db.session, f"dev{i}", PASSWORD) for i in range(1, 20)]
    for project in projects:
        for author in authors:
            svc.set_member(db.session, project, author, "developer")
    token = issue_token(dev)
    db.session.commit()
    rng = random.Random(7)
    start = datetime(2024, 1, 1)
    tickets, events, runs, hosts = [], [], [], []
    per_ticket = max(1, n_history // n_tickets)
    for tid in range(1, n_tickets + 1):
        at = start + timedelta(minutes=90 * tid)
        state = rng.choice(STATES)
        tickets.append(
            {
                "id": tid,
                "project_id": projects[tid % 5].id,
                "kind": "rollback" if tid % 25 == 0 else "release",
                "state": state,
                "reason": f"{rng.choice(WORDS)} the {rng.choice(WORDS)} on the {rng.choice(WORDS)} page (#{tid})",
                "svn_paths": ["index.html"],
                "author_id": authors[rng.randrange(len(authors))].id,
                "version": tid if state == "released" else None,
                "created_at": at,
                "updated_at": at + timedelta(minutes=30),
            }
        )
        for k in range(per_ticket):
            events.append(
                {
                    "ticket_id": tid,
                    "action": "file" if k == 0 else "comment",
                    "from_state": None if k == 0 else "testing",
                    "to_state": state if k == per_ticket - 1 else "testing",
                    "user_id": dev.id,
                    "comment": f"step {k}",
                    "at": at + timedelta(minutes=k),
                }
            )
        for stage in ("staging", "release"):
            run_id = len(runs) + 1
            runs.append(
                {
                    "id": run_id,
                    "ticket_id": tid,
                    "project_id": projects[tid % 5].id,
                    "stage": stage,
                    "status": "successful",
                    "log": "ok\n" * 20,
                    "created_at": at,
                    "started_at": at,
                    "finished_at": at + timedelta(seconds=20),
                }
            )
            if stage == "release":
                hosts += [{"run_id": run_id, "host": f"web{h}", "status": "changed"} for h in range(1, 4)]
    for model, rows in ((Ticket, tickets), (TicketEvent, events), (Run, runs), (HostResult, hosts)):
        for chunk in range(0, len(rows), 5000):
            db.session.execute(insert(model), rows[chunk : chunk + 5000])
    db.session.commit()
    if db.engine.dialect.name == "postgresql":  # explicit ids: move the sequences past them, then fresh statistics
        for table in ("ticket", "ticket_event", "run", "host_result"):
            db.session.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"))
        db.session.commit()
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    released = [t["id"] for t in tickets if t["state"] == "released"]
    return {"token": token, "released": released, "filter_project": projects[2].name}


def percentile(values: list[float], share: float) -> float:
    """Return the value below which `share` of the sorted `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def load(base: str, paths, headers: dict, clients: int, per_client: int) -> dict:
    """Have `clients` threads each request `paths()` `per_client` times on a kept-alive connection; time it."""
    host = urlsplit(base)
    times: list[float] = []
    counts: list[int] = []
    app_times: list[float] = []
    workers: dict[str, int] = {}  # worker pid -> clients whose first request it served
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
        for i in range(per_client):
            path = paths()
            started = time.monotonic()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            elapsed = time.monotonic() - started
            with lock:
                times.append(elapsed)
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.getheader("X-Ferry-SQL"):
                    counts.append(int(response.getheader("X-Ferry-SQL")))
                if response.getheader("X-Ferry-Time"):
                    app_times.append(float(response.getheader("X-Ferry-Time")) / 1000)
                if i == 0 and response.getheader("X-Ferry-Worker"):
                    worker = response.getheader("X-Ferry-Worker")
                    workers[worker] = workers.get(worker, 0) + 1
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "n": len(times),
        "p50_ms": percentile(times, 0.5) * 1000,
        "p95_ms": percentile(times, 0.95) * 1000,
        "max_ms": max(times) * 1000,
        "statuses": statuses,
        "sql_median": statistics.median(counts) if counts else None,
        "sql_max": max(counts) if counts else None,
        "app_p50_ms": percentile(app_times, 0.5) * 1000 if app_times else None,
        "app_p95_ms": percentile(app_times, 0.95) * 1000 if app_times else None,
        # Where the clients' first requests fell, e.g. "5+3": a kept-alive connection stays on its worker.
        "clients_per_worker": "+".join(str(n) for n in sorted(workers.values(), reverse=True)),
    }


def main() -> None:
    """Seed, serve, load and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sqlite", action="store_true", help="the embedded default instead of PostgreSQL")
    parser.add_argument(
        "--admin-url", default=os.environ.get("FERRY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--database", default="ferry_bench", help="PostgreSQL database to create and drop")
    parser.add_argument(
        "--random-page-cost", default="1.1", help="the database's random_page_cost (README); empty: the server's"
    )
    parser.add_argument("--tickets", type=int, default=10_000)
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="requests per client per case")
    parser.add_argument("--cases", default="list,filtered,ticket,api", help="comma-separated: list,filtered,ticket,api")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database afterwards")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]  # the 1-minute load average before this run: what else runs on the machine
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-web-"))
    redis_url = os.environ.get("FERRY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    database = (
        f"sqlite:///{work / 'bench.sqlite3'}"
        if args.sqlite
        else create_database(args.admin_url, args.database, args.random_page_cost)
    )
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": database,
            "REDIS_URL": redis_url,
            "FERRY_DATA_DIR": work / "data",
            "FERRY_INVENTORY_DIR": work,
            "FERRY_QUEUE": "ferry-bench-web",
            "SECRET_KEY": "bench",
        }
    )
    try:
        with app.app_context():
            db.create_all()
            started = time.monotonic()
            facts = seed(args.tickets, args.history, work)
            print(f"seeded {args.tickets} tickets, {args.history} history rows in {time.monotonic() - started:.1f} s")
            db.session.remove()
            db.engine.dispose()
        rng = random.Random(11)
        cases = {
            "list": ("ticket list page  /tickets", lambda: "/tickets", "cookie"),
            "filtered": (
                "filtered list page",
                lambda: f"/tickets?project={facts['filter_project']}&state=released&q=header",
                "cookie",
            ),
            "ticket": ("ticket page  /tickets/<id>", lambda: f"/tickets/{rng.choice(facts['released'])}", "cookie"),
            "api": ("API  GET /api/tickets", lambda: "/api/tickets", "token"),
        }
        chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
        results = {}
        with gunicorn(app, work / "gunicorn.log", FERRY_BENCH="1") as base:
            headers = {
                "cookie": {"Cookie": session_cookie(base, "dev", PASSWORD, USER_AGENT), "User-Agent": USER_AGENT},
                "token": {"Authorization": f"Bearer {facts['token']}"},
            }
            kind = "SQLite" if args.sqlite else f"PostgreSQL (random_page_cost {args.random_page_cost or 'default'})"
            print(f"{kind}, {args.clients} clients x {args.requests} requests per case")
            print(f"web: {procfile_line('web')}")
            print(
                f"{'case':<30} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'SQL/req':>8} "
                f"{'app p50':>8} {'app p95':>8} {'clients/worker':>15}  statuses"
            )
            for name in chosen:
                label, paths, auth = cases[name]
                load(base, paths, headers[auth], args.clients, 3)  # warm up: connections, caches, templates
                result = load(base, paths, headers[auth], args.clients, args.requests)
                results[name] = result
                sql = "n/a" if result["sql_median"] is None else f"{result['sql_median']:g}"
                app_p50, app_p95 = (
                    ("n/a", "n/a")
                    if result["app_p50_ms"] is None
                    else (f"{result['app_p50_ms']:.1f}", f"{result['app_p95_ms']:.1f}")
                )
                print(
                    f"{label:<30} {result['n']:>5} {result['p50_ms']:>8.1f} {result['p95_ms']:>8.1f} "
                    f"{result['max_ms']:>8.1f} {sql:>8} {app_p50:>8} {app_p95:>8} "
                    f"{result['clients_per_worker']:>15}  {result['statuses']}"
                )
        loads = f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
        print(f"target: p95 <= {TARGET_MS} ms per case; 1-minute load average {loads}")
        out = Path(__file__).parent / "results"
        out.mkdir(exist_ok=True)
        (out / f"web_load_{'sqlite' if args.sqlite else 'postgresql'}.json").write_text(json.dumps(results, indent=2))
    finally:
        if not args.sqlite and not args.keep:
            drop_database(args.admin_url, args.database)


if __name__ == "__main__":
    main()
