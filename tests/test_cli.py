"""The ops CLI: users, tokens, projects and memberships."""

from __future__ import annotations

from sqlalchemy import select

from webapp.extensions import db
from webapp.models import ApiToken, Membership, Project, User


def test_user_project_member_and_token_commands(app, tmp_path):
    """`flask user create`, `project create`, `project member` and `user token` do what ops scripts expect."""
    runner = app.test_cli_runner()
    inv = app.config["FERRY_INVENTORY_DIR"] / "web.ini"
    inv.write_text("[web]\nweb1 ansible_connection=local deploy_root=/tmp/x\n")
    r = runner.invoke(args=["user", "create", "alice", "--password", "long-enough-pw", "--admin"])
    assert r.exit_code == 0, r.output
    assert db.session.scalar(select(User).where(User.username == "alice")).is_admin
    r = runner.invoke(args=["user", "create", "alice", "--password", "long-enough-pw"])
    assert r.exit_code != 0 and "already exists" in r.output
    r = runner.invoke(
        args=[
            "project",
            "create",
            "shop",
            "--svn-url",
            "file:///srv/svn/shop/trunk",
            "--staging-dir",
            str(tmp_path / "s"),
            "--inventory",
            "web.ini",
            "--group",
            "web",
            "--staging-url",
            "http://staging/",
            "--no-approval",
            "--allow-self-approval",
            "--mode",
            "inplace",
            "--keep",
            "3",
        ]
    )
    assert r.exit_code == 0, r.output
    project = db.session.scalar(select(Project).where(Project.name == "shop"))
    assert (project.requires_approval, project.allow_self_approval, project.deploy_mode, project.keep_releases) == (
        False,
        True,
        "inplace",
        3,
    )
    r = runner.invoke(
        args=[
            "project",
            "create",
            "shop",
            "--svn-url",
            "file:///x",
            "--staging-dir",
            "/x",
            "--inventory",
            "web.ini",
            "--group",
            "web",
        ]
    )
    assert r.exit_code != 0 and "already exists" in r.output
    r = runner.invoke(
        args=[
            "project",
            "create",
            "bad",
            "--svn-url",
            "file:///x",
            "--staging-dir",
            "/x",
            "--inventory",
            "missing.ini",
            "--group",
            "web",
        ]
    )
    assert r.exit_code != 0 and "inventory" in r.output
    r = runner.invoke(args=["project", "member", "shop", "alice", "--role", "lead"])
    assert r.exit_code == 0, r.output
    assert db.session.scalar(select(Membership)).role == "lead"
    r = runner.invoke(args=["user", "token", "alice"])
    token = r.output.strip()
    assert r.exit_code == 0 and token.startswith("fry_")
    stored = db.session.scalar(select(ApiToken))
    assert stored.token_hash == ApiToken.digest(token) and token not in stored.token_hash
    client = app.test_client()
    listed = client.get("/api/projects", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert [p["name"] for p in listed] == ["shop"]
