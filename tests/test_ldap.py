"""Company logins against a real slapd: right and wrong passwords, unknown users, filter injection, server down."""

from __future__ import annotations

import subprocess

import pytest
from sqlalchemy import select

from tests.conftest import PASSWORD
from tests.support.slapd import PEOPLE_PASSWORDS, ROOT_DN, ROOT_PW, SERVICE_DN, SERVICE_PW, directory_server  # noqa: F401
from webapp import projects as svc
from webapp.extensions import db
from webapp.models import User

pytestmark = pytest.mark.integration


@pytest.fixture
def ldap_app(app, directory_server):  # noqa: F811
    """Return the app logging in against the test directory, with local accounts admin and ops."""
    app.config.update(
        FERRY_LDAP_URL=directory_server.url,
        FERRY_LDAP_BIND_DN=SERVICE_DN,
        FERRY_LDAP_BIND_PASSWORD=SERVICE_PW,
        FERRY_LDAP_USER_BASE="ou=people,dc=example,dc=test",
        FERRY_LDAP_ADMIN_GROUPS=directory_server.admin_group,
    )
    svc.create_user(db.session, "admin", PASSWORD, is_admin=True)
    svc.create_user(db.session, "ops", PASSWORD)
    db.session.commit()
    return app


def login(client, username, password):
    """Post the login form; return the response."""
    return client.post("/login", data={"username": username, "password": password})


def user(name):
    """Return the local user row, fresh from the database."""
    db.session.expire_all()
    return db.session.scalar(select(User).where(User.username == name))


def test_right_password_creates_the_user_without_a_password(ldap_app, client):
    """First LDAP login creates the local user (auth_source ldap, nothing stored); the session works."""
    r = login(client, "alice", PEOPLE_PASSWORDS["alice"])
    assert r.status_code == 302, r.get_data(as_text=True)
    alice = user("alice")
    assert alice.auth_source == "ldap" and alice.password_hash == "" and not alice.is_admin
    assert client.get("/profile").status_code == 200
    client.post("/logout")
    assert login(client, "alice", PEOPLE_PASSWORDS["alice"]).status_code == 302  # second login: same user
    assert db.session.scalars(select(User).where(User.username == "alice")).all() == [alice]


def test_admin_group_members_become_admins_and_lose_it_when_removed(ldap_app, client, directory_server):  # noqa: F811
    """Members of an admin group (member or uniqueMember) are admins; each login updates the flag."""
    assert login(client, "boss", PEOPLE_PASSWORDS["boss"]).status_code == 302
    assert user("boss").is_admin
    client.post("/logout")
    change = (
        f"dn: {directory_server.admin_group}\nchangetype: modify\n"
        "delete: member\nmember: uid=boss,ou=people,dc=example,dc=test\n-\n"
        "add: member\nmember: uid=carol,ou=people,dc=example,dc=test\n"
    )
    subprocess.run(
        ["ldapmodify", "-x", "-H", directory_server.url, "-D", ROOT_DN, "-w", ROOT_PW],
        input=change,
        text=True,
        check=True,
    )
    assert login(client, "boss", PEOPLE_PASSWORDS["boss"]).status_code == 302
    assert not user("boss").is_admin
    client.post("/logout")
    ldap_app.config["FERRY_LDAP_ADMIN_GROUPS"] = f"{directory_server.admin_group}; {directory_server.staff_group}"
    assert login(client, "alice", PEOPLE_PASSWORDS["alice"]).status_code == 302
    assert user("alice").is_admin  # groupOfUniqueNames


def test_wrong_password_unknown_user_and_empty_password_are_refused(ldap_app, client):
    """Wrong password, unknown user, and an empty password (an anonymous bind would 'succeed') all fail."""
    for name, password in [("alice", "wrong-password"), ("nobody", "whatever-pw"), ("alice", "")]:
        r = login(client, name, password)
        assert r.status_code == 401, (name, password)
        assert "Unknown user or wrong password" in r.get_data(as_text=True)
    assert user("alice") is None and user("nobody") is None


@pytest.mark.parametrize("name", ["*)(uid=*", "*", "alice)(|(uid=*", "al*"])
def test_filter_injection_matches_nobody(ldap_app, client, name):
    """The typed name is escaped into the filter: wildcards and injected clauses match no one."""
    for password in PEOPLE_PASSWORDS.values():
        assert login(client, name, password).status_code in (401, 429)
    assert db.session.scalars(select(User).where(User.auth_source == "ldap")).all() == []


def test_directory_never_logs_into_a_local_account(ldap_app, client):
    """The directory's 'admin' cannot take over the local break-glass admin; the local password still works."""
    assert login(client, "admin", PEOPLE_PASSWORDS["admin"]).status_code == 401
    assert login(client, "admin", PASSWORD).status_code == 302
    assert user("admin").auth_source == "local" and user("admin").is_admin


def test_server_down_clear_message_and_local_logins_still_work(ldap_app, client, directory_server):  # noqa: F811
    """slapd stopped: an LDAP login says the directory is unreachable; local accounts log in."""
    assert login(client, "alice", PEOPLE_PASSWORDS["alice"]).status_code == 302
    client.post("/logout")
    directory_server.stop()
    r = login(client, "alice", PEOPLE_PASSWORDS["alice"])
    assert r.status_code == 503 and "Company directory unreachable" in r.get_data(as_text=True)
    assert login(client, "ops", PASSWORD).status_code == 302


def test_wrong_service_password_is_unreachable_not_a_login(ldap_app, client):
    """A service account the directory refuses is reported as the directory being unreachable."""
    ldap_app.config["FERRY_LDAP_BIND_PASSWORD"] = "not-the-service-pw"
    r = login(client, "alice", PEOPLE_PASSWORDS["alice"])
    assert r.status_code == 503 and user("alice") is None


def test_ldap_logins_are_throttled(ldap_app, client):
    """Five wrong directory passwords, then even the right one waits (same throttle as local logins)."""
    for _ in range(5):
        assert login(client, "alice", "wrong-password").status_code == 401
    assert login(client, "alice", PEOPLE_PASSWORDS["alice"]).status_code == 429
    assert user("alice") is None


def test_disabled_ldap_user_and_password_change(ldap_app, client):
    """A directory user's password is the directory's: no change here; a disabled one cannot log in."""
    assert login(client, "carol", PEOPLE_PASSWORDS["carol"]).status_code == 302
    r = client.post(
        "/profile",
        data={"op": "password", "current_password": PEOPLE_PASSWORDS["carol"], "new_password": "new-password-1"},
        follow_redirects=True,
    )
    assert "managed by the company directory" in r.get_data(as_text=True)
    client.post("/logout")
    svc.set_disabled(db.session, user("carol"), True)
    db.session.commit()
    r = login(client, "carol", PEOPLE_PASSWORDS["carol"])
    assert r.status_code == 403 and "disabled" in r.get_data(as_text=True)


def test_without_ldap_config_unknown_users_just_fail(app, client):
    """With FERRY_LDAP_URL unset nothing talks to a directory: unknown users get the usual answer."""
    assert login(client, "alice", PEOPLE_PASSWORDS["alice"]).status_code == 401
