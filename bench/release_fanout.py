"""Benchmark Ferry's release fan-out to N SSH hosts against hand-written git + rsync baselines.

Builds N netns SSH hosts, a generated tree in SVN, and times, in one run and interleaved:
baselines (git checkout of the tag + a parallel `rsync -a --delete` over ssh, in place or into
releases/N with --link-dest plus an atomic symlink switch) and Ferry's real release job (API click →
RQ worker → ansible-runner → playbooks → released), for a first full release and a one-file change.
Usage and what the numbers mean: bench/README.md. Needs root, sshd, rsync, svn, svnmucc, git, Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: python bench/release_fanout.py
    sys.path.insert(0, str(REPO))

from tests.support.netns_hosts import HostSet, PrefixInUse, cleanup_stale, live_owner, netns_ssh_hosts  # noqa: E402

RESULTS = REPO / "bench" / "results"
GROUP = "web"
PASSWORD = "bench-password-123"
MODES = ("inplace", "atomic")
CASES = ("full", "one-file")
TARGETS = {("one-file", "inplace"): 1.5, ("one-file", "atomic"): 1.2, ("full", "inplace"): 1.2, ("full", "atomic"): 1.2}
STAGING_TARGET = 1.5  # seconds for the staging update of a one-file change, snapshot commit included


def log(msg: str) -> None:
    """Print a progress line to stderr (stdout carries the table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(*argv: str | Path, cwd: Path | None = None, env: dict | None = None) -> str:
    """Run a command (argv, no shell); raise with its stderr when it fails."""
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{shlex.join(map(str, argv))} -> rc {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


# --- the generated tree -------------------------------------------------------------------------------


def make_tree(dest: Path, files: int, total_bytes: int, seed: int = 1) -> list[str]:
    """Write `files` incompressible files (~total_bytes, 1% executable) in nested dirs; return their paths."""
    rng = random.Random(seed)
    avg = max(total_bytes // files, 1)
    paths = []
    for i in range(files):
        rel = f"d{i % 50:02d}/s{(i // 50) % 10}/f{i:05d}" + (".sh" if i % 100 == 7 else ".dat")
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        # Random bytes: compression cannot help, so -z/-C would only burn CPU (as on real, already-packed assets).
        path.write_bytes(rng.randbytes(rng.randint(avg // 4, avg * 7 // 4)))
        if rel.endswith(".sh"):
            path.chmod(0o755)
        paths.append(rel)
    (dest / "index.html").write_text("<h1>bench</h1>\n")
    return paths


@dataclass
class Svn:
    """The benchmark's SVN repository."""

    url: str
    config_dir: Path

    def put(self, rel: str, data: bytes, tmp: Path) -> None:
        """Commit new content for one file straight to the repository (svnmucc: no working copy needed)."""
        src = tmp / "svnmucc-put"
        src.write_bytes(data)
        run(
            "svnmucc",
            "--non-interactive",
            "--config-dir",
            self.config_dir,
            "-m",
            f"change {rel}",
            "put",
            src,
            f"{self.url}/{rel}",
        )


def make_svn(base: Path, tree: Path) -> Svn:
    """Create a file:// repository and import the tree as trunk."""
    repo = base / "svnrepo"
    run("svnadmin", "create", repo)
    svn = Svn(url=f"file://{repo}/trunk", config_dir=base / "svn-config")
    run("svn", "import", "-q", "--non-interactive", "--config-dir", svn.config_dir, "-m", "initial", tree, svn.url)
    return svn


# --- hand-written baselines ---------------------------------------------------------------------------


@dataclass
class Baseline:
    """A git repository of the source tree, one tag per version, shipped by hand over ssh from a clone."""

    source: Path  # the generated tree is this repository's work tree
    hostset: HostSet | None = None
    tags: int = 0

    def commit(self) -> str:
        """Commit the whole source tree and tag it with the next number; return the tag."""
        ident = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        run("git", "-C", self.source, "add", "-A")
        run("git", "-C", self.source, *ident, "commit", "-q", "-m", f"version {self.tags + 1}")
        self.tags += 1
        run("git", "-C", self.source, "tag", str(self.tags))
        return str(self.tags)

    def clone(self, work_tree: Path) -> None:
        """Make the deploy checkout a hand-written script would keep (its own .git, nothing checked out)."""
        run("git", "clone", "-q", "--no-checkout", "--shared", self.source, work_tree)

    def release(self, work_tree: Path, tag: str, roots: dict[str, Path], mode: str, prev: str | None) -> float:
        """Check the tag out and push it to every host in parallel (cold ssh, as a script would); return seconds."""
        assert self.hostset is not None
        run("git", "-C", work_tree, "fetch", "-q", "--tags", "origin")  # not timed: a deploy clone has the tags already
        t0 = time.perf_counter()
        run("git", "-C", work_tree, "checkout", "-q", "-f", tag)
        rsh = self.hostset.rsh()

        def push(host) -> None:
            root = roots[host.name]
            if mode == "inplace":
                dest, extra, mkdir = f"{root}/", [], root
            else:
                dest, mkdir = f"{root}/releases/{tag}/", root / "releases"
                extra = [f"--link-dest={root}/releases/{prev}"] if prev else []
            run(
                "rsync",
                "-a",
                "--delete",
                "--exclude=.git",
                *extra,
                "-e",
                rsh,
                f"--rsync-path=mkdir -p {shlex.quote(str(mkdir))} && rsync",
                f"{work_tree}/",
                f"root@{host.ip}:{dest}",
            )

        def switch(host) -> None:
            root = shlex.quote(str(roots[host.name]))
            run(
                *self.hostset.ssh_argv(
                    host.name, f"ln -sfn releases/{tag} {root}/.current.tmp && mv -T {root}/.current.tmp {root}/current"
                )
            )

        with ThreadPoolExecutor(len(self.hostset.hosts)) as pool:
            list(pool.map(push, self.hostset.hosts))
            if mode == "atomic":  # switch only once every host holds the new release
                list(pool.map(switch, self.hostset.hosts))
        return time.perf_counter() - t0


# --- Ferry through its real release job ---------------------------------------------------------------


@dataclass
class Ferry:
    """A Flask app on a temp SQLite DB and a Redis db, driven through the JSON API with a burst RQ worker."""

    app: object
    client: object
    tokens: dict[str, str]
    queue: object
    redis: object
    projects: int = 0

    def headers(self, user: str) -> dict:
        """Return API headers for a user."""
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def act(self, tid: int, action: str, user: str = "dev") -> dict:
        """Fire a ticket action through the API."""
        r = self.client.post(f"/api/tickets/{tid}/{action}", json={}, headers=self.headers(user))
        if r.status_code != 200:
            raise RuntimeError(f"{action} #{tid}: {r.status_code} {r.get_json()}")
        return r.get_json()

    def get(self, tid: int) -> dict:
        """Return a ticket's JSON."""
        return self.client.get(f"/api/tickets/{tid}", headers=self.headers("dev")).get_json()

    def work(self) -> None:
        """Run the queued jobs with a real RQ SimpleWorker in burst mode, in this process."""
        from rq import SimpleWorker

        from webapp.extensions import db

        SimpleWorker([self.queue], connection=self.redis).work(burst=True, logging_level="WARNING")
        db.session.expire_all()

    def new_project(self, svn: Svn, inventory: Path, mode: str, forks: int) -> str:
        """Create a project on the inventory with dev and lead as members; return its name."""
        from webapp import projects as svc
        from webapp.extensions import db

        self.projects += 1
        name = f"p{self.projects}-{mode}"
        data = Path(self.app.config["FERRY_DATA_DIR"])
        project = svc.create_project(
            db.session,
            name,
            svn_url=svn.url,
            staging_dir=str(data / "staging" / name),
            inventory=str(inventory),
            group=GROUP,
            deploy_mode=mode,
            forks=forks,
        )
        svc.set_member(db.session, project, svc.get_user(db.session, "dev"), "developer")
        svc.set_member(db.session, project, svc.get_user(db.session, "lead"), "lead")
        db.session.commit()
        return name

    def stage(self, project: str, paths: list[str]) -> tuple[int, float]:
        """File a ticket and run its staging update; return (ticket id, seconds from click to testing)."""
        t0 = time.perf_counter()
        body = {"project": project, "reason": "bench", "svn_paths": paths}
        r = self.client.post("/api/tickets", json=body, headers=self.headers("dev"))
        if r.status_code != 201:
            raise RuntimeError(f"file ticket: {r.status_code} {r.get_json()}")
        tid = r.get_json()["id"]
        self.work()
        seconds = time.perf_counter() - t0
        t = self.get(tid)
        if t["state"] != "testing":
            raise RuntimeError(f"staging of #{tid} ended {t['state']}: {t['last_error']}")
        self.act(tid, "test-passed")
        self.act(tid, "approve", user="lead")
        return tid, seconds

    def release(self, tid: int) -> tuple[float, dict]:
        """Click release and run the worker until the ticket is released; return (seconds, phase breakdown)."""
        clicked = datetime.now(UTC)
        t0 = time.perf_counter()
        self.act(tid, "release")
        self.work()
        seconds = time.perf_counter() - t0
        t = self.get(tid)
        if t["state"] != "released":
            raise RuntimeError(f"release of #{tid} ended {t['state']}: {t['last_error']}")
        return seconds, self.phases(tid, clicked, seconds)

    def phases(self, tid: int, clicked: datetime, total: float) -> dict:
        """Split a release into phases from the ansible events' timestamps (seconds from the click)."""
        from webapp.extensions import db
        from webapp.models import Run

        run_ = db.session.scalars(db.select(Run).where(Run.ticket_id == tid, Run.stage == "release")).all()[-1]
        marks: list[tuple[float, str]] = []
        for path in Path(run_.run_dir).glob("artifacts/*/job_events/*.json"):
            ev = json.loads(path.read_text())
            name = {"playbook_on_start": "ansible start", "playbook_on_stats": "stats"}.get(ev.get("event"))
            if ev.get("event") == "playbook_on_task_start":
                name = "task: " + (ev.get("event_data") or {}).get("task", "?")
            if name and ev.get("created"):
                at = datetime.fromisoformat(ev["created"]).replace(tzinfo=UTC)
                marks.append(((at - clicked).total_seconds(), name))
        marks.sort()
        out, prev_at, prev_name = {}, 0.0, "click → job → ansible-playbook up"
        for at, name in marks:
            out[prev_name] = round(at - prev_at, 3)
            prev_at, prev_name = at, name
        out["stats → released (DB, worker exit)" if prev_name == "stats" else prev_name] = round(total - prev_at, 3)
        out.update(stage_check_seconds(run_.run_dir))
        return out


@contextlib.contextmanager
def ferry_app(workdir: Path, redis_url: str) -> Iterator[Ferry]:
    """Create the app (temp SQLite, data dir, inventory dir), users dev and lead, and an app context."""
    from redis import Redis
    from rq import Queue

    from webapp import create_app
    from webapp import projects as svc
    from webapp.auth import issue_token
    from webapp.extensions import db

    queue_name = f"ferry-bench-{os.getpid()}"
    (workdir / "inventory").mkdir(parents=True, exist_ok=True)
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{workdir / 'ferry.sqlite3'}",
            "REDIS_URL": redis_url,
            "FERRY_DATA_DIR": workdir / "data",
            "FERRY_INVENTORY_DIR": workdir / "inventory",
            "FERRY_QUEUE": queue_name,
            "WTF_CSRF_ENABLED": False,
            "SECRET_KEY": "bench-secret-key",
        }
    )
    redis = Redis.from_url(redis_url)
    with app.app_context():
        db.create_all()
        tokens = {}
        for name in ("dev", "lead"):
            tokens[name] = issue_token(svc.create_user(db.session, name, PASSWORD))
        db.session.commit()
        try:
            yield Ferry(
                app=app, client=app.test_client(), tokens=tokens, queue=Queue(queue_name, connection=redis), redis=redis
            )
        finally:
            redis.delete(f"rq:queue:{queue_name}")
            db.session.remove()
            db.engine.dispose()


# --- the run ------------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Timings of one (case, mode, implementation)."""

    seconds: list[float] = field(default_factory=list)
    phases: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        """Return min / median / all samples."""
        return {"min": min(self.seconds), "median": statistics.median(self.seconds), "samples": self.seconds}


def inventory_for(hostset: HostSet, roots: dict[str, Path]) -> str:
    """Return the hosts' inventory with each deploy_root replaced by roots[name]."""
    lines = []
    for line in hostset.inventory_ini(GROUP).splitlines():
        name = line.split(" ", 1)[0]
        if name in roots and " deploy_root=" in line:
            line = f"{line.split(' deploy_root=')[0]} deploy_root={roots[name]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def close_masters(control_dir: Path) -> None:
    """Close Ferry's ssh ControlPersist masters (for cold runs, and so none outlives the benchmark)."""
    for sock in control_dir.glob("*") if control_dir.is_dir() else []:
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench"], capture_output=True, check=False)


def claim_prefix(base: str = "ferryb") -> str:
    """Return a netns host prefix that no live run owns (engineers share this machine)."""
    for prefix in [base, *(base + c for c in "cdefgh")]:
        if live_owner(prefix) is None:
            with contextlib.suppress(PrefixInUse):
                cleanup_stale(prefix)
                return prefix
    raise PrefixInUse(f"all prefixes {base}* are in use")


def shape(root: Path) -> dict[str, tuple[int, bool]]:
    """Return {path: (size, executable)} of a live tree: a cheap check that two releases hold the same files."""
    root = root.resolve()
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, bool(st.st_mode & 0o111))
    return out


def timed_pair(ctx: dict, key: tuple[str, str], ferry_first: bool, baseline: Callable, ferry: Callable) -> None:
    """Time the baseline and Ferry for one case, in the given order, each after a sync of dirty pages."""
    results = ctx["results"]
    for impl in ("ferry", "baseline") if ferry_first else ("baseline", "ferry"):
        # Flush what setup and the other implementation wrote, so neither pays for the other's writeback.
        os.sync()
        if impl == "ferry" and ctx["cold"]:
            close_masters(ctx["control_dir"])
        samples = results[(*key, impl)]
        if impl == "baseline":
            seconds = baseline()
        else:
            seconds, phases = ferry()
            samples.phases.append(phases)
        samples.seconds.append(seconds)
        log(f"  {impl:<8} {key[0]:<8} {key[1]:<7} {seconds:6.2f} s")


def one_round(ctx: dict, r: int, mode: str) -> None:
    """Measure baseline and Ferry for one mode: a first full release, then one-file changes."""
    hostset, ferry, svn, base, tmp = ctx["hostset"], ctx["ferry"], ctx["svn"], ctx["baseline"], ctx["tmp"]
    ctx["load"].append(round(os.getloadavg()[0], 2))  # other work on this machine skews everything: record it
    names = [h.name for h in hostset.hosts]
    b_roots = {n: tmp / "roots" / f"b{r}-{mode}" / n for n in names}
    f_roots = {n: tmp / "roots" / f"f{r}-{mode}" / n for n in names}
    inventory = tmp / "inventory" / f"r{r}-{mode}.ini"
    inventory.write_text(inventory_for(hostset, f_roots))
    project = ferry.new_project(svn, inventory, mode, ctx["forks"])
    work_tree = tmp / "baseline-wt" / f"r{r}-{mode}"
    base.clone(work_tree)
    prev = str(base.tags)
    # Alternate who goes first, so that neither always runs on the other's leftovers (caches, writeback).
    ferry_first = r % 2 == 1

    log(f"round {r} {mode}: staging the full tree for {project} (setup, not timed)")
    tid, _ = ferry.stage(project, [])
    timed_pair(
        ctx,
        ("full", mode),
        ferry_first,
        lambda: base.release(work_tree, prev, b_roots, mode, None),
        lambda: ferry.release(tid),
    )
    live = "current" if mode == "atomic" else ""
    if shape(f_roots[names[0]] / live) != shape(b_roots[names[0]] / live):
        raise RuntimeError(f"{names[0]}: Ferry's release and the baseline's differ")

    for c in range(ctx["changes"]):
        # One file changes: in svn for Ferry, as the next tag in the baseline repository (same path, same size).
        rel = ctx["paths"][(r * 997 + c * 131 + len(mode)) % len(ctx["paths"])]
        data = random.Random(f"{r}-{c}-{mode}").randbytes((tmp / "tree" / rel).stat().st_size)
        svn.put(rel, data, tmp)
        (tmp / "tree" / rel).write_bytes(data)
        tag = base.commit()
        tid, staging_seconds = ferry.stage(project, [rel])
        ctx["results"][("staging", "one-file", "ferry")].seconds.append(staging_seconds)
        log(f"  ferry    staging update (one file, snapshot commit included): {staging_seconds:.2f} s")
        timed_pair(
            ctx,
            ("one-file", mode),
            (r + c) % 2 == 1,
            lambda tag=tag, prev=prev: base.release(work_tree, tag, b_roots, mode, prev),
            lambda tid=tid: ferry.release(tid),
        )
        prev = tag
        for n in names:  # the release really is live, byte for byte for the changed file
            if (f_roots[n] / live / rel).read_bytes() != data:
                raise RuntimeError(f"{n}: {rel} is not the released content")
    run("rm", "-rf", *b_roots.values(), *f_roots.values(), work_tree)


def fleet_round(ctx: dict, r: int, mode: str, sizes: tuple[int, ...]) -> None:
    """Release one file with Ferry to the first N hosts for each N in `sizes` (a new project each): the fleet case."""
    hostset, ferry, svn, tmp = ctx["hostset"], ctx["ferry"], ctx["svn"], ctx["tmp"]
    for n in sizes:
        ctx["load"].append(round(os.getloadavg()[0], 2))
        names = [h.name for h in hostset.hosts[:n]]
        roots = {name: tmp / "roots" / f"fleet{r}-{mode}-{n}" / name for name in names}
        inventory = tmp / "inventory" / f"fleet{r}-{mode}-{n}.ini"
        lines = inventory_for(hostset, roots).splitlines()
        inventory.write_text("\n".join(line for line in lines if _keep(line, names)) + "\n")
        project = ferry.new_project(svn, inventory, mode, min(ctx["forks"], n))
        log(f"fleet round {r} {mode} {n} hosts: first full release of {project} (warms the ssh masters)")
        tid, _ = ferry.stage(project, [])
        os.sync()
        seconds, phases = ferry.release(tid)
        ctx["fleet"].setdefault((mode, n, "full"), Samples()).seconds.append(seconds)
        ctx["fleet"][(mode, n, "full")].phases.append(phases)
        log(f"  ferry    full     {mode:<7} {n:>3} hosts {seconds:6.2f} s")
        for c in range(ctx["changes"]):
            rel = ctx["paths"][(r * 997 + c * 131 + n) % len(ctx["paths"])]
            data = random.Random(f"fleet-{r}-{c}-{mode}-{n}").randbytes((tmp / "tree" / rel).stat().st_size)
            svn.put(rel, data, tmp)
            tid, _ = ferry.stage(project, [rel])
            os.sync()
            seconds, phases = ferry.release(tid)
            ctx["fleet"].setdefault((mode, n, "one-file"), Samples()).seconds.append(seconds)
            ctx["fleet"][(mode, n, "one-file")].phases.append(phases)
            log(f"  ferry    one-file {mode:<7} {n:>3} hosts {seconds:6.2f} s")
            live = "current" if mode == "atomic" else ""
            for name in names:  # the release really is live on every host
                if (roots[name] / live / rel).read_bytes() != data:
                    raise RuntimeError(f"{name}: {rel} is not the released content")
        run("rm", "-rf", *roots.values())


def _keep(line: str, names: list[str]) -> bool:
    """Tell whether an inventory line stays in a fleet of `names` (host lines of other hosts go)."""
    first = line.split(" ", 1)[0]
    return not (" ansible_host=" in line or " deploy_root=" in line) or first in names


def fleet_report(fleet: dict, args: argparse.Namespace) -> dict:
    """Print the fleet case: Ferry's wall time per fleet size, the ratio to the small fleet and the phases."""
    small, big = args.compare_hosts, args.hosts
    out: dict = {"sizes": [small, big], "forks": args.forks, "cases": []}
    print(f"\nFleet size: Ferry only, {args.files} files ~{args.mb:.0f} MB, forks min({args.forks}, hosts)")
    print(f"{'case':<9} {'mode':<8} {small:>4} hosts min/med s {big:>5} hosts min/med s {'ratio med':>9}  target")
    for case in ("full", "one-file"):
        for mode in args.modes:
            a, b = fleet.get((mode, small, case)), fleet.get((mode, big, case))
            if not a or not b:
                continue
            sa, sb = a.summary(), b.summary()
            ratio = sb["median"] / sa["median"]
            target = 8.0 if case == "one-file" else None
            verdict = ("ok" if ratio <= target else "MISSED") if target else ""
            print(
                f"{case:<9} {mode:<8} {sa['min']:>10.2f}/{sa['median']:<8.2f} {sb['min']:>11.2f}/{sb['median']:<8.2f} "
                f"{ratio:>8.2f}x  {'<= 8x ' + verdict if target else ''}"
            )
            out["cases"].append(
                {
                    "case": case,
                    "mode": mode,
                    str(small): {**sa, "phases_median": median_phases(a.phases)},
                    str(big): {**sb, "phases_median": median_phases(b.phases)},
                    "ratio_median": round(ratio, 3),
                    "target": target,
                }
            )
    print("\nFerry phases (median seconds from the click; ansible event timestamps):")
    for item in out["cases"]:
        for size in (small, big):
            phases = ", ".join(f"{k} {v:.2f}" for k, v in item[str(size)]["phases_median"].items())
            print(f"  {item['case']:<9} {item['mode']:<8} {size:>3} hosts: {phases}")
    return out


DRIFT_TASK = "task: Check for drift"
CHECK_KEYS = ("drift check per host", "barrier wait per host")


def stage_check_seconds(run_dir: str) -> dict:
    """Median per-host seconds of the drift check done inside the stage task (and of the in-place barrier wait).

    The stage results carry them: `check.seconds` {check, wait} (in place, behind the barrier; atomic, a host
    that got the full check) or `seconds.check` (atomic over ssh: the guard in the stage's own session).
    """
    checks, waits = [], []
    for path in Path(run_dir).glob("artifacts/*/job_events/*.json"):
        ev = json.loads(path.read_text())
        data = ev.get("event_data") or {}
        if ev.get("event") != "runner_on_ok" or data.get("task") != "Stage release":
            continue
        for item in ((data.get("res") or {}).get("ferry") or {}).get("sync", {}).values():
            stage = item.get("stage") or {}
            secs = {
                **(stage.get("check") or {}).get("seconds", {}),
                **{k: v for k, v in (stage.get("seconds") or {}).items() if k == "check"},
            }
            if "check" in secs:
                checks.append(secs["check"])
            if "wait" in secs:
                waits.append(secs["wait"])
    out = {}
    for key, values in zip(CHECK_KEYS, (checks, waits), strict=True):
        if values:
            out[key] = round(statistics.median(values), 3)
    return out


GRAY_CONFIGS = (  # (label, batches, health check on)
    ("one batch, no health check", "", False),
    ("one batch + health check", "", True),
    ("1,50%,100% + health check", "1,50%,100%", True),
)
HEALTH_PORT = 8089


@contextlib.contextmanager
def health_servers(hostset: HostSet, roots: dict[str, Path]) -> Iterator[None]:
    """Serve each host's live tree over HTTP from inside its own network namespace (its health URL)."""
    procs = []
    try:
        for h in hostset.hosts:
            (roots[h.name]).mkdir(parents=True, exist_ok=True)
            procs.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        h.namespace,
                        sys.executable,
                        "-m",
                        "http.server",
                        str(HEALTH_PORT),
                        "--bind",
                        h.ip,
                        "--directory",
                        str(roots[h.name] / "current"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


def gray_round(ctx: dict, r: int) -> None:
    """Atomic one-file releases without and with a health check, and in 3 batches with one (click → released)."""
    from webapp.extensions import db
    from webapp.models import Project

    hostset, ferry, svn, tmp = ctx["hostset"], ctx["ferry"], ctx["svn"], ctx["tmp"]
    names = [h.name for h in hostset.hosts]
    roots = {n: tmp / "roots" / f"g{r}" / n for n in names}
    inventory = tmp / "inventory" / f"g{r}.ini"
    inventory.write_text(inventory_for(hostset, roots))
    project = ferry.new_project(svn, inventory, "atomic", ctx["forks"])
    log(f"gray round {r}: full release of {project} (setup, not timed)")
    tid, _ = ferry.stage(project, [])
    ferry.release(tid)
    with health_servers(hostset, roots):
        for c, (label, spec, checked) in enumerate(GRAY_CONFIGS):
            row = db.session.scalar(db.select(Project).where(Project.name == project))
            row.batches = spec
            row.health_url = f"http://{{address}}:{HEALTH_PORT}/" if checked else ""
            row.health_interval, row.health_retries = 1, 3
            db.session.commit()
            rel = ctx["paths"][(r * 389 + c * 71) % len(ctx["paths"])]
            data = random.Random(f"gray-{r}-{c}").randbytes((tmp / "tree" / rel).stat().st_size)
            svn.put(rel, data, tmp)
            tid, _ = ferry.stage(project, [rel])
            seconds, _ = ferry.release(tid)
            ctx["gray"].setdefault(label, []).append(seconds)
            log(f"  ferry    {label:<28} {seconds:6.2f} s")
            for n in names:
                if (roots[n] / "current" / rel).read_bytes() != data:
                    raise RuntimeError(f"{n}: {rel} is not the released content")
    run("rm", "-rf", *roots.values())


def gray_report(gray: dict) -> dict:
    """Print the gray-release case: medians, the health check's cost, the extra time per batch."""
    if not gray:
        return {}
    med = {k: statistics.median(v) for k, v in gray.items()}
    plain, checked, batched = (med.get(label) for label, _, _ in GRAY_CONFIGS)
    print("\nGray release (atomic, one file changed; click → released, median s):")
    for label, value in med.items():
        print(f"  {label:<30} {value:6.2f}  (min {min(gray[label]):.2f}, n={len(gray[label])})")
    out = {"median": med}
    if plain is not None and checked is not None:
        out["health_check_cost"] = round(checked - plain, 3)
        print(f"  health check with one batch costs {checked - plain:+.2f} s (target <= +0.3 s)")
    if checked is not None and batched is not None:
        out["extra_per_batch"] = round((batched - checked) / 2, 3)
        print(f"  each extra batch costs {(batched - checked) / 2:+.2f} s (3 batches vs 1, both checked)")
    return out


def median_phases(phases: list[dict]) -> dict:
    """Return the median seconds of each phase over the samples."""
    keys = [k for k in phases[0]] if phases else []
    return {k: round(statistics.median(p.get(k, 0.0) for p in phases), 3) for k in keys}


def report(results: dict, args: argparse.Namespace) -> dict:
    """Print the table and return the JSON-able summary."""
    rows, out = [], {"cases": []}
    print(
        f"\n{args.hosts} hosts, {args.files} files, ~{args.mb:.0f} MB, {args.repeat} round(s) x {args.changes} "
        f"one-file change(s), forks {args.forks}, "
        f"ssh masters {'cold' if args.cold else 'warm (ControlPersist)'} for Ferry, "
        f"1-min load average at each round {args.load}"
    )
    print(
        f"{'case':<10} {'mode':<8} {'baseline min/med s':>19} {'ferry min/med s':>16} {'ratio med':>9} "
        f"{'ratio min':>9} {'target':>6}"
    )
    for case in CASES:
        for mode in args.modes:
            b, f = results[(case, mode, "baseline")], results[(case, mode, "ferry")]
            if not b.seconds or not f.seconds:
                continue
            bs, fs = b.summary(), f.summary()
            ratio_med, ratio_min = fs["median"] / bs["median"], fs["min"] / bs["min"]
            target = TARGETS[(case, mode)]
            rows.append(
                f"{case:<10} {mode:<8} {bs['min']:>9.2f}/{bs['median']:<9.2f} {fs['min']:>7.2f}/{fs['median']:<8.2f} "
                f"{ratio_med:>8.2f}x {ratio_min:>8.2f}x {'<=' + str(target) + 'x':>6} "
                f"{'ok' if ratio_med <= target else 'MISSED'}"
            )
            out["cases"].append(
                {
                    "case": case,
                    "mode": mode,
                    "baseline": bs,
                    "ferry": fs,
                    "ratio_median": round(ratio_med, 3),
                    "ratio_min": round(ratio_min, 3),
                    "target": target,
                    "ferry_phases_median": median_phases(f.phases),
                    # The drift check (release.yml's check play) on its own: from its task start to the next task.
                    "drift_check_median": median_phases(f.phases).get(DRIFT_TASK),
                }
            )
    print("\n".join(rows))
    st = results[("staging", "one-file", "ferry")]
    if st.seconds:
        s = st.summary()
        out["staging_one_file"] = {**s, "target": STAGING_TARGET}
        print(
            f"staging update, one file (svn update + snapshot commit, click → testing): "
            f"{s['min']:.2f}/{s['median']:.2f} s (target <= {STAGING_TARGET} s)"
        )
    print("\nFerry phases (median seconds from the click; ansible event timestamps):")
    for item in out["cases"]:
        phases = ", ".join(f"{k} {v:.2f}" for k, v in item["ferry_phases_median"].items() if k not in CHECK_KEYS)
        print(f"  {item['case']:<9} {item['mode']:<8} {phases}")
    print(
        "\nDrift check per release (median seconds, part of Ferry's time above; a first release has none): the"
        "\ncheck play when it runs, else the check inside the stage task, per host (hosts run in parallel) and"
        "\nthe in-place barrier wait per host (until every host has checked)"
    )
    for item in out["cases"]:
        secs = item["drift_check_median"]
        med = item["ferry_phases_median"]
        if secs:
            share = f"check play {secs:.2f} s = {100 * secs / item['ferry']['median']:.0f} % of the release"
        elif CHECK_KEYS[0] in med:
            share = f"in the stage task: {CHECK_KEYS[0]} {med[CHECK_KEYS[0]]:.3f} s"
            if CHECK_KEYS[1] in med:
                share += f", {CHECK_KEYS[1]} {med[CHECK_KEYS[1]]:.3f} s"
            item["drift_check_in_stage"] = {k: med[k] for k in CHECK_KEYS if k in med}
        else:
            share = "not run"
        print(f"  {item['case']:<9} {item['mode']:<8} {share}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line; --quick shrinks everything for a smoke run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=10)
    p.add_argument("--files", type=int, default=5000)
    p.add_argument("--mb", type=float, default=60.0, help="approximate size of the tree in MB")
    p.add_argument("--repeat", type=int, default=None, help="rounds (default 3; 1 with --compare-hosts)")
    p.add_argument("--changes", type=int, default=2, help="one-file releases per mode per round")
    p.add_argument("--forks", type=int, default=0, help="Project.forks (default: the number of hosts)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: inplace,atomic")
    p.add_argument("--cold", action="store_true", help="close Ferry's ssh masters before each release")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 hosts, 500 files, 1 repeat")
    p.add_argument("--gray", type=int, default=0, help="gray-release rounds (atomic; 3 one-file releases each)")
    p.add_argument("--gray-only", action="store_true", help="only the gray-release case (implies --gray 2)")
    p.add_argument(
        "--compare-hosts",
        type=int,
        default=0,
        help="fleet case only: Ferry's releases to this many hosts and to --hosts (forks: --forks, default 50)",
    )
    p.add_argument("--redis-url", default=os.environ.get("FERRY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/fanout-<time>.json)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch dir (default: a new temp dir, removed)")
    args = p.parse_args(argv)
    if args.quick:
        args.hosts, args.files, args.repeat, args.changes, args.mb = 3, 500, 1, 1, args.mb * 500 / 5000
    args.repeat = args.repeat or (1 if args.compare_hosts else 3)
    if args.compare_hosts:
        if not 0 < args.compare_hosts < args.hosts:
            p.error("--compare-hosts must be smaller than --hosts")
        args.forks = args.forks or 50
    args.forks = args.forks or args.hosts
    args.load = []
    args.modes = [m for m in args.modes.split(",") if m]
    if set(args.modes) - set(MODES):
        p.error(f"--modes: {args.modes} (allowed: {MODES})")
    return args


def versions() -> dict:
    """Return the versions and machine facts the numbers depend on."""
    import ansible
    import ansible_runner

    def first_line(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.splitlines()[0]

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "ansible_core": ansible.__version__,
        "ansible_runner": getattr(ansible_runner, "__version__", "?"),
        "rsync": first_line("rsync", "--version"),
        "ssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False).stderr.strip(),
        "git": first_line("git", "--version"),
    }


def main(argv: list[str] | None = None) -> int:
    """Build hosts and data, run every round, print the table and write the JSON."""
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("release_fanout: needs root (network namespaces, sshd)", file=sys.stderr)
        return 2
    own_tmp = args.workdir is None
    tmp = Path(tempfile.mkdtemp(prefix="ferry-bench-")) if own_tmp else args.workdir.resolve()
    started = time.time()
    # Keep Ansible and svn away from ~ (and the socket paths short: tmp is short).
    os.environ.setdefault("ANSIBLE_HOME", str(tmp / "data" / "ansible"))
    try:
        log(f"generating {args.files} files (~{args.mb:.0f} MB) in {tmp / 'tree'}")
        paths = make_tree(tmp / "tree", args.files, int(args.mb * 1024 * 1024))
        svn = make_svn(tmp, tmp / "tree")
        base = Baseline(source=tmp / "tree")
        run("git", "init", "-q", base.source)
        base.commit()
        results: dict[tuple[str, str, str], Samples] = {}
        for case in (*CASES, "staging"):
            for mode in (*MODES, "one-file"):
                for impl in ("baseline", "ferry"):
                    results[(case, mode, impl)] = Samples()
        log(f"building {args.hosts} SSH hosts")
        with netns_ssh_hosts(args.hosts, tmp / "hosts", prefix=claim_prefix()) as hostset:
            base.hostset = hostset
            with ferry_app(tmp, args.redis_url) as ferry:
                control_dir = Path(ferry.app.config["FERRY_DATA_DIR"]) / "ansible" / "cp"
                ctx = {
                    "hostset": hostset,
                    "ferry": ferry,
                    "svn": svn,
                    "baseline": base,
                    "tmp": tmp,
                    "paths": paths,
                    "forks": args.forks,
                    "control_dir": control_dir,
                    "load": args.load,
                    "results": results,
                    "cold": args.cold,
                    "changes": args.changes,
                    "gray": {},
                    "fleet": {},
                }
                try:
                    for r in range(args.repeat if args.compare_hosts else 0):
                        for mode in args.modes:
                            fleet_round(ctx, r, mode, (args.compare_hosts, args.hosts))
                    for r in range(0 if args.gray_only or args.compare_hosts else args.repeat):
                        for mode in args.modes:
                            one_round(ctx, r, mode)
                    for r in range(args.gray or (2 if args.gray_only else 0)):
                        gray_round(ctx, r)
                finally:
                    close_masters(control_dir)
        summary = report(results, args) if not (args.gray_only or args.compare_hosts) else {}
        if args.compare_hosts:
            summary["fleet"] = fleet_report(ctx["fleet"], args)
        summary["gray"] = gray_report(ctx["gray"])
        summary.update(
            config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            machine=versions(),
            started=datetime.fromtimestamp(started, UTC).isoformat(),
            wall_seconds=round(time.time() - started, 1),
        )
        out = args.out or RESULTS / f"fanout-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2))
        print(f"\nwrote {out} ({summary['wall_seconds']} s)")
        return 0
    finally:
        if own_tmp:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    sys.exit(main())
