"""Web security against the real app: CSRF, cookies, headers, passwords, throttling, tokens, secrets, input, history."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from flask import Flask, g, request
from redis import Redis
from sqlalchemy import event, func, select

from tests.conftest import PASSWORD, TEST_REDIS_URL
from tests.support.flow import Flow
from tests.support.servers import threaded_server
from tests.test_permissions import MOVES, add_release, force, make_ticket, snapshot
from webapp import config, create_app, fleet, models
from webapp import projects as svc
from webapp.extensions import db
from webapp.models import (
    ApiToken,
    Delivery,
    HostResult,
    Membership,
    NotifyChannel,
    Project,
    Run,
    Ticket,
    TicketEvent,
    User,
)

pytestmark = pytest.mark.integration
APP_HASHER = models._hasher  # the app's own argon2 parameters, before quick_hashing swaps them for a test


CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
XSS_ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"


def login(app, username: str, addr: str = "127.0.0.1", csrf: bool = False):
    """Return a test client logged in through the login form (fetching the form's CSRF token when asked)."""
    c = app.test_client()
    c.environ_base["REMOTE_ADDR"] = addr
    data = {"username": username, "password": PASSWORD}
    if csrf:
        data["csrf_token"] = token_on(c, "/login")
    r = c.post("/login", data=data)
    assert r.status_code == 302, r.get_data(as_text=True)
    return c


def token_on(c, url: str) -> str:
    """Return the CSRF token a page's forms carry."""
    page = c.get(url)
    assert page.status_code == 200, url
    return CSRF_INPUT.search(page.get_data(as_text=True)).group(1)


def state_of(ticket_id: int) -> str:
    """Return a ticket's state as stored."""
    return db.session.execute(select(Ticket.state).where(Ticket.id == ticket_id)).scalar_one()


def run_status(run_id: int) -> str:
    """Return a run's status as stored."""
    return db.session.execute(select(Run.status).where(Run.id == run_id)).scalar_one()


def count(model) -> int:
    """Return the number of rows of a model."""
    return db.session.scalar(select(func.count()).select_from(model))


def active_tokens(username: str) -> int:
    """Return how many unrevoked API tokens a user has."""
    user = svc.get_user(db.session, username)
    return db.session.scalar(
        select(func.count()).select_from(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
    )


# --- CSRF -------------------------------------------------------------------------------------------------------

# Every page route that accepts POST; a new form must be added here and to the cases below.
POST_FORMS = {
    "/login",
    "/logout",
    "/profile",
    "/tickets/new",
    "/tickets/<int:ticket_id>/<action>",
    "/projects/<name>/rollback",
    "/projects/<name>/verify",
    "/projects/<name>/notify",
    "/projects/<name>/notify/<int:channel_id>/remove",
    "/projects/<name>/notify/<int:channel_id>/test",
    "/admin/users",
    "/admin/projects",
    "/admin/projects/<name>",
    "/runs/<int:run_id>/cancel",
}
# action -> (state the ticket is put in, who presses the button, extra form fields)
FORM_ACTIONS = {
    "return": ("testing", "dev", {"comment": "typo"}),
    "resubmit": ("returned", "dev", {"svn_paths": "index.html"}),
    "test-passed": ("testing", "dev", {}),
    "approve": ("pending_approval", "lead", {}),
    "reject": ("pending_approval", "lead", {"reason": "not yet"}),
    "release": ("approved", "dev", {}),
    "retry": ("release_failed", "dev", {}),
    "cancel": ("testing", "dev", {}),
}


def refused_then_accepted(c, url: str, page: str, data: dict, probe, done_status: int = 303) -> None:
    """POST without and with a forged token (400, `probe()` unchanged), then with the page's token (done)."""
    before = probe()
    for forged in ({}, {"csrf_token": "forged"}):
        r = c.post(url, data={**data, **forged})
        assert r.status_code == 400, (url, forged, r.status_code)
        assert probe() == before, (url, forged)
    r = c.post(url, data={**data, "csrf_token": token_on(c, page)})
    assert r.status_code == done_status, (url, r.status_code, r.get_data(as_text=True)[:500])
    assert probe() != before, url


def test_csrf_on_every_form(app, world):
    """Every state-changing form needs the token from its page: without it, 400 and nothing changes."""
    app.config["WTF_CSRF_ENABLED"] = True

    @app.before_request
    def _own_csrf_token():
        # Requests here share the test's app context, so `g` would hand one client's token to the next.
        g.pop("csrf_token", None)

    posts = {r.rule for r in app.url_map.iter_rules() if "POST" in r.methods and not r.rule.startswith("/api/")}
    assert posts == POST_FORMS

    anon = app.test_client()
    credentials = {"username": "dev", "password": PASSWORD}
    refused_then_accepted(anon, "/login", "/login", credentials, lambda: anon.get("/tickets").status_code, 302)

    dev = login(app, "dev", csrf=True)
    lead = login(app, "lead", csrf=True)
    admin = login(app, "admin", csrf=True)
    refused_then_accepted(dev, "/profile", "/profile", {"op": "issue"}, lambda: active_tokens("dev"), 200)
    refused_then_accepted(dev, "/profile", "/profile", {"op": "revoke"}, lambda: active_tokens("dev"), 200)
    filing = {"project": "site", "reason": "csrf"}
    refused_then_accepted(dev, "/tickets/new", "/tickets/new", filing, lambda: count(Ticket))
    run = db.session.scalars(select(Run).order_by(Run.id.desc())).first()
    page = f"/tickets/{run.ticket_id}"
    assert 'id="cancel-run"' in dev.get(page).get_data(as_text=True)
    refused_then_accepted(dev, f"/runs/{run.id}/cancel", page, {}, lambda: run_status(run.id))
    lead_id = svc.get_user(db.session, "lead").id
    ticket = make_ticket("release")
    for action, (state, user, extra) in FORM_ACTIONS.items():
        force(ticket, state, lead_id)
        c = lead if user == "lead" else dev
        page = f"/tickets/{ticket.id}"
        assert f'data-action="{action}"' in c.get(page).get_data(as_text=True), action
        data = {"expected_state": state, **extra}
        refused_then_accepted(c, f"/tickets/{ticket.id}/{action}", page, data, lambda: state_of(ticket.id))
        assert state_of(ticket.id) == MOVES[action]["release"][state]
    add_release("site", 1)
    add_release("site", 2)
    refused_then_accepted(
        dev, "/projects/site/rollback", "/projects/site", {"version": "1", "reason": "bad"}, lambda: count(Ticket)
    )
    verifying = lambda: fleet.is_pending(world.project.id)  # noqa: E731
    refused_then_accepted(lead, "/projects/site/verify", "/projects/site", {}, verifying)
    channel = {"kind": "slack", "target": "http://127.0.0.1:9/hook"}
    refused_then_accepted(lead, "/projects/site/notify", "/projects/site", channel, lambda: count(NotifyChannel))
    cid = db.session.scalar(select(NotifyChannel.id))
    refused_then_accepted(lead, f"/projects/site/notify/{cid}/test", "/projects/site", {}, lambda: count(Delivery))
    refused_then_accepted(
        lead, f"/projects/site/notify/{cid}/remove", "/projects/site", {}, lambda: count(NotifyChannel)
    )
    new_user = {"username": "newbie", "password": "long-enough-pw"}
    refused_then_accepted(admin, "/admin/users", "/admin/users", new_user, lambda: count(User))
    settings = {
        "svn_url": world.svn.url,
        "staging_dir": "/srv/staging/third",
        "inventory": str(world.hosts.inventory),
        "group": world.hosts.group,
    }
    refused_then_accepted(
        admin, "/admin/projects", "/admin/projects", {"name": "third", **settings}, lambda: count(Project)
    )
    edit = "/admin/projects/third"
    new_settings = {**settings, "op": "settings", "staging_url": "http://third.test/"}
    refused_then_accepted(admin, edit, edit, new_settings, lambda: svc.get_project(db.session, "third").staging_url)
    member = {"op": "member", "username": "dev", "role": "lead"}
    refused_then_accepted(admin, edit, edit, member, lambda: count(Membership))
    refused_then_accepted(dev, "/logout", "/tickets", {}, lambda: dev.get("/tickets").status_code, 302)

    # The API is exempt because it never reads the session cookie: a logged-in browser cannot be driven into it.
    assert lead.post("/api/tickets", json={"project": "site", "reason": "x"}).status_code == 401
    r = lead.post("/api/tickets", json={"project": "site", "reason": "api"}, headers=world.headers("lead"))
    assert r.status_code == 201


# --- cookies, headers, passwords, production key ----------------------------------------------------------------


def session_cookie(response) -> str:
    """Return the Set-Cookie header of the session cookie."""
    cookies = [h for h in response.headers.getlist("Set-Cookie") if h.startswith("session=")]
    assert len(cookies) == 1, response.headers
    return cookies[0]


def test_session_cookie_flags(app, world, monkeypatch):
    """The session cookie is HttpOnly and SameSite=Lax; Secure when FERRY_HTTPS=1."""
    r = app.test_client().post("/login", data={"username": "dev", "password": PASSWORD})
    cookie = session_cookie(r)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie

    monkeypatch.setenv("FERRY_HTTPS", "1")
    keep = ("TESTING", "SQLALCHEMY_DATABASE_URI", "REDIS_URL", "SECRET_KEY", "WTF_CSRF_ENABLED", "FERRY_DATA_DIR")
    https_app = create_app({k: app.config[k] for k in keep})
    assert https_app.config["SESSION_COOKIE_SECURE"] is True
    r = https_app.test_client().post(
        "/login", data={"username": "dev", "password": PASSWORD}, base_url="https://ferry.test"
    )
    cookie = session_cookie(r)
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_security_headers_and_no_inline_code(app, world):
    """Pages, errors and the API carry CSP without 'unsafe-inline', X-Frame-Options DENY and nosniff."""
    ticket = make_ticket("release")
    admin = login(app, "admin")
    responses = {url: admin.get(url) for url in ("/tickets", f"/tickets/{ticket.id}", "/tickets/new", "/projects")}
    responses.update({url: admin.get(url) for url in ("/projects/site", "/profile", "/admin/users", "/no-such-page")})
    responses["/login"] = app.test_client().get("/login")
    responses["/ (anonymous redirect)"] = app.test_client().get("/")
    responses["/api/projects"] = app.test_client().get("/api/projects", headers=world.headers("dev"))
    for url, r in responses.items():
        csp = r.headers.get("Content-Security-Policy", "")
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
        assert directives.get("default-src") == "'self'", (url, csp)
        assert directives.get("script-src") == "'self'" and directives.get("frame-ancestors") == "'none'", url
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, url
        assert r.headers.get("X-Frame-Options") == "DENY", url
        assert r.headers.get("X-Content-Type-Options") == "nosniff", url
        if r.mimetype == "text/html":
            # The CSP would silently break inline code, so pages must not have any.
            html = r.get_data(as_text=True)
            assert not re.search(r"<script(?![^>]*\ssrc=)[^>]*>", html), url
            assert not re.search(r"\sstyle=|\son[a-z]+=", html), url


def test_passwords_are_argon2id(app, world, monkeypatch):
    """Stored password hashes are argon2id with memory-hard parameters, and they verify."""
    monkeypatch.setattr(models, "_hasher", APP_HASHER)
    svc.create_user(db.session, "fresh", "another-long-password")
    db.session.commit()
    for user in db.session.scalars(select(User)):
        assert user.password_hash.startswith("$argon2id$v=19$"), user.username
        assert PASSWORD not in user.password_hash
    params = dict(kv.split("=") for kv in svc.get_user(db.session, "fresh").password_hash.split("$")[3].split(","))
    assert int(params["m"]) >= 19 * 1024 and int(params["t"]) >= 2, params  # OWASP's argon2id minimum
    assert svc.get_user(db.session, "fresh").check_password("another-long-password")
    assert not svc.get_user(db.session, "fresh").check_password("another-long-passwore")


OLD_DEV_KEY = "dev-only-change-me"  # the built-in key Ferry once signed sessions with when SECRET_KEY was unset


def resigned(app, cookie: str, key: str) -> str:
    """Return the content of `app`'s session cookie signed with another key, as a forger holding `key` would."""
    content = app.session_interface.get_signing_serializer(app).loads(cookie)
    forger = Flask("forger")
    forger.secret_key = key
    return forger.session_interface.get_signing_serializer(forger).dumps(content)


def test_no_built_in_secret_key_one_is_generated_in_a_private_instance_folder(tmp_path, monkeypatch):
    """Without SECRET_KEY: a random key in instance/secret_key (0600), reused; instance 0700, SQLite file 0600."""
    instance = tmp_path / "instance"
    for name in ("SECRET_KEY", "DATABASE_URL", "FERRY_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FERRY_INSTANCE_DIR", str(instance))
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
    first = create_app()
    key_file = instance / "secret_key"
    assert stat.S_IMODE(instance.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first.secret_key == key_file.read_text().strip() and len(first.secret_key) >= 64
    assert first.secret_key != OLD_DEV_KEY
    assert create_app().secret_key == first.secret_key  # every process of this instance signs alike

    database = instance / "ferry.sqlite3"
    assert first.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{database}"
    with first.app_context():
        db.create_all()
        svc.create_user(db.session, "root", PASSWORD, is_admin=True)
        db.session.commit()
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    # WAL mode: the write-ahead log and its index sit beside the database, with its mode.
    files = ["ferry.sqlite3", "ferry.sqlite3-shm", "ferry.sqlite3-wal", "secret_key"]
    assert sorted(p.name for p in instance.iterdir()) == files
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in instance.iterdir()), files

    # A real admin session, re-signed with the old built-in key, opens nothing; as issued it does.
    c = first.test_client()
    r = c.post("/login", data={"username": "root", "password": PASSWORD, "csrf_token": token_on(c, "/login")})
    assert r.status_code == 302
    cookie = c.get_cookie("session").value
    for value, status in ((resigned(first, cookie, OLD_DEV_KEY), 302), (cookie, 200)):
        c = first.test_client()
        c.set_cookie("session", value)
        assert c.get("/admin/users").status_code == status

    # Processes starting at once (gunicorn workers, RQ workers, the CLI) on a fresh instance agree on one key.
    fresh = tmp_path / "fresh"
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    env.update(FERRY_INSTANCE_DIR=str(fresh), DATABASE_URL=f"sqlite:///{tmp_path / 'other.sqlite3'}")
    code = "from webapp import create_app; print(create_app().secret_key)"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, cwd=config.REPO_ROOT, stdout=subprocess.PIPE)
        for _ in range(4)
    ]
    keys = {p.communicate(timeout=60)[0].decode().strip() for p in procs}
    assert keys == {(fresh / "secret_key").read_text().strip()}
    assert sorted(p.name for p in fresh.iterdir()) == ["secret_key"]  # no candidate files left behind


def test_secret_key_from_the_environment_wins(tmp_path, monkeypatch):
    """SECRET_KEY, when set, signs sessions and no key file is written."""
    monkeypatch.setenv("FERRY_INSTANCE_DIR", str(tmp_path / "instance"))
    monkeypatch.setenv("SECRET_KEY", "k" * 64)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite3'}")
    assert create_app().secret_key == "k" * 64
    assert not (tmp_path / "instance").exists()
    assert stat.S_IMODE((tmp_path / "db.sqlite3").stat().st_mode) == 0o600


# --- login throttling, API tokens ---------------------------------------------------------------------------------


def attempt(app, username: str, password: str, addr: str) -> int:
    """Try one login from an address and return the status code."""
    c = app.test_client()
    c.environ_base["REMOTE_ADDR"] = addr
    return c.post("/login", data={"username": username, "password": password}).status_code


def test_login_throttled_per_user_and_address(app, world):
    """After 5 failures a user+address gets 429, even with the right password; others are not affected."""
    assert [attempt(app, "dev", "wrong-password", "10.0.0.1") for _ in range(5)] == [401] * 5
    assert attempt(app, "dev", "wrong-password", "10.0.0.1") == 429
    assert attempt(app, "dev", PASSWORD, "10.0.0.1") == 429
    assert attempt(app, "dev", PASSWORD, "10.0.0.2") == 302  # same user, another address
    assert attempt(app, "dev2", PASSWORD, "10.0.0.1") == 302  # same address, another user
    # A successful login forgets earlier failures.
    assert [attempt(app, "dev2", "wrong-password", "10.0.0.3") for _ in range(4)] == [401] * 4
    assert attempt(app, "dev2", PASSWORD, "10.0.0.3") == 302
    assert [attempt(app, "dev2", "wrong-password", "10.0.0.3") for _ in range(5)] == [401] * 5
    assert attempt(app, "dev2", PASSWORD, "10.0.0.3") == 429
    # Unknown users are throttled the same way (no hint that the name does not exist).
    assert [attempt(app, "ghost", "x", "10.0.0.4") for _ in range(6)] == [401] * 5 + [429]


class CountingHasher(PasswordHasher):
    """The tests' cheap argon2id hasher, counting verifications and taking as long as a real one would."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified = 0
        self._lock = threading.Lock()

    def verify(self, hash, password) -> bool:  # noqa: A002 (argon2's own parameter name)
        """Count one password check, then check it."""
        with self._lock:
            self.verified += 1
        time.sleep(0.2)  # the app's real parameters cost ~0.2-0.3 s: the window a race needs
        return super().verify(hash, password)


@pytest.fixture
def two_users(app):
    """Create the users dev and dev2 (no project needed to log in)."""
    for name in ("dev", "dev2"):
        svc.create_user(db.session, name, PASSWORD)
    db.session.commit()


def test_parallel_wrong_passwords_get_at_most_five_checks(app, two_users, monkeypatch):
    """40 parallel wrong passwords for one user and address over real HTTP: exactly 5 are checked, 35 get 429."""
    hasher = CountingHasher()
    monkeypatch.setattr(models, "_hasher", hasher)
    start = threading.Barrier(40)

    def wrong_login(base: str) -> int:
        start.wait()
        body = urllib.parse.urlencode({"username": "dev", "password": "wrong-password"}).encode()
        try:
            return urllib.request.urlopen(f"{base}/login", data=body, timeout=60).status
        except urllib.error.HTTPError as e:
            return e.code

    with threaded_server(app) as base, ThreadPoolExecutor(40) as pool:
        codes = list(pool.map(wrong_login, [base] * 40))
    assert sorted(codes) == [401] * 5 + [429] * 35, codes
    assert hasher.verified == 5
    assert attempt(app, "dev", PASSWORD, "127.0.0.1") == 429  # the right password waits too
    assert hasher.verified == 5


def test_client_address_from_proxy_headers_only_with_proxy_hops(app, two_users):
    """Without FERRY_PROXY_HOPS X-Forwarded-For is ignored; with 1 hop the proxy's last entry is the address."""
    # Default: a client cannot dodge the throttle by inventing X-Forwarded-For addresses.
    direct = app.test_client()
    direct.environ_base["REMOTE_ADDR"] = "10.9.0.1"
    codes = [
        direct.post(
            "/login", data={"username": "dev", "password": "wrong"}, headers={"X-Forwarded-For": f"203.0.113.{i}"}
        ).status_code
        for i in range(6)
    ]
    assert codes == [401] * 5 + [429]

    keep = ("TESTING", "SQLALCHEMY_DATABASE_URI", "REDIS_URL", "SECRET_KEY", "WTF_CSRF_ENABLED", "FERRY_DATA_DIR")
    proxied = create_app({**{k: app.config[k] for k in keep}, "FERRY_PROXY_HOPS": 1})

    @proxied.get("/_probe")
    def _probe():
        return f"{request.remote_addr} {request.scheme}"

    proxy = proxied.test_client()
    proxy.environ_base["REMOTE_ADDR"] = "10.9.0.2"  # the reverse proxy
    # The proxy appends the address it saw; what the client sent before it is not trusted with one hop.
    forged = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7", "X-Forwarded-Proto": "https"}
    assert proxy.get("/_probe", headers=forged).get_data(as_text=True) == "203.0.113.7 https"
    alice = {"X-Forwarded-For": "203.0.113.7"}
    wrong = {"username": "dev2", "password": "wrong"}
    assert [proxy.post("/login", data=wrong, headers=alice).status_code for _ in range(5)] == [401] * 5
    assert proxy.post("/login", data=wrong, headers=forged).status_code == 429  # same client, forged prefix
    right = {"username": "dev2", "password": PASSWORD}
    assert proxy.post("/login", data=right, headers={"X-Forwarded-For": "203.0.113.8"}).status_code == 302
    assert app.test_client().get("/_probe").status_code == 404  # the probe lives on the proxied app only
    plain = create_app({k: app.config[k] for k in keep})

    @plain.get("/_probe")
    def _plain_probe():
        return f"{request.remote_addr} {request.scheme}"

    c = plain.test_client()
    c.environ_base["REMOTE_ADDR"] = "10.9.0.2"
    assert c.get("/_probe", headers=forged).get_data(as_text=True) == "10.9.0.2 http"


def test_login_redirects_only_to_this_site(app, world):
    """`next` may only name a path here; other sites (also in browser-normalised spellings) go to the index."""
    for target, location in (
        ("/tickets?state=testing", "/tickets?state=testing"),
        ("//evil.test/x", "/"),
        ("/\\evil.test", "/"),
        ("/\t/evil.test", "/"),
        ("https://evil.test/", "/"),
        ("javascript:alert(1)", "/"),
    ):
        c = app.test_client()
        r = c.post("/login", query_string={"next": target}, data={"username": "dev", "password": PASSWORD})
        assert r.status_code == 302 and r.headers["Location"] == location, (target, r.headers["Location"])


def test_api_tokens_hashed_shown_once_revocable(app, client, world):
    """The DB holds only SHA-256 of tokens; the profile shows a new token once; revoking makes them 401."""
    rows = db.session.scalars(select(ApiToken)).all()
    assert {r.token_hash for r in rows} == {hashlib.sha256(t.encode()).hexdigest() for t in world.tokens.values()}
    stored = [
        str(v) for r in rows for v in db.session.execute(select(ApiToken.__table__).where(ApiToken.id == r.id)).one()
    ]
    assert not any(t in s for t in world.tokens.values() for s in stored)
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    if uri.startswith("sqlite:///"):
        raw = Path(uri.removeprefix("sqlite:///")).read_bytes()
        assert not any(t.encode() in raw for t in world.tokens.values())

    dev = login(app, "dev")
    page = dev.post("/profile", data={"op": "issue"}).get_data(as_text=True)
    token = re.search(r'id="new-token">([^<]+)<', page).group(1)
    assert token not in dev.get("/profile").get_data(as_text=True)  # shown once
    assert ApiToken.digest(token) in {r.token_hash for r in db.session.scalars(select(ApiToken))}
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/projects", headers=bearer).status_code == 200

    dev.post("/profile", data={"op": "revoke"})
    assert client.get("/api/projects", headers=bearer).status_code == 401
    assert client.get("/api/projects", headers=world.headers("dev")).status_code == 401
    assert client.get("/api/projects", headers=world.headers("dev2")).status_code == 200  # only dev's tokens
    valid = world.tokens["dev2"]
    for header in ("Bearer", "Bearer ", f"Basic {valid}", valid, f"Bearer {valid}x", f"Token {valid}"):
        assert client.get("/api/projects", headers={"Authorization": header}).status_code == 401, header


# --- secrets, templates, escaping ---------------------------------------------------------------------------------


def redis_values(app) -> bytes:
    """Return everything stored in the test Redis db, concatenated (strings, hashes, lists, streams)."""
    r = Redis.from_url(app.config["REDIS_URL"])
    out = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "string":
            out.append(r.get(key) or b"")
        elif kind == "hash":
            out += [k + b"=" + v for k, v in r.hgetall(key).items()]
        elif kind == "list":
            out += r.lrange(key, 0, -1)
        elif kind == "stream":
            out += [b"".join(k + v for k, v in fields.items()) for _, fields in r.xrange(key)]
    return b"\n".join(out)


def test_real_runs_leak_no_secrets_and_template_nothing(app, client, world, monkeypatch, tmp_path):
    """A real staging update and release with secrets in the environment: no secret lands in run dirs, logs
    or Redis; and a reason holding Jinja is stored as text, never evaluated by Ansible."""
    tag = secrets.token_hex(8)
    planted = {
        "SECRET_KEY": f"sk-{tag}",
        "DATABASE_URL": f"postgresql://ferry:pw-{tag}@db.internal:5432/ferry",
        "FERRY_TEST_SECRET": f"s3cr3t-{tag}",
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    pwned = tmp_path / "pwned"
    reason = f"ship it {{{{ lookup('pipe', 'touch {pwned}') }}}} {{{{ 6 * 7 }}}}"

    flow = Flow(client, world)
    tid = flow.file(paths=["index.html"], reason=reason)
    world.work()
    assert flow.get(tid)["state"] == "testing", flow.get(tid)["last_error"]
    flow.approve(tid)
    t = flow.release(tid)
    assert t["state"] == "released", t["last_error"]

    assert not pwned.exists(), "a ticket reason was evaluated as a template by Ansible"
    assert t["reason"] == reason
    git_dir = Path(app.config["FERRY_DATA_DIR"]) / "projects" / "site" / "staging.git"
    message = flow_commit_message(git_dir, t["staging_commit"])
    assert "6 * 7" in message and " 42" not in message, message

    runs = sorted((Path(app.config["FERRY_DATA_DIR"]) / "runs").iterdir())
    assert len(runs) == 2 and all((run / "artifacts").is_dir() for run in runs)  # the grep below has material
    files = [p for p in Path(app.config["FERRY_DATA_DIR"]).rglob("*") if p.is_file()]
    texts = [(str(p), p.read_bytes()) for p in files]
    texts += [(f"run {r.id} log", (r.log + r.error).encode()) for r in db.session.scalars(select(Run))]
    texts += [(f"host result {h.id}", h.message.encode()) for h in db.session.scalars(select(HostResult))]
    texts.append(("redis", redis_values(app)))
    assert any(b"index.html" in data for _, data in texts)  # the runs did write what they did
    for name, value in planted.items():
        leaks = [where for where, data in texts if value.encode() in data]
        assert not leaks, f"{name} found in {leaks}"


def flow_commit_message(git_dir: Path, commit: str) -> str:
    """Return the message of one snapshot commit."""
    from tests.support.site import sh

    return sh("git", f"--git-dir={git_dir}", "log", "-1", "--format=%B", commit)


def test_user_text_is_escaped_everywhere(app, client, world):
    """Reasons, comments and reject reasons holding HTML/JS render as text on every page that shows them."""
    h = world.headers
    tid = client.post("/api/tickets", json={"project": "site", "reason": XSS}, headers=h("dev")).get_json()["id"]
    ticket = db.session.get(Ticket, tid)
    force(ticket, "testing", None)
    assert client.post(f"/api/tickets/{tid}/return", json={"comment": XSS}, headers=h("dev")).status_code == 200
    force(ticket, "pending_approval", None)
    assert client.post(f"/api/tickets/{tid}/reject", json={"reason": XSS}, headers=h("lead")).status_code == 200
    force(ticket, "pending_approval", None)
    add_release("site", 1)
    add_release("site", 2)
    rollback = client.post("/api/rollbacks", json={"project": "site", "version": 1, "reason": XSS}, headers=h("dev"))
    assert rollback.status_code == 201
    # A path with markup never gets stored at all.
    r = client.post("/api/tickets", json={"project": "site", "reason": "x", "svn_paths": ["<b>"]}, headers=h("dev"))
    assert r.status_code == 400

    lead = login(app, "lead")
    pages = {
        "ticket": lead.get(f"/tickets/{tid}").get_data(as_text=True),
        "rollback ticket": lead.get(f"/tickets/{rollback.get_json()['id']}").get_data(as_text=True),
        "list": lead.get("/tickets").get_data(as_text=True),
        "waiting for me": lead.get("/tickets?waiting=me").get_data(as_text=True),
        "unknown project": lead.post("/tickets/new", data={"project": XSS, "reason": "x"}).get_data(as_text=True),
        "filter": lead.get("/tickets", query_string={"project": XSS, "state": XSS}).get_data(as_text=True),
    }
    for name, page in pages.items():
        assert "<script>alert" not in page and "<img src=x" not in page, name
    assert pages["ticket"].count(XSS_ESCAPED) == 3  # reason, return comment, reject reason in the history
    assert XSS_ESCAPED in pages["rollback ticket"] and XSS_ESCAPED in pages["list"]
    assert XSS_ESCAPED in pages["waiting for me"]


# --- bad input through the API --------------------------------------------------------------------------------------

BAD_PATHS = [
    "a;rm -rf x",
    "a|b",
    "a&b",
    "a>b",
    "$(id)",
    "`id`",
    "a\nb",
    "a\x00b",
    "../etc",
    "a/../../b",
    "/etc/passwd",
    "-r",
    "--config-dir",
    "x/--config-dir=/tmp",
    "a//b",
    "<b>",
]
BAD_TICKETS = [
    ({"svn_paths": "index.html"}, "svn_paths"),  # a string, not a list: the API does not split text
    ({"svn_paths": [5]}, "svn_paths"),
    ({"svn_paths": {"a": 1}}, "svn_paths"),
    ({"svn_paths": ["x"] * 201}, "svn_paths"),
    ({"svn_revision": True}, "svn_revision"),
    ({"svn_revision": "5"}, "svn_revision"),
    ({"svn_revision": "-r"}, "svn_revision"),
    ({"svn_revision": -1}, "svn_revision"),
    ({"svn_revision": 0}, "svn_revision"),
    ({"svn_revision": 1.5}, "svn_revision"),
    ({"svn_revision": []}, "svn_revision"),
    ({"reason": 5}, "reason"),
    ({"reason": []}, "reason"),
    ({"reason": {}}, "reason"),
    ({"reason": ""}, "reason"),
    ({"reason": "  "}, "reason"),
    ({"reason": "x" * 4001}, "reason"),
    ({"project": []}, "project"),
    ({"project": 5}, "project"),
    ({"project": {"name": "site"}}, "project"),
    ({"project": ""}, "project"),
    ({"bogus": 1}, "bogus"),
    ({"Reason": "x"}, "Reason"),
    ({"author": "lead"}, "author"),
    ({"state": "approved"}, "state"),
]


def test_bad_input_is_refused_and_changes_nothing(app, client, world):
    """Wrong types, unknown fields, hostile paths and huge bodies: 400/413 naming the field, nothing changes."""
    h = world.headers("dev")
    ok = {"project": "site", "reason": "fine", "svn_paths": ["index.html"], "svn_revision": None}
    before = snapshot(app)
    problems = []

    def check(r, status: int, field: str | None, what) -> None:
        error = r.get_json(silent=True) or {}
        if r.status_code != status or not isinstance(error.get("error"), str):
            problems.append(f"{what}: {r.status_code} {r.get_data(as_text=True)[:200]}")
        elif field and not error["error"].startswith(field):
            problems.append(f"{what}: error does not name {field}: {error['error']}")

    for path in BAD_PATHS:
        check(client.post("/api/tickets", json={**ok, "svn_paths": [path]}, headers=h), 400, "svn_paths", path)
    for change, field in BAD_TICKETS:
        check(client.post("/api/tickets", json={**ok, **change}, headers=h), 400, field, change)
    for raw in ("[]", '"text"', "5", "null", json.dumps([ok]), "{not json"):
        r = client.post("/api/tickets", data=raw, content_type="application/json", headers=h)
        check(r, 400, "body", raw)
    for project in ("../site", "-r", "site; id", "SITE"):
        check(client.post("/api/tickets", json={**ok, "project": project}, headers=h), 404, "project", project)
    huge = {**ok, "reason": "x" * (10 * 1024 * 1024)}
    check(client.post("/api/tickets", json=huge, headers=h), 413, None, "10 MB reason")
    check(client.post("/api/tickets/1/cancel", json={"comment": "x" * (2 * 1024 * 1024)}, headers=h), 413, None, "2 MB")
    if snapshot(app) != before:
        problems.append(f"a refused filing changed something: {before} -> {snapshot(app)}")

    lead_id = svc.get_user(db.session, "lead").id
    ticket = make_ticket("release")
    force(ticket, "returned", lead_id)
    at = snapshot(app, ticket)
    url = f"/api/tickets/{ticket.id}/resubmit"
    for change, field in (
        ({"svn_paths": "index.html"}, "svn_paths"),
        ({"svn_paths": ["../x"]}, "svn_paths"),
        ({"svn_paths": ["--config-dir=/tmp"]}, "svn_paths"),
        ({"svn_revision": True}, "svn_revision"),
        ({"reason": 5}, "reason"),
        ({"comment": 5}, "comment"),
        ({"comment": ["x"]}, "comment"),
        ({"expected_state": 5}, "expected_state"),
        ({"expected_state": ["returned"]}, "expected_state"),
        ({"project": "elsewhere"}, "project"),
        ({"state": "approved"}, "state"),
    ):
        check(client.post(url, json=change, headers=h), 400, field, ("resubmit", change))
        if snapshot(app, ticket) != at:
            problems.append(f"resubmit {change} changed the ticket")
            force(ticket, "returned", lead_id)
    force(ticket, "pending_approval", lead_id)
    at = snapshot(app, ticket)
    for reason in (5, "", None, ["no"]):
        r = client.post(f"/api/tickets/{ticket.id}/reject", json={"reason": reason}, headers=world.headers("lead"))
        check(r, 400, "reason", ("reject", reason))
    if snapshot(app, ticket) != at:
        problems.append("a refused reject changed the ticket")
    add_release("site", 1)
    add_release("site", 2)
    mid = snapshot(app)
    for change, field in (
        ({"version": "1"}, "version"),
        ({"version": True}, "version"),
        ({"version": 1.0}, "version"),
        ({"version": None}, "version"),
        ({"project": []}, "project"),
        ({"reason": 5}, "reason"),
        ({"commit": "abc"}, "commit"),
    ):
        body = {"project": "site", "version": 1, "reason": "back", **change}
        check(client.post("/api/rollbacks", json=body, headers=h), 400, field, ("rollback", change))
    if snapshot(app) != mid:
        problems.append("a refused rollback changed something")
    assert not problems, "\n".join(problems)

    r = client.delete(f"/api/tickets/{ticket.id}", headers=h)
    assert r.status_code == 405 and r.get_json()["error"] and "GET" in r.headers["Allow"]
    r = client.get("/api/no-such-route", headers=h)
    assert r.status_code == 404 and r.get_json()["error"]


# --- the audit history is append-only --------------------------------------------------------------------------------


def test_history_is_append_only(app, client, world):
    """No route accepts PUT/PATCH/DELETE, and driving every action never updates or deletes a history row."""
    writers = {(r.rule, m) for r in app.url_map.iter_rules() for m in r.methods & {"PUT", "PATCH", "DELETE"}}
    assert writers == set()  # known routes that may: none

    touched: list[str] = []
    table = TicketEvent.__tablename__

    def spy(conn, cursor, statement, parameters, context, executemany):
        if re.match(rf'\s*(UPDATE|DELETE\s+FROM)\s+"?{table}"?\b', statement, re.IGNORECASE):
            touched.append(statement)

    event.listen(db.engine, "before_cursor_execute", spy)
    try:
        lead_id = svc.get_user(db.session, "lead").id
        before = {e.id: (e.action, e.from_state, e.to_state, e.user_id, e.comment, e.at) for e in history()}
        ticket = make_ticket("release")
        pages = {"dev": login(app, "dev"), "lead": login(app, "lead")}
        for action, (state, user, extra) in FORM_ACTIONS.items():
            force(ticket, state, lead_id)
            r = pages[user].post(f"/tickets/{ticket.id}/{action}", data={"expected_state": state, **extra})
            assert r.status_code == 303 and state_of(ticket.id) == MOVES[action]["release"][state], action
            force(ticket, state, lead_id)
            body = {"reason": "no"} if action == "reject" else {"comment": "api"}
            r = client.post(f"/api/tickets/{ticket.id}/{action}", json=body, headers=world.headers(user))
            assert r.status_code == 200 and state_of(ticket.id) == MOVES[action]["release"][state], action
        after = {e.id: (e.action, e.from_state, e.to_state, e.user_id, e.comment, e.at) for e in history()}
    finally:
        event.remove(db.engine, "before_cursor_execute", spy)
    assert touched == []
    assert {k: after[k] for k in before} == before
    assert len(after) == len(before) + 1 + 2 * len(FORM_ACTIONS)  # filing + each action twice


def history() -> list[TicketEvent]:
    """Return every history row, fresh from the database."""
    db.session.expire_all()
    return list(db.session.scalars(select(TicketEvent).order_by(TicketEvent.id)))
