"""jobs/runner.py against real ansible-runner: results, expected hosts, cancel/timeout, replay, no secrets."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from jobs import runner
from webapp.stages import replay_argv

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-xyz"

PING = """
- hosts: all
  gather_facts: false
  tasks:
    - name: say hello
      ansible.builtin.debug:
        msg: "{{ greeting }}"
    - name: failing but ignored
      ansible.builtin.command: /bin/false
      ignore_errors: true
"""

SLOW = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: slow
      ansible.builtin.command: sleep 31.7
"""


def _prepare(tmp_path: Path, name: str, text: str, extravars: dict | None = None) -> Path:
    """Prepare a run dir (localhost inventory) and drop a test playbook into its project copy."""
    run_dir = tmp_path / "run"
    runner.prepare_run_dir(
        run_dir,
        playbook="staging_update.yml",
        inventory_file=None,
        extravars=extravars or {},
        envvars={"ANSIBLE_HOME": str(tmp_path / "ansible")},
    )
    (run_dir / "project" / name).write_text(text)
    return run_dir


def _procs_mentioning(marker: str) -> list[str]:
    """Return the command lines of live processes that mention marker."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":  # zombies are reaped late by PID 1 (TESTHOSTS pitfall 6)
            found.append(f"{pid}: {cmd}")
    return found


def test_results_events_replay_and_no_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_TEST_SECRET", SECRET)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://u:{SECRET}@db/ferry")
    run_dir = _prepare(tmp_path, "ping.yml", PING, {"greeting": "hello from extravars"})
    events: list[dict] = []
    res = runner.run_playbook(run_dir, "ping.yml", expected_hosts=["localhost"], on_event=events.append)
    assert res.status == "successful", res.error
    assert res.rc == 0 and res.error == ""
    assert res.hosts["localhost"].status == "ok"  # the ignored failure does not count as a failure
    assert any(e.get("event") == "playbook_on_stats" for e in events)
    assert any("hello from extravars" in (e.get("stdout") or "") for e in events)

    # Inputs on disk, so a replay by hand is identical.
    assert json.loads((run_dir / "env/extravars").read_text()) == {"greeting": "hello from extravars"}
    envvars = json.loads((run_dir / "env/envvars").read_text())
    assert envvars["ANSIBLE_HOME"] == str(tmp_path / "ansible")
    assert envvars["ANSIBLE_SSH_CONTROL_PATH_DIR"].startswith(str(tmp_path / "ansible"))
    assert (run_dir / "project/ansible.cfg").is_file() and (run_dir / "project/action_plugins").is_dir()

    # No secret anywhere under the run dir (artifacts/*/command would otherwise hold the whole env).
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    command = json.loads(next((run_dir / "artifacts").glob("*/command")).read_text())
    assert "env" not in command

    argv = replay_argv(run_dir, "ping.yml")
    clean_env = {k: v for k, v in os.environ.items() if not runner.is_secret_name(k)}
    proc = subprocess.run(argv, capture_output=True, text=True, env=clean_env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hello from extravars" in proc.stdout
    assert len(list((run_dir / "artifacts").iterdir())) == 2


def test_expected_hosts_not_covered_is_failure(tmp_path: Path) -> None:
    run_dir = _prepare(tmp_path, "ping.yml", PING, {"greeting": "hi"})
    res = runner.run_playbook(run_dir, "ping.yml", expected_hosts=["localhost", "web9"])
    assert res.status == "failed"
    assert "web9" in res.error
    assert res.hosts["web9"].status == "failed"
    assert res.hosts["localhost"].status == "ok"


def test_setup_errors_raise(tmp_path: Path) -> None:
    with pytest.raises(runner.RunnerSetupError):
        runner.prepare_run_dir(tmp_path / "a", playbook="nope.yml", inventory_file=None, extravars={}, envvars={})
    with pytest.raises(runner.RunnerSetupError):
        runner.prepare_run_dir(
            tmp_path / "b", playbook="release.yml", inventory_file=tmp_path / "missing.ini", extravars={}, envvars={}
        )
    with pytest.raises(runner.RunnerSetupError):
        runner.prepare_run_dir(
            tmp_path / "c", playbook="release.yml", inventory_file=None, extravars={}, envvars={"VAULT_TOKEN": "x"}
        )
    with pytest.raises(runner.RunnerSetupError):
        runner.run_playbook(tmp_path / "never-prepared", "release.yml")


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancel_and_timeout_leave_no_processes(tmp_path: Path, how: str) -> None:
    run_dir = _prepare(tmp_path, "slow.yml", SLOW)
    started = time.monotonic()
    seen: list[str] = []

    def should_cancel() -> bool:
        # Cancel once the slow task is really running (a fixed delay is flaky on a loaded machine).
        return how == "cancel" and "runner_on_start" in seen

    res = runner.run_playbook(
        run_dir,
        "slow.yml",
        timeout=8 if how == "timeout" else 600,
        should_cancel=should_cancel,
        on_event=lambda e: seen.append(e.get("event", "")),
    )
    elapsed = time.monotonic() - started
    assert res.status == ("canceled" if how == "cancel" else "timeout")
    assert res.error
    assert elapsed < 25, elapsed  # far below the 31.7 s sleep: the run was stopped, not finished
    assert "runner_on_start" in seen  # the sleep really was running
    time.sleep(0.3)
    assert _procs_mentioning("sleep 31.7") == []
    assert _procs_mentioning(str(run_dir)) == []
