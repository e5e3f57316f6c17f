"""Notifications: real webhook receivers and a real SMTP server get each kind's message, signed as documented."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import urllib.parse
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from redis import Redis
from rq import Queue, SimpleWorker

from jobs.notify import deliver
from jobs.reconcile import reconcile
from tests.support.flow import Flow
from webapp import notify, tickets, workflow
from webapp.extensions import db
from webapp.models import Delivery, Run, Ticket, utcnow

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-Never-Shown-42"
BASE = "https://ferry.example.test"


class Receiver:
    """A local HTTP server recording every POST; `answers[path]` = (status, body) sets what it replies."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answers: dict[str, tuple[int, bytes]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                parts = urllib.parse.urlsplit(self.path)
                receiver.requests.append(
                    {
                        "path": parts.path,
                        "query": urllib.parse.parse_qs(parts.query),
                        "headers": self.headers,
                        "body": body,
                    }
                )
                status, answer = receiver.answers.get(parts.path, (200, b'{"errcode": 0, "code": 0, "errmsg": "ok"}'))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict]:
        """Return the requests received at `path`."""
        return [r for r in self.requests if r["path"] == path]

    def close(self) -> None:
        """Stop the server."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    """Return a running local webhook receiver."""
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def flow(client, world, app):
    """Return API shortcuts; ticket links use a known base URL and retries do not wait."""
    app.config.update(FERRY_BASE_URL=BASE, FERRY_NOTIFY_BACKOFF="0", FERRY_REQUEUE_GRACE=0)
    return Flow(client, world)


def add(world, kind, target, secret="", events=None):
    """Add a channel to the world's project as ops would."""
    channel = notify.add_channel(db.session, world.project, None, kind, target, secret, events)
    db.session.commit()
    return channel


def deliveries(tid=None):
    """Return the deliveries (of one ticket), oldest first."""
    db.session.expire_all()
    rows = db.session.scalars(db.select(Delivery).order_by(Delivery.id)).all()
    return [d for d in rows if tid is None or d.ticket_id == tid]


def free_port() -> int:
    """Return a TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_events_map_every_transition_to_the_right_event():
    """The pure mapping: which (action, from, to) raises which events, most specific first."""
    assert notify.events_for("test-passed", "testing", "pending_approval") == ["approval_needed"]
    assert notify.events_for("test-passed", "testing", "approved") == ["approved"]
    assert notify.events_for("approve", "pending_approval", "approved") == ["approved"]
    assert notify.events_for("reject", "pending_approval", "rejected") == ["rejected"]
    assert notify.events_for("return", "testing", "returned") == ["returned"]
    assert notify.events_for("resubmit", "rejected", "pending_approval") == ["approval_needed"]  # rollback
    assert notify.events_for("request-rollback", None, "pending_approval") == ["rollback_requested", "approval_needed"]
    assert notify.events_for("staging_failed", "staging_updating", "staging_failed") == ["staging_failed"]
    assert notify.events_for("release_succeeded", "releasing", "released") == ["released"]
    assert notify.events_for("release_failed", "releasing", "release_failed") == ["release_failed"]
    assert notify.events_for("run_lost", "releasing", "release_failed") == ["run_lost"]
    for quiet in [("staging_started", "pending_staging", "staging_updating"), ("release", "approved", "releasing")]:
        assert notify.events_for(*quiet) == []
    assert notify.events_for("staging_succeeded", "staging_updating", "testing") == []
    assert notify.events_for("cancel", "testing", "cancelled") == []


def test_each_kind_gets_its_format_and_valid_signature(flow, world, receiver):
    """json, DingTalk, WeCom, Feishu and Slack receivers each get approval_needed in their format, signed."""
    add(world, "json", f"{receiver.url}/json", SECRET)
    add(world, "dingtalk", f"{receiver.url}/ding?access_token=TOKEN-abc", SECRET)
    add(world, "wecom", f"{receiver.url}/wecom?key=KEY-abc")
    add(world, "feishu", f"{receiver.url}/feishu", SECRET)
    add(world, "slack", f"{receiver.url}/slack")
    tid = flow.staged(reason="fix the header")
    assert receiver.requests == []  # filing and staging notify nobody
    before = time.time()
    flow.act(tid, "test-passed", comment="looks good")
    flow.world.work()
    after = time.time()
    url = f"{BASE}/tickets/{tid}"

    (j,) = receiver.at("/json")
    expected = "sha256=" + hmac.new(SECRET.encode(), j["body"], hashlib.sha256).hexdigest()
    assert j["headers"]["X-Ferry-Signature"] == expected
    body = json.loads(j["body"])
    assert set(body) == {"event", "ticket", "actor", "comment", "at"}
    assert body["event"] == "approval_needed" and body["actor"] == "dev" and body["comment"] == "looks good"
    assert body["ticket"] == {
        "id": tid,
        "project": "site",
        "kind": "release",
        "state": "pending_approval",
        "reason": "fix the header",
        "author": "dev",
        "version": None,
        "url": url,
    }

    (d,) = receiver.at("/ding")
    assert d["query"]["access_token"] == ["TOKEN-abc"]
    ts = d["query"]["timestamp"][0]
    assert before * 1000 - 1000 <= int(ts) <= after * 1000 + 1000  # milliseconds
    string_to_sign = f"{ts}\n{SECRET}".encode()
    sign = base64.b64encode(hmac.new(SECRET.encode(), string_to_sign, hashlib.sha256).digest()).decode()
    assert d["query"]["sign"] == [sign]  # parse_qs undid the URL encoding
    ding = json.loads(d["body"])
    assert ding["msgtype"] == "markdown" and f"#{tid}" in ding["markdown"]["title"]
    assert url in ding["markdown"]["text"] and "@lead" in ding["markdown"]["text"]

    (w,) = receiver.at("/wecom")
    wecom = json.loads(w["body"])
    assert wecom["msgtype"] == "markdown" and url in wecom["markdown"]["content"]
    assert "fix the header" in wecom["markdown"]["content"] and "looks good" in wecom["markdown"]["content"]

    (f,) = receiver.at("/feishu")
    feishu = json.loads(f["body"])
    assert before - 1 <= int(feishu["timestamp"]) <= after + 1  # seconds
    key = f"{feishu['timestamp']}\n{SECRET}".encode()
    assert feishu["sign"] == base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    assert feishu["msg_type"] == "text" and url in feishu["content"]["text"]

    (s,) = receiver.at("/slack")
    slack = json.loads(s["body"])
    assert set(slack) == {"text"} and url in slack["text"] and "waits for approval" in slack["text"]

    shown = flow.get(tid)["notifications"]
    assert [(n["event"], n["status"]) for n in shown] == [("approval_needed", "sent")] * 5
    assert all(SECRET not in r["body"].decode() for r in receiver.requests)


def test_the_cycle_notifies_each_event_with_actor_comment_and_version(flow, world, receiver):
    """returned, approval_needed, rejected (with the reason), approved, released (version 1), in order."""
    add(world, "json", f"{receiver.url}/all", SECRET)
    add(world, "json", f"{receiver.url}/released-only", events="released")
    tid = flow.staged()
    flow.act(tid, "return", comment="wrong color")
    flow.act(tid, "resubmit")
    flow.world.work()
    flow.act(tid, "test-passed")
    flow.act(tid, "reject", user="lead", reason="not this week")
    flow.act(tid, "resubmit")
    flow.world.work()
    flow.approve(tid)
    t = flow.release(tid)
    assert t["state"] == "released"
    events = [json.loads(r["body"]) for r in receiver.at("/all")]
    assert [(e["event"], e["actor"]) for e in events] == [
        ("returned", "dev"),
        ("approval_needed", "dev"),
        ("rejected", "lead"),
        ("approval_needed", "dev"),
        ("approved", "lead"),
        ("released", "system"),
    ]
    assert events[0]["comment"] == "wrong color" and events[2]["comment"] == "not this week"
    assert events[-1]["ticket"]["version"] == 1 and events[-1]["ticket"]["state"] == "released"
    (only,) = receiver.at("/released-only")
    assert json.loads(only["body"])["event"] == "released"


def test_failing_receiver_is_retried_then_failed_and_the_ticket_moves_on(flow, world, receiver):
    """A receiver answering 500 gets 3 tries, then "failed" on the ticket; an unreachable one too."""
    receiver.answers["/broken"] = (500, b"oops")
    receiver.answers["/robot"] = (200, b'{"errcode": 310000, "errmsg": "sign not match"}')
    add(world, "json", f"{receiver.url}/broken", SECRET)
    add(world, "dingtalk", f"{receiver.url}/robot?access_token=T", SECRET)
    add(world, "slack", f"http://127.0.0.1:{free_port()}/down")
    tid = flow.staged()
    flow.act(tid, "test-passed")
    assert flow.get(tid)["state"] == "pending_approval"  # nothing waited for the receivers
    flow.world.work()
    assert len(receiver.at("/broken")) == 3 and len(receiver.at("/robot")) == 3
    shown = {n["channel"].split()[0]: n for n in flow.get(tid)["notifications"]}
    assert shown["json"]["status"] == "failed" and shown["json"]["attempts"] == 3
    assert shown["json"]["error"].startswith("HTTP 500")
    assert shown["dingtalk"]["status"] == "failed" and "310000" in shown["dingtalk"]["error"]
    assert shown["slack"]["status"] == "failed" and "unreachable" in shown["slack"]["error"]
    flow.client.post("/login", data={"username": "dev2", "password": "correct-horse-battery"})  # a member
    page = flow.client.get(f"/tickets/{tid}").get_data(as_text=True)
    assert 'id="deliveries"' in page and "HTTP 500" in page and "failed" in page
    flow.act(tid, "approve", user="lead")  # the ticket's own flow is unaffected
    assert flow.get(tid)["state"] == "approved"


def test_retry_waits_for_its_back_off_then_succeeds(flow, world, receiver, app):
    """With a back-off the retry is scheduled (RQ scheduler), not run at once; it then delivers."""
    app.config.update(FERRY_NOTIFY_BACKOFF="1")
    receiver.answers["/flaky"] = (503, b"busy")
    add(world, "json", f"{receiver.url}/flaky")
    tid = flow.staged()
    flow.act(tid, "test-passed")
    flow.world.work()
    (d,) = deliveries(tid)
    assert (d.status, d.attempts, d.error) == ("queued", 1, "HTTP 503 Service Unavailable")
    receiver.answers.pop("/flaky")
    time.sleep(1.2)
    redis = Redis.from_url(app.config["REDIS_URL"])
    SimpleWorker([Queue(app.config["FERRY_QUEUE"], connection=redis)], connection=redis).work(
        burst=True, with_scheduler=True
    )
    (d,) = deliveries(tid)
    assert (d.status, d.attempts, d.error) == ("sent", 2, "") and len(receiver.at("/flaky")) == 2


def test_delivery_whose_enqueue_failed_is_enqueued_by_the_reconciler(flow, world, receiver, app):
    """Redis down at commit time: the transition still happens, the delivery waits, the reconciler sends it."""
    add(world, "json", f"{receiver.url}/late")
    tid = flow.staged()
    good = app.config["REDIS_URL"]
    app.config["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    try:
        flow.act(tid, "test-passed")
    finally:
        app.config["REDIS_URL"] = good
    assert flow.get(tid)["state"] == "pending_approval"
    flow.world.work()
    assert receiver.requests == [] and deliveries(tid)[0].status == "queued"
    assert reconcile()["deliveries_requeued"] == 1
    flow.world.work()
    assert deliveries(tid)[0].status == "sent" and len(receiver.at("/late")) == 1
    assert reconcile()["deliveries_requeued"] == 0


def test_lost_run_notifies_run_lost(flow, world, receiver):
    """The reconciler failing a run whose worker is gone sends run_lost (not staging_failed)."""
    add(world, "json", f"{receiver.url}/lost")
    tid = flow.file()
    ticket = db.session.get(Ticket, tid)
    tickets.fire(db.session, tid, workflow.STAGING_STARTED)
    run = db.session.scalars(db.select(Run).where(Run.ticket_id == tid)).one()
    run.status, run.started_at, run.heartbeat_at = "running", utcnow(), utcnow().replace(year=2000)
    db.session.commit()
    assert reconcile()["lost"] == 1
    db.session.refresh(ticket)
    assert ticket.state == "staging_failed"
    (d,) = deliveries(tid)
    assert d.event == "run_lost"
    assert deliver(d.id) == "sent"
    body = json.loads(receiver.at("/lost")[0]["body"])
    assert body["event"] == "run_lost" and "worker lost" in body["comment"]


def test_rollback_request_notifies_rollback_requested_once_per_channel(flow, world, receiver):
    """A rollback ticket raises rollback_requested; a channel wanting only approval_needed gets that instead."""
    add(world, "json", f"{receiver.url}/all")
    add(world, "json", f"{receiver.url}/approvals", events="approval_needed")
    flow.ship({"index.html": "<h1>v1</h1>\n"})
    flow.ship({"index.html": "<h1>v2</h1>\n"})
    receiver.requests.clear()
    rid = flow.rollback(1, reason="v2 breaks login")
    flow.world.work()
    (r,) = receiver.at("/all")
    body = json.loads(r["body"])
    assert body["event"] == "rollback_requested" and body["ticket"]["version"] == 1
    assert body["ticket"]["reason"] == "v2 breaks login" and body["ticket"]["id"] == rid
    (a,) = receiver.at("/approvals")
    assert json.loads(a["body"])["event"] == "approval_needed"


class Mailbox:
    """aiosmtpd handler keeping every received message."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=default_policy)))
        return "250 OK"


def test_email_channel_sends_through_smtp_with_login(flow, world, app):
    """The email kind logs in to the SMTP server from FERRY_SMTP_URL and mails the message."""
    mailbox = Mailbox()
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.login == b"ferry" and auth_data.password == b"mail pass")

    port = free_port()
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=port, authenticator=authenticator, auth_require_tls=False
    )
    controller.start()
    try:
        app.config.update(FERRY_SMTP_URL=f"smtp://ferry:mail%20pass@127.0.0.1:{port}", FERRY_MAIL_FROM="ferry@ex.test")
        add(world, "email", "leads@ex.test, ops@ex.test")
        tid = flow.staged(reason="new footer")
        flow.act(tid, "test-passed")
        flow.world.work()
    finally:
        controller.stop()
    assert logins == [(b"ferry", b"mail pass")]
    ((rcpts, mail),) = mailbox.messages
    assert rcpts == ["leads@ex.test", "ops@ex.test"]
    assert mail["From"] == "ferry@ex.test" and mail["Subject"] == f"[Ferry] site #{tid} waits for approval"
    text = mail.get_content()
    assert f"{BASE}/tickets/{tid}" in text and "new footer" in text and "@lead" in text
    assert deliveries(tid)[0].status == "sent"


def test_wrong_smtp_password_fails_without_showing_it(flow, world, app):
    """A refused SMTP login fails the delivery; the error never shows the password."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=lambda *a: AuthResult(success=False),
        auth_require_tls=False,
    )
    controller.start()
    try:
        app.config.update(FERRY_SMTP_URL=f"smtp://ferry:Pw-Secret-9@127.0.0.1:{port}")
        add(world, "email", "leads@ex.test")
        tid = flow.staged()
        flow.act(tid, "test-passed")
        flow.world.work()
    finally:
        controller.stop()
    (d,) = deliveries(tid)
    assert d.status == "failed" and d.attempts == 3 and "mail not sent" in d.error
    assert "Pw-Secret-9" not in d.error and mailbox.messages == []


def login(client, user):
    """Log the test client in as one of the world's users."""
    r = client.post("/login", data={"username": user, "password": "correct-horse-battery"})
    assert r.status_code == 302, r.status_code


def test_secrets_and_webhook_tokens_never_shown(flow, world, receiver, app, client):
    """The secret and the URL's token are in no API answer, page, run dir or Redis; the page masks them."""
    receiver.answers["/hook"] = (500, b"no")
    add(world, "dingtalk", f"{receiver.url}/hook?access_token=TOKEN-Very-Private", SECRET)
    tid = flow.staged()
    flow.act(tid, "test-passed")
    flow.world.work()
    flow.act(tid, "approve", user="lead")
    flow.release(tid)
    answers = [
        client.get(p, headers=world.headers("admin")).get_data(as_text=True)
        for p in (f"/api/tickets/{tid}", "/api/projects", "/api/tickets?project=site", "/api/projects/site/releases")
    ]
    login(client, "lead")
    pages = [client.get(p).get_data(as_text=True) for p in ("/projects/site", f"/tickets/{tid}")]
    assert "dingtalk" in pages[0] and notify.MASK in pages[0] and "Send test" in pages[0]
    on_disk = [
        p.read_bytes().decode(errors="replace")
        for p in (app.config["FERRY_DATA_DIR"]).rglob("*")
        if p.is_file() and p.stat().st_size < 5_000_000
    ]
    redis = Redis.from_url(app.config["REDIS_URL"])
    in_redis = [str(redis.dump(k)) for k in redis.keys("*")]
    for secret in (SECRET, "TOKEN-Very-Private"):
        for text in answers + pages + on_disk + in_redis:
            assert secret not in text


def test_only_admins_and_the_projects_leads_manage_channels(flow, world, receiver, client):
    """A developer sees the list but gets 403 on add/remove/test; a lead manages; another project's lead 404."""
    channel = add(world, "slack", f"{receiver.url}/s")
    login(client, "dev")
    page = client.get("/projects/site").get_data(as_text=True)
    assert 'id="notify-channels"' in page and 'id="notify-add"' not in page
    form = {"kind": "json", "target": f"{receiver.url}/x", "secret": "abc"}
    assert client.post("/projects/site/notify", data=form).status_code == 403
    assert client.post(f"/projects/site/notify/{channel.id}/remove").status_code == 403
    assert client.post(f"/projects/site/notify/{channel.id}/test").status_code == 403
    client.post("/logout")
    login(client, "lead2")
    assert client.post("/projects/site/notify", data=form).status_code == 404
    client.post("/logout")
    login(client, "lead")
    r = client.post("/projects/site/notify", data={**form, "events": ["released", "approved"]})
    assert r.status_code == 303
    added = notify.project_channels(db.session, world.project)[-1]
    assert (added.kind, added.events, added.secret) == ("json", ["approved", "released"], "abc")
    bad = client.post("/projects/site/notify", data={"kind": "json", "target": "file:///etc/passwd"})
    assert bad.status_code in (302, 303, 400) and len(notify.project_channels(db.session, world.project)) == 2
    assert client.post(f"/projects/site/notify/{channel.id}/test").status_code == 303
    flow.world.work()
    assert [r["path"] for r in receiver.requests] == ["/s"]
    assert client.post(f"/projects/site/notify/{channel.id}/remove").status_code == 303
    assert [c.id for c in notify.project_channels(db.session, world.project)] == [added.id]


def test_cli_add_list_test_remove(flow, world, receiver, app):
    """flask notify add/list/test/remove: the list masks the target and never prints the secret."""
    runner = app.test_cli_runner()
    r = runner.invoke(
        args=["notify", "add", "site", "--kind", "feishu", "--url", f"{receiver.url}/hook/ID-123", "--secret", SECRET]
    )
    assert r.exit_code == 0, r.output
    cid = notify.project_channels(db.session, world.project)[0].id
    bad = runner.invoke(args=["notify", "add", "site", "--kind", "json", "--url", "x", "--events", "nope"])
    assert bad.exit_code == 1 and "url" in bad.output
    bad = runner.invoke(args=["notify", "add", "site", "--kind", "json", "--url", receiver.url, "--events", "nope"])
    assert bad.exit_code == 1 and "events: unknown nope" in bad.output
    r = runner.invoke(args=["notify", "test", str(cid), "--wait", "0"])
    assert r.exit_code == 1 and "still queued" in r.output
    flow.world.work()
    assert json.loads(receiver.at("/hook/ID-123")[0]["body"])["msg_type"] == "text"
    listed = runner.invoke(args=["notify", "list", "site"]).output
    assert "feishu" in listed and "ID-123" not in listed and SECRET not in listed and "last: sent" in listed
    assert runner.invoke(args=["notify", "remove", str(cid)]).exit_code == 0
    assert runner.invoke(args=["notify", "list", "site"]).output == ""
