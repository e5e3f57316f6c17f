"""The whole release story in a real browser (Debian's Chromium), and the pages at laptop and phone widths."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from redis import Redis

from tests.support.servers import threaded_server
from tests.support.site import tree_of
from tests.test_runs import feed, finish, running_run

try:
    from playwright.sync_api import expect
except ImportError:  # the `chromium` fixture skips these tests (or fails them under CI) and says why
    expect = None

if TYPE_CHECKING:
    from tests.support.browser import People, Person

# The plugin owns the fixtures and the `browser` marker, which it puts (with `integration`) on every test using
# them: a module-level pytest.mark.browser here would be read before the plugin is loaded (unknown mark).
pytest_plugins = ["tests.support.browser"]
HOSTS = ("web1", "web2", "web3")


def nav(person: Person, link: str) -> None:
    """Follow a navbar link, opening the collapsed menu first on narrow screens."""
    target = person.page.locator("#nav").get_by_role("link", name=person.t(link), exact=True)
    toggler = person.page.locator(".navbar-toggler")
    if toggler.is_visible():
        toggler.click()
    target.click()
    person.page.wait_for_load_state()


def file_ticket(dev: Person, reason: str, paths: str) -> str:
    """File a release ticket for project `site` through the New ticket form and return its page path."""
    nav(dev, "New ticket")
    dev.page.select_option("#project", "site")
    dev.page.fill("#reason", reason)
    dev.page.fill("#svn_paths", paths)
    dev.page.get_by_role("button", name=dev.t("File ticket")).click()
    dev.page.wait_for_url(re.compile(r".*/tickets/\d+$"))
    number = dev.path.rsplit("/", 1)[1]
    expect(dev.page.locator(".flash")).to_have_text(
        dev.t("Ticket #%(id)s filed; staging update queued.") % {"id": number}
    )
    assert dev.state() == "pending_staging"
    return dev.path


def open_waiting(lead: Person, ticket_path: str) -> None:
    """Open the ticket from the lead's "Waiting for me" list."""
    nav(lead, "Waiting for me")
    expect(lead.page.locator("h1")).to_have_text(lead.t("Waiting for my approval"))
    lead.page.locator("#ticket-table").get_by_role("link", name="#" + ticket_path.rsplit("/", 1)[1], exact=True).click()
    lead.page.wait_for_url(re.compile(re.escape(ticket_path) + "$"))


def release(dev: Person, ticket_path: str, label: str) -> None:
    """Press Release on the ticket page and watch its live log until the run has finished and the ticket is released."""
    dev.goto(ticket_path)
    dev.press("release", "releasing")
    expect(dev.page.locator("#run-status")).to_have_attribute("data-stage", "release")
    dev.step(f"{label}-releasing")
    dev.wait_for_state(ticket_path, "released")
    followed = [url for kind, url in dev.requests if kind == "eventsource" and "/runs/" in url]
    assert followed, "the ticket page never opened the run's live log"
    assert "\x1b[" not in (dev.text_of("#run-log") or ""), "terminal colour codes in the run log"
    for host in HOSTS:
        status = dev.page.locator(f'#host-table tr[data-host="{host}"] .host-status')
        expect(status).to_have_attribute("data-status", re.compile("^(ok|changed)$"))
        expect(status).to_have_text(re.compile(f"^({dev.t('ok')}|{dev.t('changed')})$"))
    dev.step(f"{label}-released")


def ship(dev: Person, lead: Person, reason: str, paths: str, label: str) -> str:
    """Take one ticket from filing to released through the pages; return its path."""
    path = file_ticket(dev, reason, paths)
    dev.wait_for_state(path, "testing")
    dev.press("test-passed", "pending_approval")
    open_waiting(lead, path)
    lead.press("approve", "approved")
    release(dev, path, label)
    return path


def assert_clean(person: Person) -> None:
    """Assert no console errors, nothing fetched from elsewhere, and Bootstrap's files served by the app."""
    person.check()
    assert not person.foreign_requests(), f"{person.name}: requests leaving the app: {person.foreign_requests()}"
    assets = person.loaded("stylesheet", "script")
    assert {"bootstrap.min.css", "bootstrap.bundle.min.js", "ferry.css"} <= assets, assets


def test_browser_walks_the_whole_story(people: People, world) -> None:
    """Developer files, returns, resubmits, passes; lead approves; developer releases, then rolls back."""
    dev, lead, other = people("dev"), people("lead"), people("other")

    # Developer files a ticket and sees staging updated.
    ticket = file_ticket(dev, "new about page", "about\nindex.html")
    dev.step("filed")
    dev.wait_for_state(ticket, "testing")
    expect(dev.page.locator("#staging-url")).to_have_attribute("href", "http://staging.site.test/")
    expect(dev.page.locator('form[data-action="test-passed"]')).to_be_visible()
    expect(dev.page.locator('form[data-action="approve"]')).to_have_count(0)
    dev.step("staging-updated")

    # Nobody else's login leaks into a context: a visitor without one is sent to the login page, and someone
    # from another project cannot see the ticket.
    visitor = people("visitor", login=False)
    visitor.goto(ticket)
    visitor.page.wait_for_url(re.compile(r".*/login\?next=.*"))
    expect(visitor.page.locator("#whoami")).to_have_count(0)
    other.goto(ticket, status=404)
    expect(other.page.locator("main")).to_contain_text("not found")
    other.step("ticket-hidden")
    other.goto("/tickets")
    expect(other.page.locator("#ticket-table")).not_to_contain_text("new about page")

    # CSRF is on for this server: a post with the session cookie but without the form's token changes nothing.
    forged = dev.context.request.post(f"{dev.server.url}{ticket}/cancel", form={"expected_state": "testing"})
    assert forged.status == 400, forged.status

    # Returned with a comment, fixed in svn, resubmitted, passed.
    dev.goto(ticket)
    assert dev.state() == "testing"
    dev.press("return", "returned", comment="typo on the about page")
    dev.step("returned")
    world.svn.commit({"about/index.html": "<p>about us</p>\n"}, "fix typo")
    dev.press("resubmit", "pending_staging", svn_paths="about", svn_revision="")
    dev.wait_for_state(ticket, "testing")
    assert (world.staging_dir / "about/index.html").read_text() == "<p>about us</p>\n"
    dev.step("resubmitted")
    dev.press("test-passed", "pending_approval")
    dev.step("test-passed")
    nav(dev, "Waiting for me")
    expect(dev.page.locator("#ticket-table")).not_to_contain_text("new about page")

    # Lead finds it waiting, sees what changes, approves.
    open_waiting(lead, ticket)
    changes = lead.page.locator("#changes")
    expect(changes).to_contain_text("What releasing this changes")
    expect(changes).to_contain_text("about/index.html")
    lead.step("sees-changes")
    lead.press("approve", "approved", comment="ship it")
    lead.step("approved")

    # Developer releases; the run finishes and the hosts serve the staged tree.
    release(dev, ticket, "v1")
    expect(dev.page.locator("#ticket-version")).to_have_text("version 1")
    expect(dev.page.locator("#history")).to_contain_text("ship it")
    v1 = tree_of(world.staging_dir)
    assert v1["about/index.html"][0] == b"<p>about us</p>\n"
    for host in HOSTS:
        assert tree_of(world.hosts.live_tree(host)) == v1, host

    # A second release, so there is an earlier version to roll back to.
    world.svn.commit({"index.html": "<h1>Hello v2</h1>\n"}, "v2 homepage")
    ship(dev, lead, "new homepage", "index.html", "v2")
    for host in HOSTS:
        assert (world.hosts.live_tree(host) / "index.html").read_text() == "<h1>Hello v2</h1>\n", host

    # Developer asks for a rollback from the project page; lead approves; developer executes it.
    nav(dev, "Projects")
    dev.page.get_by_role("link", name="site", exact=True).click()
    expect(dev.page.locator("#live-version")).to_have_text("2")
    row = dev.page.locator('#releases tr[data-version="1"]')
    row.locator('input[name="reason"]').fill("the new homepage is broken")
    dev.step("project-page")
    row.get_by_role("button", name="Roll back to 1").click()
    dev.page.wait_for_url(re.compile(r".*/tickets/\d+$"))
    rollback = dev.path
    assert dev.state() == "pending_approval"
    dev.step("rollback-requested")
    open_waiting(lead, rollback)
    expect(lead.page.locator("#changes")).to_contain_text("What the rollback changes")
    expect(lead.page.locator("#changes")).to_contain_text("index.html")
    lead.press("approve", "approved")
    lead.step("rollback-approved")
    release(dev, rollback, "rollback")
    for host in HOSTS:
        assert tree_of(world.hosts.live_tree(host)) == v1, host
    dev.goto("/projects/site")
    expect(dev.page.locator("#live-version")).to_have_text("1")
    expect(dev.page.locator('#releases tr[data-version="2"]')).to_contain_text("rolled back")
    dev.step("rolled-back")

    for person in (dev, lead, other):
        assert_clean(person)
    assert not visitor.console_errors and not visitor.foreign_requests()


def test_browser_story_in_chinese(people: People, world) -> None:
    """The story once more in zh-CN: the developer's browser asks for Chinese, the lead chose it in the profile.

    Screenshots under test-artifacts/browser/test_browser_story_in_chinese/ show the Chinese pages (the dev
    install adds a CJK font so Chromium renders the characters).
    """
    dev = people("dev", locale="zh-CN")
    lead = people("lead")  # an English browser: the profile's choice decides
    lead.goto("/profile")
    lead.page.select_option("#language", "zh_CN")
    lead.page.select_option("#timezone", "Asia/Shanghai")
    lead.page.locator("#save-preferences").click()
    lead.language = "zh_CN"
    expect(lead.page.locator(".flash")).to_have_text("偏好设置已保存。")
    expect(lead.page.locator("html")).to_have_attribute("lang", "zh-CN")
    lead.step("profile-chinese")

    ticket = ship(dev, lead, "新的关于页面（灰度前检查）", "about\nindex.html", "zh")
    expect(dev.page.locator("main .state-badge").first).to_have_text("已发布")
    expect(dev.page.locator("#ticket-version")).to_have_text("版本 1")
    history = dev.page.locator("#history")
    for text in ("时间（UTC）", "提交", "测试通过", "审批通过", "发布成功"):
        expect(history).to_contain_text(text)
    lead.goto(ticket)
    expect(lead.page.locator("#history")).to_contain_text("时间（Asia/Shanghai）")
    lead.step("ticket-released")
    nav(dev, "Tickets")
    expect(dev.page.locator("#ticket-table")).to_contain_text("新的关于页面")
    expect(dev.page.locator("#ticket-table .state-badge").first).to_have_text("已发布")
    dev.step("ticket-list")
    nav(dev, "Projects")
    dev.page.get_by_role("link", name="site", exact=True).click()
    expect(dev.page.locator('#releases tr[data-version="1"]')).to_contain_text("线上")
    dev.step("project-page")
    for person in (dev, lead):
        assert_clean(person)


@pytest.mark.parametrize("device", ["laptop", "phone"])
def test_pages_fit_laptop_and_phone(people: People, device: str) -> None:
    """Buttons and the ticket table are usable at the device's width, nothing overflows, and assets are local."""
    dev, lead, admin = people("dev", device), people("lead", device), people("admin", device)

    # A long reason with an unbreakable link, as people paste them: it must wrap, not widen the page.
    reason = "fix the about page, see https://issues.example.test/browse/FERRY-1234?" + "focusedCommentId=1" * 8
    ticket = file_ticket(dev, reason, "about")
    dev.wait_for_state(ticket, "testing")
    assert dev.assert_clickable("#actions button") >= 3  # return, test passed, cancel
    assert dev.overflow() == 0, f"ticket page overflows on a {device}"
    dev.step("ticket")
    dev.press("test-passed", "pending_approval")

    lead.goto(ticket)
    lead.assert_clickable("#actions button")  # approve, reject
    lead.assert_clickable('#actions input[name="reason"]')
    assert lead.overflow() == 0, f"lead's ticket page overflows on a {device}"
    lead.step("approve-buttons")

    nav(dev, "Tickets")
    expect(dev.page.locator("#ticket-table")).to_be_visible()
    dev.assert_clickable("#ticket-table tbody a")
    dev.step("ticket-list")
    for path in ("/tickets?waiting=me", "/tickets/new", "/projects", "/projects/site", "/profile"):
        dev.goto(path)
        assert dev.overflow() == 0, f"{path} overflows on a {device}"
        dev.step(path.strip("/"))
    # Bootstrap is applied, not just fetched: the primary button has its blue.
    dev.goto("/tickets")
    color = dev.page.locator(".btn-primary").first.evaluate("b => getComputedStyle(b).backgroundColor")
    assert color == "rgb(13, 110, 253)", color

    for path in ("/admin/users", "/admin/projects", "/admin/projects/site"):
        admin.goto(path)
        assert admin.overflow() == 0, f"{path} overflows on a {device}"
        admin.step(path.strip("/"))

    for person in (dev, lead, admin):
        assert_clean(person)


@pytest.mark.parametrize("mode", ["polling", "streaming", "stream refused"])
def test_live_log_shows_every_line_once_streaming_or_polling(people: People, world, mode: str) -> None:
    """The ticket page follows a live run over SSE (reconnecting after each stream's lifetime) or, with no stream
    slot free (or the stream answered with an error page), by polling /runs/<id>/log; either way every line
    shows once, and the page reloads at the end."""
    max_streams = 4 if mode == "streaming" else 0
    world.app.config.update(FERRY_MAX_STREAMS=max_streams, FERRY_STREAM_SECONDS=1)
    run = running_run()
    redis = Redis.from_url(world.app.config["REDIS_URL"])
    lines = [f"line {i}" for i in range(8)]
    feed(redis, run.id, lines[:2])
    dev = people("dev")
    if mode == "stream refused":  # e.g. a proxy in front answering 503: EventSource gives up for good
        dev.page.route("**/events", lambda route: route.fulfill(status=503, body="busy"))
    dev.goto(f"/tickets/{run.ticket_id}")
    log = dev.page.locator("#run-log")
    expect(log).to_contain_text("line 1")
    if mode == "stream refused":  # Chromium reports the refused stream in the console: expected here
        dev.console_errors[:] = [e for e in dev.console_errors if f"/runs/{run.id}/events" not in e]
    feed(redis, run.id, lines[2:], every=0.4)  # 2.4 s: longer than a stream lives
    expect(log).to_contain_text("line 7")
    assert log.inner_text().split("\n")[: len(lines)] == lines
    expect(dev.page.locator('#progress-table tr[data-host="web1"]')).to_contain_text("line 7")
    dev.step(f"live-log-{mode}")
    finish(run, lines)
    expect(dev.page.locator("#run-log[data-events]")).to_have_count(0, timeout=10_000)  # reloaded: the stored log
    expect(log).to_have_text("\n".join(lines))
    streams = [url for kind, url in dev.requests if kind == "eventsource"]
    polls = [url for kind, url in dev.requests if kind == "fetch" and f"/runs/{run.id}/log" in url]
    if max_streams:
        assert len(streams) >= 2 and not polls, (streams, polls)  # reconnected after a lifetime, never polled
    else:
        assert len(streams) == 1 and len(polls) >= 2, (streams, polls)
    assert_clean(dev)


def test_live_log_streams_from_the_stream_process_on_another_origin(people: People, world, live_server) -> None:
    """With FERRY_STREAM_URL the ticket page follows the live log from the stream process on another origin (CORS
    for the pages' origin with the session cookie, CSP connect-src), reconnecting there, never polling."""
    app = world.app
    with threaded_server(app) as stream:
        app.config.update(FERRY_STREAM_URL=stream, FERRY_BASE_URL=live_server.url, FERRY_STREAM_SECONDS=1)
        run = running_run()
        redis = Redis.from_url(app.config["REDIS_URL"])
        lines = [f"line {i}" for i in range(6)]
        feed(redis, run.id, lines[:2])
        dev = people("dev")
        dev.goto(f"/tickets/{run.ticket_id}")
        log = dev.page.locator("#run-log")
        expect(log).to_contain_text("line 1")
        feed(redis, run.id, lines[2:], every=0.4)  # longer than a stream lives: it reconnects to the stream origin
        expect(log).to_contain_text("line 5")
        assert log.inner_text().split("\n")[: len(lines)] == lines
        finish(run, lines)
        expect(dev.page.locator("#run-log[data-events]")).to_have_count(0, timeout=10_000)
        streams = [url for kind, url in dev.requests if kind == "eventsource"]
        polls = [url for kind, url in dev.requests if kind == "fetch" and f"/runs/{run.id}/log" in url]
        assert len(streams) >= 2 and all(url.startswith(f"{stream}/runs/") for url in streams), streams
        assert not polls, polls
        dev.check()  # no console error (CORS, CSP)
        assert set(dev.foreign_requests()) == set(streams)  # nothing else left the pages' origin
