"""Admin pages: users, projects and memberships are managed in the UI, and only by admins."""

from __future__ import annotations

from sqlalchemy import select

from tests.conftest import PASSWORD
from webapp.extensions import db
from webapp.models import Membership, Project, User


def login(app, username, password=PASSWORD):
    """Return a test client logged in as `username`."""
    c = app.test_client()
    assert c.post("/login", data={"username": username, "password": password}).status_code == 302
    return c


def test_admin_creates_user_project_and_membership_in_the_ui(app, world, tmp_path):
    """An admin creates a user, a project pointing at an inventory group, and makes the user its lead."""
    admin = login(app, "admin")
    r = admin.post("/admin/users", data={"username": "carol", "password": "carol-password"}, follow_redirects=True)
    assert "User created." in r.get_data(as_text=True)
    form = {
        "name": "blog",
        "svn_url": world.svn.url,
        "staging_dir": str(tmp_path / "blog-staging"),
        "staging_url": "http://blog.staging/",
        "inventory": str(world.hosts.inventory),
        "group": world.hosts.group,
        "deploy_mode": "inplace",
        "keep_releases": "4",
        "forks": "5",
        "stage_timeout": "600",
        "shared_paths": "uploads\n.env",
        "requires_approval": "on",
    }
    r = admin.post("/admin/projects", data=form, follow_redirects=True)
    assert "Project blog created." in r.get_data(as_text=True)
    project = db.session.scalar(select(Project).where(Project.name == "blog"))
    assert (project.deploy_mode, project.keep_releases, project.forks, project.shared_paths) == (
        "inplace",
        4,
        5,
        ["uploads", ".env"],
    )
    r = admin.post("/admin/projects/blog", data={"op": "member", "username": "carol", "role": "lead"})
    assert r.status_code == 303
    carol = db.session.scalar(select(User).where(User.username == "carol"))
    assert db.session.scalar(select(Membership).where(Membership.user_id == carol.id)).role == "lead"
    assert "blog" in login(app, "carol", "carol-password").get("/projects").get_data(as_text=True)
    # Bad input changes nothing and says what is wrong.
    r = admin.post("/admin/projects", data={**form, "name": "blog2", "inventory": "missing.ini"}, follow_redirects=True)
    assert "inventory" in r.get_data(as_text=True)
    assert db.session.scalar(select(Project).where(Project.name == "blog2")) is None
    r = admin.post("/admin/users", data={"username": "carol", "password": "another-pass"}, follow_redirects=True)
    assert "already exists" in r.get_data(as_text=True)


def test_non_admins_cannot_reach_admin_pages_or_post_to_them(app, world):
    """A lead gets 403 on every admin page and form; nothing is created."""
    lead = login(app, "lead")
    for path in ("/admin/users", "/admin/projects", "/admin/projects/site"):
        assert lead.get(path).status_code == 403
    assert lead.post("/admin/users", data={"username": "mallory", "password": "mallory-pass"}).status_code == 403
    assert db.session.scalar(select(User).where(User.username == "mallory")) is None
