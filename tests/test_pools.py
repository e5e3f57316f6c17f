"""Worker pools: each project's runs only on its pool's workers and data dir; drain lets running stages finish."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from sqlalchemy import select

from jobs import pools
from jobs.cli import drain_cmd, undrain_cmd
from jobs.reconcile import reconcile
from jobs.runner import stop_orphans
from tests.support.flow import Flow
from tests.support.site import make_local_hosts
from tests.support.workers import ansible_processes, kill_worker, start_worker, stop_worker, wait_for
from webapp import projects as svc
from webapp.errors import BadInput, Conflict
from webapp.extensions import db
from webapp.live import drain_key
from webapp.models import Project, Run

pytestmark = pytest.mark.integration


@pytest.fixture
def flow(client, world):
    """Return API shortcuts for the world."""
    return Flow(client, world)


def runs_of(tid: int, stage: str | None = None) -> list[Run]:
    """Return a ticket's runs (of one stage), oldest first."""
    query = select(Run).where(Run.ticket_id == tid).order_by(Run.id)
    if stage:
        query = query.where(Run.stage == stage)
    return list(db.session.scalars(query))


def state(flow: Flow, tid: int, user: str = "dev") -> str:
    """Return a ticket's state."""
    return flow.get(tid, user)["state"]


def slow_hook(world, seconds: int) -> None:
    """Make every release of the site project run a hook that sleeps `seconds` on each host."""
    world.project.hook_tasks = "hooks/sleep.yml"
    db.session.commit()
    with world.hosts.inventory.open("a") as fh:  # the last section is [web:vars]
        fh.write(f"hook_sleep={seconds}\n")


def fake_orphan(run_dir: Path) -> subprocess.Popen:
    """Start a process that looks like an ansible-playbook of `run_dir` to the reconciler (in its own session)."""
    argv = [sys.executable, "-c", "import time; time.sleep(120)", "ansible-playbook", f"{run_dir}/project/release.yml"]
    return subprocess.Popen(argv, start_new_session=True)


def test_project_queue_is_a_plain_name_and_moves_only_when_idle(app, world, flow):
    """The pool defaults to FERRY_QUEUE, must be a plain name, and cannot change under a queued run."""
    assert world.project.queue == app.config["FERRY_QUEUE"]
    with pytest.raises(BadInput):
        svc.update_project(db.session, world.project, queue="a b")
    db.session.rollback()
    svc.update_project(db.session, world.project, queue="pool-a")
    db.session.commit()
    tid = flow.file(reason="queued on pool-a")
    assert Queue("pool-a", connection=Redis.from_url(app.config["REDIS_URL"])).job_ids == [f"run-{runs_of(tid)[0].id}"]
    with pytest.raises(Conflict):
        svc.update_project(db.session, world.project, queue="pool-b")


def test_each_project_runs_only_on_its_pool_and_a_dead_pool_leaves_the_other_alone(app, world, flow, tmp_path):
    """Two pools, two workers with their own data dirs: each project's runs, repositories and run dirs stay
    on its pool's machine; killing pool A's worker leaves project B releasing, and pool A's queued run waiting.
    Pool B's reconciler leaves pool A's lost run alone; pool A's reconciler elsewhere fails it and says where its
    orphans are; on machine A it stops them."""
    app.config["FERRY_HEARTBEAT_TTL"] = 2
    other_hosts = make_local_hosts(tmp_path / "prod2", 2, inventory=app.config["FERRY_INVENTORY_DIR"] / "hosts2.ini")
    elsewhere = svc.get_project(db.session, "elsewhere")
    svc.update_project(db.session, elsewhere, inventory="hosts2.ini", queue="pool-b")
    svc.update_project(db.session, world.project, queue="pool-a")
    db.session.commit()
    world.svn.commit({"index.html": "v1\n"}, "first")
    data = {name: tmp_path / f"data-{name}" for name in ("a", "b")}
    workers = {
        name: start_worker(
            app, tmp_path / f"worker-{name}.log", queues=(f"pool-{name}",), FERRY_DATA_DIR=str(data[name]),
            FERRY_HOSTNAME=f"machine-{name}",
        )
        for name in ("a", "b")
    }  # fmt: skip
    try:
        mine = flow.file(reason="site change")
        theirs = flow.file(reason="elsewhere change", user="other", project="elsewhere")
        wait_for(lambda: state(flow, mine) == "testing", 120, what="site staged")
        wait_for(lambda: state(flow, theirs, "other") == "testing", 120, what="elsewhere staged")
        site_run, other_run = runs_of(mine, "staging")[0], runs_of(theirs, "staging")[0]
        assert (site_run.worker, other_run.worker) == ("machine-a", "machine-b")
        assert Path(site_run.run_dir) == data["a"] / "runs" / str(site_run.id) and Path(site_run.run_dir).is_dir()
        assert Path(other_run.run_dir) == data["b"] / "runs" / str(other_run.id) and Path(other_run.run_dir).is_dir()
        assert not (data["b"] / "runs" / str(site_run.id)).exists()
        assert not (data["a"] / "runs" / str(other_run.id)).exists()
        assert (data["a"] / "projects" / "site" / "staging.git").is_dir()
        assert (data["b"] / "projects" / "elsewhere" / "staging.git").is_dir()
        assert not (data["a"] / "projects" / "elsewhere").exists() and not (data["b"] / "projects" / "site").exists()

        # Pool A's worker dies in the middle of a release (its ansible-playbook is left running on machine A).
        slow_hook(world, 120)
        flow.approve(mine)
        flow.act(mine, "release")
        wait_for(lambda: ansible_processes(str(data["a"])), 120, what="site release running on machine A")
        kill_worker(workers["a"])
        # The hang-up of its pty usually ends the real ansible-playbook soon; this one outlives it like an orphan.
        orphan = fake_orphan(data["a"] / "runs" / str(runs_of(mine, "release")[-1].id))
        later = flow.file(reason="waits for pool A")

        # Project B does not notice: its release completes on pool B.
        flow.act(theirs, "test-passed", user="other")
        flow.act(theirs, "approve", user="lead2")
        flow.act(theirs, "release", user="other")
        wait_for(lambda: state(flow, theirs, "other") == "released", 120, what="elsewhere released")
        release = runs_of(theirs, "release")[-1]
        assert release.status == "successful" and release.worker == "machine-b"
        assert Path(release.run_dir).is_relative_to(data["b"])
        assert all((root / "current" / "index.html").read_text() == "v1\n" for root in other_hosts.roots.values())
        assert runs_of(later)[0].status == "queued"  # pool B never takes pool A's runs
        assert Queue("pool-a", connection=Redis.from_url(app.config["REDIS_URL"])).count == 1

        time.sleep(2.5)  # the killed run's heartbeat is now stale
        db.session.commit()
        assert reconcile(["pool-b"])["lost"] == 0  # not its pool
        result = reconcile(["pool-a"])  # a reconciler of pool A on another machine (this test's hostname)
        assert result["lost"] == 1 and result["orphans_stopped"] == 0
        db.session.expire_all()
        lost = runs_of(mine, "release")[-1]
        assert lost.status == "lost" and "worker lost on machine-a" in lost.error
        assert "can only be stopped on machine-a" in lost.error
        assert state(flow, mine) == "release_failed"
        assert ansible_processes(str(data["a"]))  # not this machine's to stop

        app.config.update(FERRY_HOSTNAME="machine-a", FERRY_DATA_DIR=data["a"])  # pool A's machine reconciles
        result = reconcile(["pool-a"])
        assert result["orphans_stopped"] == 1 and result["lost"] == 0
        assert ansible_processes(str(data["a"])) == [] and orphan.wait(timeout=10) is not None
    finally:
        for proc in workers.values():
            stop_worker(proc)
        for run_dir in (data["a"] / "runs").glob("*"):
            stop_orphans(run_dir, grace=1)


def test_drain_lets_the_running_stage_finish_and_takes_no_new_job_until_undrain(app, world, flow, tmp_path):
    """`flask drain`: the running release finishes, a run queued meanwhile waits; `flask undrain` lets it run."""
    pool = app.config["FERRY_QUEUE"]
    world.svn.commit({"index.html": "v1\n"}, "first")
    tid = flow.staged(reason="to release")
    slow_hook(world, 6)
    flow.approve(tid)
    flow.act(tid, "release")
    worker = start_worker(app, tmp_path / "worker.log", queues=(pool,))
    runner = app.test_cli_runner()
    try:
        wait_for(lambda: ansible_processes(str(tmp_path)), 120, what="release running")
        drained = runner.invoke(drain_cmd, ["--queue", pool])
        assert drained.exit_code == 1, drained.output  # a run is still going
        assert f"pool {pool}: drained" in drained.output and "1 run(s) still running" in drained.output

        later = flow.file(reason="filed while drained")
        wait_for(lambda: state(flow, tid) == "released", 120, what="the running release finished")
        assert runs_of(tid, "release")[-1].status == "successful"
        time.sleep(5)  # > 2 drain polls: the idle worker still takes nothing
        db.session.commit()
        assert runs_of(later)[0].status == "queued" and worker.poll() is None
        status = runner.invoke(drain_cmd, ["--status", "--queue", pool])
        assert status.exit_code == 0, status.output
        assert "nothing running" in status.output and "1 job(s) waiting" in status.output
        assert ": drained, job -" in status.output  # the worker's state

        undrained = runner.invoke(undrain_cmd, ["--queue", pool])
        assert undrained.exit_code == 0 and pool in undrained.output
        wait_for(lambda: state(flow, later) == "testing", 120, what="the queued run ran after undrain")
        assert runs_of(later)[0].status == "successful"
    finally:
        stop_worker(worker)


def test_cli_sets_and_shows_the_project_queue(app, world):
    """`flask project set --queue` moves an idle project to another pool."""
    result = app.test_cli_runner().invoke(args=["project", "set", "site", "--queue", "pool-x"])
    assert result.exit_code == 0, result.output
    db.session.expire_all()
    assert db.session.scalar(select(Project.queue).where(Project.name == "site")) == "pool-x"


def test_a_job_taken_just_as_the_pool_drains_goes_back_to_the_front_of_its_queue(app, monkeypatch):
    """The worker was already waiting on the queue when the drain and a job arrived together: it puts the job back."""
    monkeypatch.setattr(pools, "DRAIN_POLL", 4)  # the worker blocks on the queue for 4 s
    redis = Redis.from_url(app.config["REDIS_URL"])
    queue = Queue("pool-r", connection=redis)
    first = queue.enqueue("jobs.verify.verify_job", 0, job_id="first")
    worker = pools.PoolWorker([queue], connection=redis)
    assert worker.dequeue_job_and_maintain_ttl(30)[0].id == "first"  # an open pool hands jobs out
    got = []
    waiting = threading.Thread(
        target=lambda: got.append(worker.dequeue_job_and_maintain_ttl(30, max_idle_time=6)), daemon=True
    )
    waiting.start()
    time.sleep(1)  # the worker is blocked in BLMOVE on pool-r
    queue.create_job("jobs.verify.verify_job", args=(0,), job_id="second", status=JobStatus.QUEUED).save()
    with redis.pipeline() as pipe:  # drain flag and job land together (MULTI)
        pipe.set(drain_key("pool-r"), "1")
        queue.push_job_id("second", pipeline=pipe)
        pipe.execute()
    waiting.join(timeout=30)
    assert got == [None]  # nothing was taken
    assert queue.job_ids == ["second"]  # taken from the queue (RQ logs it) and put back untouched
    assert queue.intermediate_queue.get_job_ids() == [first.id]  # "first" was handed out, "second" was not
    assert Job.fetch("second", connection=redis).get_status() == "queued"
