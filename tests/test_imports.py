"""The layering rule: imports go one way, jobs → webapp; the web app knows stages only as data."""

from __future__ import annotations

from tests.support.imports import violations
from webapp.stages import STAGES


def test_webapp_never_imports_jobs():
    """No module under webapp/ imports jobs (not even inside a function)."""
    assert violations() == []


def test_every_stage_names_an_existing_job_and_playbook():
    """Each stage's dotted job path resolves and its playbook exists: the table is the one definition."""
    import importlib
    from pathlib import Path

    playbooks = Path(__file__).resolve().parent.parent / "playbooks"
    for stage in STAGES.values():
        module, _, func = stage.job.rpartition(".")
        assert callable(getattr(importlib.import_module(module), func)), stage.job
        assert (playbooks / stage.playbook).is_file(), stage.playbook
