"""Sessions end when they should: logout, "log out everywhere", password change and disabling end every
session of the user (copied cookies too); a disabled user can do nothing through pages or the API."""

from __future__ import annotations

import pytest
from flask import g

from tests.conftest import PASSWORD
from tests.test_security import refused_then_accepted, token_on
from webapp import projects as svc
from webapp.extensions import db
from webapp.models import User

pytestmark = pytest.mark.integration


def login(app, username: str, password: str = PASSWORD):
    """Return a test client logged in through the login form."""
    c = app.test_client()
    r = c.post("/login", data={"username": username, "password": password})
    assert r.status_code == 302, r.get_data(as_text=True)
    return c


def copy_of(app, c):
    """Return a new client holding a copy of `c`'s session cookie (what a thief would hold)."""
    thief = app.test_client()
    thief.set_cookie("session", c.get_cookie("session").value)
    return thief


def logged_in(c) -> bool:
    """Tell whether a client's session still opens a page (a login redirect means it does not)."""
    r = c.get("/tickets")
    assert r.status_code in (200, 302), r.status_code
    return r.status_code == 200


def user(name: str) -> User:
    """Return a user, fresh from the database."""
    db.session.expire_all()
    return svc.get_user(db.session, name)


def test_logout_ends_every_session_and_copied_cookies(app, world):
    """After logout the same cookie, a copy of it, and the user's other sessions no longer open anything."""
    dev, laptop = login(app, "dev"), login(app, "dev")
    thief = copy_of(app, dev)
    lead = login(app, "lead")
    assert logged_in(dev) and logged_in(thief) and logged_in(laptop)
    before = dev.get_cookie("session").value
    r = dev.post("/logout")
    assert r.status_code == 302 and r.headers["Location"].endswith("/login")
    assert not logged_in(thief) and not logged_in(laptop) and not logged_in(dev)
    replay = app.test_client()
    replay.set_cookie("session", before)
    assert not logged_in(replay)
    assert logged_in(lead)  # other users keep their sessions
    assert logged_in(login(app, "dev"))  # and dev can log in again


def test_session_needs_the_current_generation(app, world):
    """A session that names only the user id (the format before session generations) is not logged in."""
    dev = user("dev")
    c = app.test_client()
    with c.session_transaction() as s:
        s["_user_id"], s["_fresh"] = str(dev.id), True
    assert not logged_in(c)
    with c.session_transaction() as s:
        s["_user_id"] = f"{dev.id}:{dev.session_generation}"
    assert logged_in(c)  # a cookie signed with the app's key and the live generation is a session
    for forged in (f"{dev.id}:{dev.session_generation + 1}", "9999999999:0", f"{dev.id}:0:0", f" {dev.id}:0"):
        with c.session_transaction() as s:
            s["_user_id"] = forged
        assert not logged_in(c), forged


def test_log_out_everywhere_from_the_profile(app, world):
    """The profile's "Log out everywhere" ends this and every other session; API tokens are separate."""
    dev, phone = login(app, "dev"), login(app, "dev")
    assert 'value="logout-everywhere"' in dev.get("/profile").get_data(as_text=True)
    r = dev.post("/profile", data={"op": "logout-everywhere"})
    assert r.status_code == 303 and r.headers["Location"].endswith("/login")
    assert not logged_in(phone) and not logged_in(dev)
    assert app.test_client().get("/api/projects", headers=world.headers("dev")).status_code == 200


def test_revoking_tokens_keeps_sessions_and_says_so(app, world):
    """ "Revoke all tokens" revokes tokens only; the page offers the separate "Log out everywhere"."""
    dev = login(app, "dev")
    dev.post("/profile", data={"op": "revoke"})
    assert app.test_client().get("/api/projects", headers=world.headers("dev")).status_code == 401
    assert logged_in(dev)


def test_password_change_ends_other_sessions(app, world):
    """The profile changes the password after checking the current one; other sessions end, this one stays."""
    dev, other = login(app, "dev"), login(app, "dev")
    page = dev.get("/profile").get_data(as_text=True)
    assert 'name="current_password"' in page and 'name="new_password"' in page
    old_hash = user("dev").password_hash
    for form, field in (
        ({"current_password": "wrong-password", "new_password": "brand-new-pass"}, "current_password"),
        ({"current_password": PASSWORD, "new_password": "short"}, "new_password"),
        ({"new_password": "brand-new-pass"}, "current_password"),
    ):
        r = dev.post("/profile", data={"op": "password", **form})
        assert r.status_code == 400 and field in r.get_data(as_text=True), (form, r.status_code)
        assert user("dev").password_hash == old_hash
        assert logged_in(other)
    r = dev.post("/profile", data={"op": "password", "current_password": PASSWORD, "new_password": "brand-new-pass"})
    assert r.status_code == 303
    assert logged_in(dev) and not logged_in(other)
    assert app.test_client().post("/login", data={"username": "dev", "password": PASSWORD}).status_code == 401
    assert logged_in(login(app, "dev", "brand-new-pass"))


def test_admin_disables_and_enables_a_user(app, world):
    """Disabled: every session ends, API tokens get 401, login is refused with a clear message; enabling undoes it."""
    dev, admin, api = login(app, "dev"), login(app, "admin"), app.test_client()
    assert 'value="disable"' in admin.get("/admin/users").get_data(as_text=True)
    r = admin.post("/admin/users", data={"op": "disable", "username": "dev"})
    assert r.status_code == 303 and user("dev").disabled
    assert not logged_in(dev)
    assert "disabled" in admin.get("/admin/users").get_data(as_text=True)
    for method, url, body in (
        ("get", "/api/projects", None),
        ("get", "/api/tickets", None),
        ("post", "/api/tickets", {"project": "site", "reason": "still here?"}),
    ):
        r = getattr(api, method)(url, json=body, headers=world.headers("dev"))
        assert r.status_code == 401 and r.get_json()["error"], (url, r.status_code)
    r = app.test_client().post("/login", data={"username": "dev", "password": PASSWORD})
    assert r.status_code == 403 and "disabled" in r.get_data(as_text=True)
    r = app.test_client().post("/login", data={"username": "dev", "password": "wrong-password"})
    assert r.status_code == 401 and "disabled" not in r.get_data(as_text=True)  # only the password holder learns it
    # An admin cannot lock themselves out.
    r = admin.post("/admin/users", data={"op": "disable", "username": "admin"})
    assert r.status_code == 400 and not user("admin").disabled
    r = admin.post("/admin/users", data={"op": "enable", "username": "dev"})
    assert r.status_code == 303 and not user("dev").disabled
    assert logged_in(login(app, "dev"))
    assert api.get("/api/projects", headers=world.headers("dev")).status_code == 200


def test_cli_disables_and_enables_users(app, world):
    """`flask user disable NAME` ends sessions and API access at once; `user enable NAME` restores access."""
    runner = app.test_cli_runner()
    dev = login(app, "dev")
    r = runner.invoke(args=["user", "disable", "dev"])
    assert r.exit_code == 0 and "disabled" in r.output, r.output
    assert not logged_in(dev)
    assert app.test_client().get("/api/projects", headers=world.headers("dev")).status_code == 401
    r = runner.invoke(args=["user", "enable", "dev"])
    assert r.exit_code == 0, r.output
    assert app.test_client().get("/api/projects", headers=world.headers("dev")).status_code == 200
    r = runner.invoke(args=["user", "disable", "nobody"])
    assert r.exit_code != 0 and "nobody" in r.output


def test_new_session_forms_need_csrf(app, world):
    """Log out everywhere, password change and disable/enable refuse a missing or forged CSRF token."""
    app.config["WTF_CSRF_ENABLED"] = True

    @app.before_request
    def _own_csrf_token():
        g.pop("csrf_token", None)

    admin = app.test_client()
    admin.post("/login", data={"username": "admin", "password": PASSWORD, "csrf_token": token_on(admin, "/login")})
    for op in ("disable", "enable"):
        refused_then_accepted(
            admin, "/admin/users", "/admin/users", {"op": op, "username": "dev"}, lambda: user("dev").disabled
        )
    dev = app.test_client()
    dev.post("/login", data={"username": "dev", "password": PASSWORD, "csrf_token": token_on(dev, "/login")})
    change = {"op": "password", "current_password": PASSWORD, "new_password": "brand-new-pass"}
    refused_then_accepted(dev, "/profile", "/profile", change, lambda: user("dev").password_hash)
    refused_then_accepted(
        dev, "/profile", "/profile", {"op": "logout-everywhere"}, lambda: user("dev").session_generation
    )
