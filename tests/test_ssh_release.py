"""The release cycle against real SSH hosts (netns + sshd): trees byte for byte, unreachable and broken hosts."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import TEST_REDIS_URL, World, build_world
from tests.support.flow import Flow
from tests.support.hosts_fixture import require_netns_hosts
from tests.support.netns_hosts import HostSet
from tests.support.site import LocalHosts, sh, tree_of
from webapp import projects as svc
from webapp.extensions import db
from webapp.models import Run
from webapp.releases import snapshot_git_dir

pytestmark = [pytest.mark.ssh, pytest.mark.integration]

GROUP = "web"
REPO = Path(__file__).resolve().parent.parent
PLAYBOOKS = REPO / "playbooks"


@dataclass
class SshWorld:
    """A project whose inventory group is the netns SSH hosts, each with a deploy_root of its own."""

    world: World
    flow: Flow
    hostset: HostSet
    roots: dict[str, Path]

    @property
    def names(self) -> list[str]:
        """Return the host names in inventory order."""
        return [h.name for h in self.hostset.hosts]

    def live(self, name: str) -> str | None:
        """Return where `current` points on a host, or None."""
        link = self.roots[name] / "current"
        return os.readlink(link) if link.is_symlink() else None

    def commit_tree(self, commit: str, dest: Path) -> dict:
        """Return {path: (bytes, executable)} of a snapshot commit, exported with git archive."""
        dest.mkdir(parents=True)
        archive = subprocess.run(
            ["git", f"--git-dir={snapshot_git_dir(self.world.project)}", "archive", commit],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return tree_of(dest)

    def last_release_run(self, tid: int) -> Run:
        """Return the newest release run of a ticket."""
        return db.session.scalars(
            db.select(Run).where(Run.ticket_id == tid, Run.stage == "release").order_by(Run.id.desc())
        ).first()


def ssh_inventory(hostset: HostSet, roots: dict[str, Path], extra_vars: dict | None = None) -> str:
    """Return hostset's inventory with each host's deploy_root replaced by roots[name]."""
    lines = []
    for line in hostset.inventory_ini(GROUP, extra_vars).splitlines():
        name = line.split(" ", 1)[0]
        if name in roots and " deploy_root=" in line:
            line = f"{line.split(' deploy_root=')[0]} deploy_root={roots[name]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def close_masters(control_dir: Path) -> None:
    """Close the ssh ControlPersist masters a test left, so none outlives it."""
    for sock in control_dir.glob("*") if control_dir.is_dir() else []:
        subprocess.run(
            ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "ferry-test"],
            capture_output=True,
            check=False,
            timeout=10,
        )


@pytest.fixture
def make_world(app, client, tmp_path, ssh_hosts):
    """Return a builder of SshWorlds on the session's SSH hosts, with deploy roots fresh for this test."""

    def make(roots: dict[str, Path] | None = None, extra_vars: dict | None = None, **settings) -> SshWorld:
        world = build_world(app, tmp_path, **settings)
        roots = {h.name: tmp_path / "ssh-roots" / h.name / "www" for h in ssh_hosts.hosts} | (roots or {})
        inventory = app.config["FERRY_INVENTORY_DIR"] / "ssh-inventory.ini"
        inventory.write_text(ssh_inventory(ssh_hosts, roots, extra_vars))
        svc.update_project(db.session, world.project, inventory=str(inventory), group=GROUP)
        db.session.commit()
        world.hosts = LocalHosts(inventory=inventory, group=GROUP, roots=roots)
        return SshWorld(world=world, flow=Flow(client, world), hostset=ssh_hosts, roots=roots)

    yield make
    close_masters(Path(app.config["FERRY_DATA_DIR"]) / "ansible" / "cp")


def svn_set_executable(world: World, rel: str, on: bool) -> None:
    """Set or drop svn:executable on a file of the developer working copy (committed by the next commit)."""
    cfg = ("--config-dir", str(world.svn.config_dir))
    if on:
        sh("svn", "propset", "-q", *cfg, "svn:executable", "*", str(world.svn.wc / rel))
    else:
        sh("svn", "propdel", "-q", *cfg, "svn:executable", str(world.svn.wc / rel))


def stage_events(run: Run) -> dict[str, dict]:
    """Return each host's `Stage release` result (res["ferry"]["sync"][host]["stage"]) from the run's events."""
    out = {}
    for path in Path(run.run_dir).glob("artifacts/*/job_events/*.json"):
        event = json.loads(path.read_text())
        data = event.get("event_data") or {}
        if event.get("event") == "runner_on_ok" and data.get("task") == "Stage release":
            out[data["host"]] = data["res"]["ferry"]["sync"][data["host"]]["stage"]
    return out


def test_full_cycle_atomic_release_and_rollback_byte_for_byte(make_world, tmp_path):
    """File → stage → approve → release v1, v2 (content, delete, exec bits), roll back to v1, then v3 prunes v1."""
    s = make_world(keep_releases=2)
    flow, world = s.flow, s.world
    t1 = flow.ship({"index.html": "<h1>v1 over ssh</h1>\n"}, "v1")
    assert t1["version"] == 1
    assert {h["host"]: h["status"] for h in t1["hosts"]} == dict.fromkeys(s.names, "changed")
    want1 = s.commit_tree(t1["tested_commit"], tmp_path / "tag1")
    assert want1["bin/run.sh"][1] is True  # the exec bit is part of what must arrive
    for name in s.names:
        assert s.live(name) == "releases/1"
        assert tree_of(s.roots[name] / "current") == want1

    # v2: change, add an executable, delete a file, drop an exec bit.
    (world.svn.wc / "bin/deploy.sh").parent.mkdir(exist_ok=True)
    (world.svn.wc / "bin/deploy.sh").write_text("#!/bin/sh\necho deploy\n")
    sh("svn", "add", "-q", "--config-dir", str(world.svn.config_dir), str(world.svn.wc / "bin/deploy.sh"))
    svn_set_executable(world, "bin/deploy.sh", True)
    svn_set_executable(world, "bin/run.sh", False)
    t2 = flow.ship({"css/site.css": "body { color: red; }\n", "about/index.html": None}, "v2")
    assert t2["version"] == 2
    want2 = s.commit_tree(t2["tested_commit"], tmp_path / "tag2")
    assert want2["bin/deploy.sh"][1] is True and want2["bin/run.sh"][1] is False
    assert "about/index.html" not in want2
    for name in s.names:
        root = s.roots[name]
        assert s.live(name) == "releases/2"
        assert tree_of(root / "current") == want2
        assert tree_of(root / "releases/1") == want1  # the old release is untouched
        # Unchanged files are hard links into the previous release: only changes travelled.
        assert (root / "releases/1/index.html").stat().st_ino == (root / "releases/2/index.html").stat().st_ino
        assert (root / "releases/1/css/site.css").stat().st_ino != (root / "releases/2/css/site.css").stat().st_ino

    rid = flow.rollback(1)
    flow.act(rid, "approve", user="lead")
    back = flow.release(rid)
    assert back["state"] == "released", back["last_error"]
    for name in s.names:
        assert s.live(name) == "releases/1"
        assert tree_of(s.roots[name] / "current") == want1
    history = flow.client.get("/api/projects/site/releases", headers=world.headers("dev")).get_json()["items"]
    assert [(r["version"], r["live"], r["bad"]) for r in history] == [(2, False, True), (1, True, False)]

    # keep_releases=2: v3 goes live and v1 leaves releases/ at once; its files go in the background.
    t3 = flow.ship({"index.html": "<h1>v3</h1>\n"}, "v3")
    assert t3["version"] == 3
    for name in s.names:
        assert sorted(p.name for p in (s.roots[name] / "releases").iterdir()) == ["2", "3"]
        assert (s.roots[name] / "current/index.html").read_text() == "<h1>v3</h1>\n"
    deadline = time.monotonic() + 30
    while any(any((s.roots[n] / ".ferry-trash").iterdir()) for n in s.names) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(any((s.roots[n] / ".ferry-trash").iterdir()) for n in s.names)


def test_unreachable_host_fails_release_then_retry_restages_only_that_host(make_world, tmp_path):
    """sshd down on one host while staging: release_failed, nothing switched; a retry stages only that host again.

    A first release, so no drift check runs before staging (with a live version, an unreachable host already
    fails the drift check and nothing is staged: tests/test_drift.py).
    """
    s = make_world()
    flow, world = s.flow, s.world
    world.svn.commit({"index.html": "<h1>v1</h1>\n"}, "v1")
    tid = flow.staged(reason="v1")
    flow.approve(tid)
    down, up = s.names[1], [s.names[0], s.names[2]]
    s.hostset.stop_sshd(down)
    try:
        t = flow.release(tid)
    finally:
        s.hostset.start_sshd(down)
    assert t["state"] == "release_failed"
    hosts = {h["host"]: h for h in t["hosts"]}
    assert hosts[down]["status"] == "unreachable"
    assert "Connection refused" in hosts[down]["message"], hosts[down]
    assert down in t["last_error"]
    for name in s.names:
        assert s.live(name) is None  # no host switched
    staged = {n: (s.roots[n] / "releases/1").stat() for n in up}
    assert not (s.roots[down] / "releases/1").exists()

    assert flow.act(tid, "retry")["state"] == "releasing"
    world.work()
    t = flow.get(tid)
    assert t["state"] == "released", t["last_error"]
    assert t["version"] == 1
    run = s.last_release_run(tid)
    assert run.only_hosts == [down]
    stage = stage_events(run)
    assert stage[down].get("skipped") is not True and stage[down]["changed_files"] > 0
    for name in up:
        assert stage[name]["skipped"] is True  # releases/1 from the failed run is kept, not re-sent
        now = (s.roots[name] / "releases/1").stat()
        assert (now.st_ino, now.st_mtime_ns) == (staged[name].st_ino, staged[name].st_mtime_ns)
    want = s.commit_tree(t["tested_commit"], tmp_path / "tag1")
    for name in s.names:
        assert s.live(name) == "releases/1"
        assert tree_of(s.roots[name] / "current") == want


def test_unwritable_deploy_root_fails_with_the_tools_message(make_world, ssh_hosts, tmp_path):
    """A deploy_root under a regular file (root ignores chmod) fails that host with mkdir's message."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the deploy root's parent should be\n")
    bad = ssh_hosts.hosts[2].name
    s = make_world(roots={bad: blocker / "www"})
    tid = s.flow.staged(reason="v1")
    s.flow.approve(tid)
    t = s.flow.release(tid)
    assert t["state"] == "release_failed"
    hosts = {h["host"]: h for h in t["hosts"]}
    assert hosts[bad]["status"] == "failed"
    assert "Not a directory" in hosts[bad]["message"], hosts[bad]
    for name in s.names:
        assert s.live(name) is None  # nothing switched anywhere
    for name in s.names[:2]:
        assert (s.roots[name] / "releases/1/index.html").exists()  # staged, waiting for a retry


def test_changed_host_key_is_refused_not_trusted(make_world):
    """A host presenting a key known_hosts does not list is refused; after restoring it a retry releases."""
    s = make_world()
    flow = s.flow
    tid = flow.staged(reason="v1")
    flow.approve(tid)
    odd = s.names[0]
    s.hostset.rotate_host_key(odd)
    try:
        t = flow.release(tid)
    finally:
        s.hostset.restore_host_key(odd)
    assert t["state"] == "release_failed"
    hosts = {h["host"]: h for h in t["hosts"]}
    assert hosts[odd]["status"] == "unreachable"
    assert "Host key verification failed" in hosts[odd]["message"], hosts[odd]
    assert all(s.live(n) is None for n in s.names)
    known = s.hostset.known_hosts.read_text()
    assert known.count(s.hostset.host(odd).ip) == 1  # the new key was not added
    flow.act(tid, "retry")
    s.world.work()
    assert flow.get(tid)["state"] == "released"


def test_forks_reach_ansible_and_nothing_is_compressed(make_world, tmp_path):
    """Project.forks lands on ansible-playbook's command line; ssh runs without -C and rsync without -z."""
    log = tmp_path / "ssh-argv.log"
    wrapper = tmp_path / "ssh-logging"
    # Records every ssh command line (Ansible's own and rsync's --rsh), then runs the real ssh.
    wrapper.write_text(f"#!/bin/sh\nprintf '%s\\037' \"$@\" >> {log}\nprintf '\\036' >> {log}\nexec ssh \"$@\"\n")
    wrapper.chmod(0o755)
    s = make_world(extra_vars={"ansible_ssh_executable": str(wrapper)}, forks=2)
    tid = s.flow.staged(reason="v1")
    s.flow.approve(tid)
    t = s.flow.release(tid)
    assert t["state"] == "released", t["last_error"]

    run_dir = Path(s.last_release_run(tid).run_dir)
    assert "--forks 2" in (run_dir / "env/cmdline").read_text()
    (command,) = [json.loads(p.read_text()) for p in run_dir.glob("artifacts/*/command")]
    argv = command["command"]
    assert argv[argv.index("--forks") + 1] == "2"
    assert json.loads((run_dir / "env/envvars").read_text())["ANSIBLE_HOST_KEY_CHECKING"] == "True"

    # One record (\036) per ssh run, one field (\037) per argument; Ansible quotes its ControlPath value.
    calls = [[a.replace('"', "") for a in rec.split("\037")[:-1]] for rec in log.read_text().split("\036")[:-1]]
    rsyncs = [c for c in calls if "--server" in c]
    assert len(rsyncs) >= len(s.names) and len(calls) > len(rsyncs)  # Ansible's ssh and rsync's ssh
    control_paths = set()
    for call in calls:
        assert "-C" not in call and "Compression=yes" not in call, call
        assert "StrictHostKeyChecking=no" not in call and "UserKnownHostsFile=/dev/null" not in call, call
        control_paths |= {a.split("=", 1)[1] for a in call if a.startswith("ControlPath=")}
    for call in rsyncs:
        server = call[call.index("--server") :]
        short = next(a for a in server[1:] if a.startswith("-") and not a.startswith("--"))
        assert "z" not in short.split(".")[0] and not any("compress" in a for a in server), server
    # One master per host, shared by Ansible and rsync.
    assert len(control_paths) == len(s.names), control_paths

    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(PLAYBOOKS / "ansible.cfg")
    assert "-C" not in shlex.split(cfg["ssh_connection"]["ssh_args"])


def test_release_fanout_benchmark_quick_smoke(tmp_path):
    """bench/release_fanout.py --quick runs end to end and writes its JSON (a smoke test: no timing asserted)."""
    require_netns_hosts()
    out = tmp_path / "fanout.json"
    # Atomic mode only: it runs every step of the script in ~25 s; both modes would double that.
    argv = [sys.executable, "bench/release_fanout.py", "--quick", "--modes", "atomic", "--out", str(out)]
    argv += ["--redis-url", TEST_REDIS_URL]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    cases = {(c["case"], c["mode"]): c for c in data["cases"]}
    assert set(cases) == {("full", "atomic"), ("one-file", "atomic")}
    for case in cases.values():
        assert case["baseline"]["median"] > 0 and case["ferry"]["median"] > 0
        assert case["ferry_phases_median"]["click → job → ansible-playbook up"] > 0
    assert data["staging_one_file"]["samples"]
    assert "ratio med" in proc.stdout  # the table was printed
