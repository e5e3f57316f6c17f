"""Admin project settings stay inside their folders: hook task files only from playbooks/hooks/, inventories
only from the inventory directory (static files, never an executable), through the pages and the CLI."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from tests.conftest import PASSWORD
from tests.support.flow import Flow
from webapp import projects as svc
from webapp.errors import BadInput
from webapp.extensions import db
from webapp.models import Project

pytestmark = pytest.mark.integration


def login(app, username: str):
    """Return a test client logged in through the login form."""
    c = app.test_client()
    assert c.post("/login", data={"username": username, "password": PASSWORD}).status_code == 302
    return c


def settings_of(name: str) -> tuple:
    """Return a project's path settings, fresh from the database."""
    db.session.expire_all()
    p = db.session.scalar(select(Project).where(Project.name == name))
    return (p.inventory, p.hook_tasks, p.group, p.svn_url) if p else None


def options(page: str, select_name: str) -> list[str]:
    """Return the option values of a <select> on a page."""
    block = re.search(rf'<select[^>]*name="{select_name}"[^>]*>(.*?)</select>', page, re.S)
    assert block, select_name
    return re.findall(r'<option value="([^"]*)"', block.group(1))


@pytest.fixture
def files(app, tmp_path):
    """Lay out candidate files: good and bad inventories, a YAML file outside playbooks/hooks/."""
    inv = app.config["FERRY_INVENTORY_DIR"]
    (inv / "prod.ini").write_text("[web]\nweb1 ansible_connection=local deploy_root=/tmp/x\n")
    script = inv / "dynamic.py"
    script.write_text("#!/bin/sh\necho '{}'\n")
    script.chmod(0o755)
    (inv / "sub").mkdir()
    outside = tmp_path / "outside.ini"
    outside.write_text("[web]\nweb1\n")
    (inv / "link.ini").symlink_to(outside)
    evil_hook = tmp_path / "evil.yml"
    evil_hook.write_text("- ansible.builtin.command: id\n")
    return {"script": script, "outside": outside, "evil_hook": evil_hook}


def test_admin_form_offers_only_what_is_allowed(app, world, files):
    """The project form's inventory and hook fields are selects of the files that are allowed."""
    page = login(app, "admin").get("/admin/projects/site").get_data(as_text=True)
    assert options(page, "inventory") == ["hosts.ini", "prod.ini"]  # no script, no symlink out, no directory
    hooks = options(page, "hook_tasks")
    assert hooks[0] == "" and "hooks/example_reload.yml" in hooks and "hooks/sleep.yml" in hooks
    assert all(h == "" or h.startswith("hooks/") for h in hooks)


def test_hook_and_inventory_outside_their_folders_are_refused(app, world, files):
    """Absolute, `../`, symlinked-out, executable or missing choices: 400 naming the field and why; nothing saved."""
    admin = login(app, "admin")
    base = {
        "op": "settings",
        "svn_url": world.svn.url,
        "staging_dir": str(world.staging_dir),
        "inventory": "hosts.ini",
        "group": "web",
    }
    before = settings_of("site")
    cases = [
        ({"hook_tasks": str(files["evil_hook"])}, "hook_tasks", "playbooks/hooks/"),
        ({"hook_tasks": "../release.yml"}, "hook_tasks", "playbooks/hooks/"),
        ({"hook_tasks": "hooks/../release.yml"}, "hook_tasks", "playbooks/hooks/"),
        ({"hook_tasks": "release.yml"}, "hook_tasks", "playbooks/hooks/"),
        ({"hook_tasks": "hooks/missing.yml"}, "hook_tasks", "playbooks/hooks/"),
        ({"inventory": str(files["outside"])}, "inventory", "outside the inventory directory"),
        ({"inventory": "../outside.ini"}, "inventory", "outside the inventory directory"),
        ({"inventory": "link.ini"}, "inventory", "outside the inventory directory"),
        ({"inventory": "dynamic.py"}, "inventory", "executable"),
        ({"inventory": str(files["script"])}, "inventory", "executable"),
        ({"inventory": "sub"}, "inventory", "no such file"),
        ({"inventory": "/etc/passwd"}, "inventory", "outside the inventory directory"),
        ({"group": "web:&db"}, "group", "not a pattern"),
        ({"svn_url": world.svn.url + "\x1b]8;;evil\x07"}, "svn_url", "control character"),
    ]
    for change, field, why in cases:
        r = admin.post("/admin/projects/site", data={**base, **change})
        text = r.get_data(as_text=True)
        assert r.status_code == 400 and f"{field}: " in text and why in text, (change, r.status_code, text[-600:])
        assert settings_of("site") == before, change
        r = admin.post("/admin/projects", data={**base, **change, "name": "newsite"})
        assert r.status_code == 400 and settings_of("newsite") is None, change

    # Allowed: a name in playbooks/hooks/ (with or without hooks/), an inventory name or its absolute path inside.
    for hook in ("example_reload.yml", "hooks/example_reload.yml"):
        r = admin.post("/admin/projects/site", data={**base, "hook_tasks": hook, "inventory": "prod.ini"})
        assert r.status_code == 303, r.get_data(as_text=True)
        assert settings_of("site")[:2] == ("prod.ini", "hooks/example_reload.yml")
    inventory = app.config["FERRY_INVENTORY_DIR"] / "hosts.ini"
    r = admin.post("/admin/projects/site", data={**base, "inventory": str(inventory), "hook_tasks": ""})
    assert r.status_code == 303 and settings_of("site")[:2] == ("hosts.ini", "")


def test_cli_applies_the_same_rules(app, world, files):
    """`flask project create` refuses hooks and inventories outside their folders with the reason and exit != 0."""
    runner = app.test_cli_runner()
    base = ["project", "create", "clisite", "--svn-url", world.svn.url, "--staging-dir", "/srv/s", "--group", "web"]
    for extra, field in (
        (["--inventory", str(files["outside"])], "inventory"),
        (["--inventory", "dynamic.py"], "inventory"),
        (["--inventory", "hosts.ini", "--hook", str(files["evil_hook"])], "hook_tasks"),
        (["--inventory", "hosts.ini", "--hook", "../release.yml"], "hook_tasks"),
        (["--inventory", "hosts.ini", "--shared", "."], "shared_paths"),
        (["--inventory", "hosts.ini", "--keep", "99999999999999999999999"], "keep_releases"),
    ):
        r = runner.invoke(args=base + extra)
        assert r.exit_code != 0 and f"{field}: " in r.output, (extra, r.output)
        assert settings_of("clisite") is None
    r = runner.invoke(args=[*base, "--inventory", "prod.ini", "--hook", "hooks/example_reload.yml"])
    assert r.exit_code == 0, r.output
    assert settings_of("clisite")[:2] == ("prod.ini", "hooks/example_reload.yml")


def test_release_job_resolves_inventories_inside_the_directory_only(app, world, files):
    """A stored setting that bypassed the services (an old row) is still refused when a release reads it."""
    assert svc.inventory_path("hosts.ini") == (app.config["FERRY_INVENTORY_DIR"] / "hosts.ini").resolve()
    for stored in (str(files["outside"]), "dynamic.py", "../outside.ini"):
        with pytest.raises(BadInput, match="inventory"):
            svc.inventory_path(stored)


def test_release_never_runs_a_stored_script_inventory_or_outside_hook(app, client, world, tmp_path):
    """Old rows written before the rules: the release fails with the reason; neither file runs; fixed, it ships."""
    flow = Flow(client, world)
    ran = tmp_path / "ran"
    script = app.config["FERRY_INVENTORY_DIR"] / "dyn.sh"
    script.write_text(f"#!/bin/sh\ntouch {ran}/inventory\necho '{{}}'\n")
    script.chmod(0o755)
    hook = tmp_path / "evil.yml"
    hook.write_text(f"- ansible.builtin.command: touch {ran}/hook\n")
    ran.mkdir()
    tid = flow.staged(reason="guarded")
    flow.approve(tid)
    world.project.inventory = "dyn.sh"  # as an old row could hold it; the services refuse it now
    db.session.commit()
    t = flow.release(tid)
    assert t["state"] == "release_failed" and "inventory" in t["last_error"] and "executable" in t["last_error"]
    world.project.inventory, world.project.hook_tasks = "hosts.ini", str(hook)
    db.session.commit()
    flow.act(tid, "retry")
    world.work()
    t = flow.get(tid)
    assert t["state"] == "release_failed" and "hook_tasks" in t["last_error"]
    assert list(ran.iterdir()) == []
    world.project.hook_tasks = "hooks/example_reload.yml"
    db.session.commit()
    flow.act(tid, "retry")
    world.work()
    assert flow.get(tid)["state"] == "released"
    assert list(ran.iterdir()) == []
