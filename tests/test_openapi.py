"""The API's OpenAPI description: every /api/ route documented, served with a local docs page, and a live Ferry
checked against it by schemathesis (no 5xx, every answer and error as documented)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import World, build_world
from tests.support.browser import ARTIFACTS
from tests.support.flow import Flow
from tests.support.servers import threaded_server
from webapp import projects as svc
from webapp.extensions import db
from webapp.models import User
from webapp.openapi import operations

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "test-artifacts" / "schemathesis"
# Checks that hold for every answer. Left out: positive_data_acceptance (a schema-valid request may still be
# refused with 400/404/409 because of what is in the database: an unknown project, a ticket in another state),
# and missing_required_header (the only required header is the token, which ignored_auth covers).
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
    "response_schema_conformance,negative_data_rejection,use_after_free,ensure_resource_availability,ignored_auth,"
    "unsupported_method"
)
# Bounded for CI (≈ 30 s here); raise them, change the seed or the user to hunt wider.
MAX_EXAMPLES = int(os.environ.get("FERRY_SCHEMATHESIS_EXAMPLES", "12"))
SEED = os.environ.get("FERRY_SCHEMATHESIS_SEED", "20261204")
USER = os.environ.get("FERRY_SCHEMATHESIS_USER", "lead")


def test_every_api_route_is_documented(app) -> None:
    """A route under /api/ without @documented would be missing from the description: refuse it."""
    missing = [f"{method} {rule}" for rule, method, _endpoint, view in operations(app) if not hasattr(view, "openapi")]
    assert not missing, f"undocumented API routes: {missing}"


def test_openapi_json_describes_every_route_with_bearer_auth_and_errors(client, app) -> None:
    """GET /api/openapi.json (no token needed) lists every route, its schemas, the bearer scheme and the errors."""
    answer = client.get("/api/openapi.json")
    assert answer.status_code == 200 and answer.is_json
    spec = answer.get_json()
    assert spec["openapi"] == "3.1.0"
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert spec["security"] == [{"bearer": []}]
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    for rule, method, _endpoint, _view in operations(app):
        assert (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule), method.lower()) in documented
    ticket = spec["paths"]["/api/tickets/{ticket_id}/{action}"]["post"]
    assert set(ticket["responses"]) == {"200", "400", "401", "403", "404", "409", "413"}
    assert ticket["responses"]["409"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]
    assert "approve" in ticket["parameters"][1]["schema"]["enum"]
    body = spec["components"]["schemas"]["NewTicket"]
    assert body["additionalProperties"] is False and set(body["required"]) == {"project", "reason"}
    # The ticket's shape is serialize.py's TypedDict: a key the serializer adds shows up here.
    ticket_keys = set(spec["components"]["schemas"]["TicketJson"]["properties"])
    assert {"allowed_actions", "history", "notifications"} <= ticket_keys
    assert spec["paths"]["/api/openapi.json"]["get"]["security"] == []


def test_docs_page_is_served_locally_under_the_csp(client) -> None:
    """/api/docs loads Swagger UI from this server only, with no inline script or style, under the app's CSP."""
    page = client.get("/api/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in page.headers["Content-Security-Policy"]
    assert not re.search(r"<script>|<style|style=|https?://", html)
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        with client.get(asset) as served:
            assert served.status_code == 200, asset


def test_an_action_refuses_fields_it_would_ignore(client, world) -> None:
    """schemathesis found `approve` taking 201 svn_paths silently: fields an action ignores are a 400 naming them."""
    h = world.headers("dev")
    tid = client.post("/api/tickets", json={"project": "site", "reason": "x"}, headers=h).get_json()["id"]
    for action, body in (
        ("cancel", {"svn_paths": ["index.html"]}),
        ("cancel", {"svn_revision": 3}),
        ("cancel", {"reason": "why"}),
    ):
        r = client.post(f"/api/tickets/{tid}/{action}", json=body, headers=h)
        assert r.status_code == 400 and r.get_json()["error"].startswith(next(iter(body))), r.get_json()
    r = client.post(f"/api/tickets/{tid}/cancel", json={"svn_paths": None, "comment": "done"}, headers=h)
    assert r.status_code == 200 and r.get_json()["state"] == "cancelled"


def test_empty_list_arguments_mean_not_given(client, world) -> None:
    """`?limit=` and `?ticket=` are "not given" (as the description says), a bad value is a 400 naming it."""
    h = world.headers("dev")
    assert client.get("/api/runs?ticket=&limit=", headers=h).status_code == 200
    assert client.get("/api/runs?ticket=x", headers=h).get_json()["error"].startswith("ticket")
    spec = client.get("/api/openapi.json").get_json()
    ticket = next(p for p in spec["paths"]["/api/runs"]["get"]["parameters"] if p["name"] == "ticket")
    assert {"const": "", "type": "string"} in ticket["schema"]["anyOf"]


def demo_with_history(app, tmp_path) -> World:
    """Return a world whose project `demo` (the name the description's examples use) has versions 1 and 2
    released, runs with logs, a fleet table and a ticket waiting for approval (so answers carry `changes`)."""
    world = build_world(app, tmp_path)
    demo = svc.create_project(
        db.session,
        "demo",
        svn_url=world.svn.url,
        staging_dir=str(tmp_path / "staging-demo"),
        staging_url="http://staging.demo.test/",
        inventory=world.project.inventory,
        group=world.project.group,
    )
    for name, role in (("dev", "developer"), ("lead", "lead")):
        svc.set_member(db.session, demo, db.session.scalar(select(User).where(User.username == name)), role)
    db.session.commit()
    flow = Flow(app.test_client(), world)
    for n in (1, 2):
        world.svn.commit({"index.html": f"<p>version {n}</p>\n"}, f"version {n}")
        tid = flow.file(project="demo", reason=f"version {n}")
        world.work()
        flow.approve(tid)
        assert flow.release(tid)["state"] == "released"
    world.svn.commit({"about.html": "<p>about</p>\n"}, "about page")
    tid = flow.file(project="demo", reason="about page")
    world.work()
    flow.act(tid, "test-passed")
    return world


def test_schemathesis_finds_no_failure_on_a_live_ferry(app, tmp_path) -> None:
    """schemathesis drives every endpoint of a live Ferry with a token (examples, coverage, fuzzing, stateful
    links): no 5xx, every answer and error conforms to the description, errors are {"error": …}."""
    world = demo_with_history(app, tmp_path)
    REPORTS.mkdir(parents=True, exist_ok=True)
    junit = REPORTS / "junit.xml"
    st = Path(sys.executable).parent / "st"
    with threaded_server(app) as base:
        argv = [str(st), "run", f"{base}/api/openapi.json"]
        argv += ["--header", f"Authorization: Bearer {world.tokens[USER]}"]
        argv += ["--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES), "--seed", SEED]
        argv += ["--workers", "1", "--request-timeout", "20", "--max-failures", "20"]
        argv += ["--report", "junit", "--report-junit-path", str(junit), "--no-color"]
        started = time.monotonic()
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        took = time.monotonic() - started
    (REPORTS / "output.txt").write_text(done.stdout + done.stderr)
    print(f"schemathesis: {took:.1f} s, exit {done.returncode}")
    found = done.stdout[-12000:] + done.stderr[-3000:]
    assert done.returncode == 0, f"schemathesis found failures ({took:.0f} s):\n{found}"


@pytest.mark.browser
def test_docs_page_renders_in_chromium_without_csp_violations(chromium, live_server) -> None:
    """Chromium renders every operation of /api/docs with the app's CSP and nothing fetched from elsewhere."""
    context = chromium.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(f"{live_server.url}/api/docs")
        page.wait_for_selector(".opblock-summary", timeout=20_000)
        count = page.locator(".opblock").count()
        page.locator(".opblock-summary").first.click()
        page.wait_for_selector(".opblock-body", timeout=10_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "api_docs.png"), full_page=False)
    finally:
        context.close()
    assert count == sum(1 for _ in operations(live_server.world.app)), count
    assert not errors, errors
    assert all(url.startswith(live_server.url) or url.startswith("data:") for url in requests), requests
