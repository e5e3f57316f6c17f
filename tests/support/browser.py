"""Pytest plugin for browser tests: Debian's Chromium via Playwright, the test app on a live server, screenshots."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from babel import Locale
from babel.support import Translations
from werkzeug.serving import BaseWSGIServer, make_server

from tests.conftest import PASSWORD, World
from tests.support.hosts_fixture import in_ci
from webapp.extensions import db

# Playwright is imported late: loading this plugin never fails, and a missing package skips (or fails under CI)
# like a missing browser.
if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("FERRY_CHROMIUM", "/usr/bin/chromium")
# Debian's Chromium, never a downloaded build; no network chatter of its own, so recorded requests are the app's.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
DEVICES = {
    "laptop": {"viewport": {"width": 1366, "height": 768}},
    "phone": {
        "viewport": {"width": 390, "height": 844},
        "is_mobile": True,
        "has_touch": True,
        "device_scale_factor": 2,
    },
}
TIMEOUT_MS = 20_000  # one page load or one auto-waiting assertion; jobs run in the test thread, never in between
LIVE_LOG_TIMEOUT_MS = 30_000  # a finished run's end event reaches the page within a second or two, then it reloads
BROWSER_FIXTURES = {"chromium", "live_server", "people"}
_skipped_because: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker browser tests carry."""
    config.addinivalue_line("markers", "browser: drives Debian's Chromium through Playwright against a live server")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so `-m "not browser"` sees these marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that drives the browser as ``browser`` and ``integration``."""
    for item in items:
        if BROWSER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker("browser")
            item.add_marker("integration")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print a banner when browser tests were skipped, so a skip never goes unnoticed."""
    if _skipped_because:
        terminalreporter.write_sep("!", f"BROWSER TESTS SKIPPED ({_skipped_because[0]})", red=True, bold=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item, so fixtures can screenshot a failed test's pages."""
    report = yield
    setattr(item, f"ferry_report_{report.when}", report)
    return report


def expect(target: object):
    """Return Playwright's auto-waiting `expect` for a page or locator (imported late, like the browser)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def chromium_unavailable_reason() -> str | None:
    """Return why Chromium cannot be driven here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -r requirements-dev.txt)"
    if not shutil.which(CHROMIUM):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FERRY_CHROMIUM)"
    return None


def require_chromium() -> None:
    """Skip loudly when Chromium is missing, but fail under CI so browser tests never skip silently."""
    reason = chromium_unavailable_reason()
    if reason is None:
        return
    message = f"BROWSER TESTS NEED CHROMIUM: {reason}"
    if in_ci():
        pytest.fail(f"{message}; CI must run them", pytrace=False)
    _skipped_because.append(reason)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    """Yield one headless Chromium for the session (each person gets a fresh context)."""
    require_chromium()
    from playwright.sync_api import expect as playwright_expect
    from playwright.sync_api import sync_playwright

    playwright_expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@dataclass
class LiveServer:
    """The test app served over real HTTP on 127.0.0.1; jobs run only when the test calls `work`."""

    world: World
    server: BaseWSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        """Return the origin the browser talks to."""
        return f"http://127.0.0.1:{self.server.server_port}"

    def work(self) -> None:
        """Run every queued job with a burst worker in the test thread, between browser steps."""
        # The test thread's session is the jobs' session (they reuse the open app context): drop what the
        # server's requests made stale before, and end the transaction after so no snapshot lingers.
        db.session.expire_all()
        self.world.work()
        db.session.rollback()


@pytest.fixture
def live_server(world: World) -> Iterator[LiveServer]:
    """Serve the world's app on a free port in a thread, with CSRF on so the real forms are exercised."""
    app = world.app
    csrf_before = app.config["WTF_CSRF_ENABLED"]
    app.config["WTF_CSRF_ENABLED"] = True
    # Threaded like a real deployment: each request gets its own thread, app context and DB session.
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="ferry-live-server", daemon=True)
    thread.start()
    try:
        yield LiveServer(world=world, server=server, thread=thread)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        app.config["WTF_CSRF_ENABLED"] = csrf_before


class Screenshots:
    """Numbered full-page screenshots of one test, under test-artifacts/browser/<test name>/."""

    def __init__(self, name: str) -> None:
        self.dir = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        shutil.rmtree(self.dir, ignore_errors=True)  # a rerun's pictures never mix with an older run's
        self.dir.mkdir(parents=True)
        self.count = 0

    def take(self, page: Page, label: str) -> Path:
        """Save a full-page screenshot of `page` and return its path."""
        self.count += 1
        path = self.dir / f"{self.count:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', label).strip('-')}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


def _catalog(language: str) -> Translations:
    """Return the app's compiled message catalog for `language` (e.g. "zh_CN"), as Flask-Babel loads it."""
    return Translations.load(str(REPO_ROOT / "webapp" / "translations"), [Locale.parse(language)])


@dataclass
class Person:
    """One user in their own browser context: logs in through the form and records what the page did."""

    name: str
    device: str
    server: LiveServer
    context: BrowserContext
    page: Page
    shots: Screenshots
    console_errors: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (resource type, url) of every request
    language: str = "en"  # the language this person's pages are in (browser locale or profile choice)

    def t(self, message: str) -> str:
        """Return `message` as this person's pages show it (the app's own catalog), to find buttons and links."""
        if self.language == "en":
            return message
        return _catalog(self.language).gettext(message)

    @property
    def path(self) -> str:
        """Return the current page's path (and query) on the app."""
        return self.page.url.removeprefix(self.server.url)

    def goto(self, path: str, status: int = 200) -> Page:
        """Open an app path and check it answered with `status`."""
        url = self.server.url + path
        response = self.page.goto(url)
        got = response.status if response else None
        assert got == status, f"{self.name}: GET {path} -> {got}, wanted {status}"
        if status >= 400:  # Chromium logs the error status it was asked to get: not a page problem
            failed = f"{url}: Failed to load resource: the server responded with a status of {status}"
            self.console_errors[:] = [e for e in self.console_errors if not e.startswith(failed)]
        return self.page

    def login(self) -> None:
        """Log in through the login form."""
        self.goto("/login")
        self.page.fill("#username", self.name)
        self.page.fill("#password", PASSWORD)
        self.page.get_by_role("button", name=self.t("Log in")).click()
        self.page.wait_for_url(re.compile(r".*/tickets$"))
        self.check()

    def check(self) -> None:
        """Assert the page shows this person logged in and nothing went wrong in the console."""
        expect(self.page.locator("#whoami")).to_have_text(self.name)
        assert not self.console_errors, f"{self.name}: console errors on {self.page.url}: {self.console_errors}"

    def step(self, label: str) -> Path:
        """Check the page and save a screenshot of it named after this person, the device and `label`."""
        self.check()
        return self.shots.take(self.page, f"{self.name}-{self.device}-{label}")

    def state(self) -> str | None:
        """Return the state shown by the ticket page's badge."""
        return self.page.locator("main .state-badge").first.get_attribute("data-state")

    def press(self, action: str, expect_state: str, **fields: str) -> None:
        """Fill and submit one action form on the ticket page, then wait for the ticket to show `expect_state`."""
        form = self.page.locator(f'form.action-form[data-action="{action}"]')
        for name, value in fields.items():
            form.locator(f'[name="{name}"]').fill(value)
        form.locator('button[type="submit"]').click()
        expect(self.page.locator("main .state-badge").first).to_have_attribute("data-state", expect_state)
        self.page.wait_for_load_state()

    def wait_for_state(self, ticket_path: str, state: str, attempts: int = 20, pause: float = 0.5) -> None:
        """Run queued jobs, then wait until the ticket page shows `state`; fail with the page's error and log."""
        badge = self.page.locator("main .state-badge").first
        # Decided before the jobs run: the page may reload itself while they run, before we look again.
        live = self.path == ticket_path and self.page.locator("#run-log[data-events]").count() > 0
        self.server.work()
        if live:
            # The page follows the run's live log and reloads itself when the run ends: watch it do so.
            try:
                expect(badge).to_have_attribute("data-state", state, timeout=LIVE_LOG_TIMEOUT_MS)
            except AssertionError:
                raise AssertionError(
                    f"{ticket_path}: the run ended but the live-log page never reloaded to {state!r} "
                    f"(still {self.state()!r}); log shown: {self.text_of('#run-log')!r}; console: {self.console_errors}"
                ) from None
            return
        seen = None
        for _ in range(attempts):
            self.goto(ticket_path)
            seen = self.state()
            if seen == state:
                return
            time.sleep(pause)
            self.server.work()
        error, log = self.text_of("#ticket-error"), self.text_of("#run-log")
        tail = log and log[-2000:]
        raise AssertionError(f"{ticket_path} stayed {seen!r}, wanted {state!r}; error: {error}; log tail: {tail}")

    def text_of(self, selector: str) -> str | None:
        """Return the text of the first element matching `selector`, or None when there is none."""
        locator = self.page.locator(selector)
        return locator.first.inner_text() if locator.count() else None

    def overflow(self) -> int:
        """Return by how many CSS pixels the document is wider than the viewport (0 when it fits)."""
        # Not innerWidth: a mobile browser widens it to fit overflowing content (zooming out), hiding the overflow.
        return self.page.evaluate(
            "() => { const d = document.documentElement; return Math.max(0, d.scrollWidth - d.clientWidth); }"
        )

    def assert_clickable(self, selector: str) -> int:
        """Assert every element matching `selector` is visible and would receive a click; return how many."""
        items = self.page.locator(selector)
        count = items.count()
        assert count, f"nothing matches {selector} on {self.page.url}"
        for i in range(count):
            # trial=True runs Playwright's actionability checks (visible, stable, enabled, not covered) only.
            items.nth(i).click(trial=True)
        return count

    def foreign_requests(self) -> list[str]:
        """Return the URLs this person's pages requested from anywhere but the app's origin."""
        return [url for _, url in self.requests if not url.startswith((self.server.url + "/", "data:"))]

    def loaded(self, *kinds: str) -> set[str]:
        """Return the file names of the requests of the given resource kinds (stylesheet, script, ...)."""
        return {url.rsplit("/", 1)[1] for kind, url in self.requests if kind in kinds}


@dataclass
class People:
    """Factory and registry of the people a test drives, one browser context each."""

    browser: Browser
    server: LiveServer
    shots: Screenshots
    people: list[Person] = field(default_factory=list)

    def __call__(self, name: str, device: str = "laptop", login: bool = True, locale: str | None = None) -> Person:
        """Open a fresh context for user `name` on a device of DEVICES, logged in unless told not to.

        `locale` (e.g. "zh-CN") is the browser's language: its Accept-Language header, so Ferry's pages follow it.
        """
        context = self.browser.new_context(**DEVICES[device], **({"locale": locale} if locale else {}))
        context.set_default_timeout(TIMEOUT_MS)
        # A trace (DOM snapshots, network, console per action) is kept only when the test fails: open it with
        # `playwright show-trace test-artifacts/browser/<test>/trace-<name>-<device>.zip`.
        context.tracing.start(screenshots=True, snapshots=True)
        page = context.new_page()
        person = Person(name=name, device=device, server=self.server, context=context, page=page, shots=self.shots)
        if locale and not locale.startswith("en"):
            person.language = locale.replace("-", "_")
        errors = person.console_errors
        page.on("console", lambda m: m.type == "error" and errors.append(f"{m.location['url']}: {m.text}"))
        page.on("pageerror", lambda e: errors.append(f"{page.url}: uncaught {e}"))
        context.on("request", lambda r: person.requests.append((r.resource_type, r.url)))
        self.people.append(person)
        if login:
            person.login()
        return person

    def close(self, failed: bool) -> None:
        """Keep a screenshot and a trace of every person's page when the test failed, then close the contexts."""
        for person in self.people:
            label = f"{person.name}-{person.device}"
            try:
                if failed:
                    self.shots.take(person.page, f"FAILED-{label}")
                    person.context.tracing.stop(path=str(self.shots.dir / f"trace-{label}.zip"))
                else:
                    person.context.tracing.stop()
            except Exception:  # noqa: BLE001 - a dead page must not hide the test's own failure
                pass
            person.context.close()


@pytest.fixture
def people(request: pytest.FixtureRequest, chromium: Browser, live_server: LiveServer) -> Iterator[People]:
    """Yield a factory of people logged in on the live server, each in a context of their own."""
    crowd = People(browser=chromium, server=live_server, shots=Screenshots(request.node.name))
    yield crowd
    report = getattr(request.node, "ferry_report_call", None)
    crowd.close(failed=report is None or report.failed)
