"""Pipeline stages as data: one definition per stage, read by the dispatcher, the worker, the reconciler, replay
and the API.

A stage is a kind of run: which playbook it runs, which RQ job runs it (enqueued by its dotted path, so the
web app never imports `jobs`), which lock lane it holds (one run per project and lane at a time), which
ticket state a worker expects when it takes the run, and which system event a failed or lost run fires.
Adding a stage: one entry here, its job module in `jobs/`, its playbook, its tests.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from . import workflow
from .workflow import State

# The RQ job outlives the playbook timeout by this much, so the runner (not RQ) stops ansible.
JOB_TIMEOUT_MARGIN = 300
# ansible-runner execs ansible-playbook from PATH: replays by hand use this interpreter's venv.
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Stage:
    """What Ferry needs to know to queue, run, recover and replay one kind of run."""

    name: str
    playbook: str  # in playbooks/
    job: str  # dotted path of the RQ job taking the run id
    lane: str  # lock lane per project
    claim_state: State  # the ticket state a worker expects when it takes a queued run
    fail_event: str  # system event for a failed or lost run
    per_host: bool  # runs against the project's inventory group (False: the controller only)


STAGING = Stage(
    name="staging",
    playbook="staging_update.yml",
    job="jobs.staging.update_staging",
    lane="staging",
    claim_state=State.PENDING_STAGING,
    fail_event=workflow.STAGING_FAILED,
    per_host=False,
)
RELEASE = Stage(
    name="release",
    playbook="release.yml",
    job="jobs.release.release_ticket",
    lane="release",
    claim_state=State.RELEASING,
    fail_event=workflow.RELEASE_FAILED,
    per_host=True,
)
# After a release run was lost (worker killed) or stopped: put every host back on the live version. Queued
# by the reconciler with the ticket already in release_failed; it changes no state, it records the outcome.
SWITCH_BACK = Stage(
    name="switch_back",
    playbook="release.yml",
    job="jobs.release.switch_back_job",
    lane="release",
    claim_state=State.RELEASE_FAILED,
    fail_event=workflow.RELEASE_FAILED,
    per_host=True,
)
STAGES: dict[str, Stage] = {s.name: s for s in (STAGING, RELEASE, SWITCH_BACK)}


def stage(name: str) -> Stage:
    """Return a stage by name (a run's `stage` column)."""
    return STAGES[name]


def replay_argv(run_dir: str | Path, playbook: str) -> list[str]:
    """Return the command ops type to replay a run dir by hand (`ansible-runner run <dir> -p <playbook>`)."""
    # ansible-runner finds ansible-playbook on PATH only (its --binary drops the playbook argument).
    path = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", os.defpath)])
    return [
        "env",
        f"PATH={path}",
        str(VENV_BIN / "ansible-runner"),
        "run",
        str(Path(run_dir).absolute()),
        "-p",
        playbook,
    ]
