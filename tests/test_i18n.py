"""Chinese and English pages: complete catalogs, no untranslated template text, language and time zone choice."""

from __future__ import annotations

import html
import json
import re
import subprocess
from datetime import timedelta
from pathlib import Path

from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from sqlalchemy import select

from tests.conftest import PASSWORD
from webapp.extensions import db
from webapp.models import Ticket, TicketEvent, User

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "webapp" / "templates"
# Babel resolves "zh_CN" to the CLDR locale zh_Hans_CN and looks its catalog up under that name.
CATALOG = REPO / "webapp" / "translations" / "zh_Hans_CN" / "LC_MESSAGES"

# Template text that is not a message: Jinja tags, comments, expressions, and HTML tags (their attributes are
# checked separately).
_TOKEN = re.compile(r"(\{#.*?#\}|\{%.*?%\}|\{\{.*?\}\}|<[^>]*>)", re.S)
_WORD = re.compile(r"[A-Za-z]{2,}")
_ATTR = re.compile(r'\b(placeholder|aria-label|title|alt)="([^"]*)"')
# A string literal inside {{ }} / {% %} that reads like a sentence (two words or more) and is not _()'s argument.
_PHRASE = re.compile(r"""(?<!_\()(['"])([A-Za-z][^'"{}%]*\s[A-Za-z][^'"{}%]*)\1""")
NOT_WORDS = {"Ferry"}  # the product's name stays as it is
ENGLISH_ONLY = {"api_docs.html"}  # the API's Swagger UI page: the API is English, like its answers


def _po():
    """Return the zh_CN catalog as read from the .po file."""
    with open(CATALOG / "messages.po", "rb") as f:
        return read_po(f)


def untranslated_literals(source: str) -> list[str]:
    """Return the human-language text of a template that is not inside {{ _() }} or {% trans %}."""
    found = []
    in_trans = False
    for i, part in enumerate(_TOKEN.split(source)):
        if i % 2 == 1:  # a tag, an expression or a comment
            if part.startswith("{%"):
                words = part.strip("{%-+ }").split()
                in_trans = (words[:1] == ["trans"]) or (in_trans and words[:1] != ["endtrans"])
                found += [m.group(2) for m in _PHRASE.finditer(part)]
            elif part.startswith("{{"):
                found += [m.group(2) for m in _PHRASE.finditer(part)]
            elif part.startswith("<"):
                for _name, value in _ATTR.findall(part):
                    bare = _TOKEN.sub(" ", value)
                    if _WORD.search(bare) and "://" not in bare:  # an example URL is code, not language
                        found.append(value)
            continue
        text = part.strip()
        if not in_trans and not set(_WORD.findall(text)) <= NOT_WORDS:
            found.append(text)
    return found


def test_every_message_has_a_chinese_translation(tmp_path):
    """Every message the code and templates use is in the zh_CN catalog, translated, with the same placeholders."""
    pot = tmp_path / "messages.pot"
    subprocess.run([str(REPO / "scripts" / "translations"), "extract", str(pot)], check=True, capture_output=True)
    with open(pot, "rb") as f:
        used = {(m.context, m.id) for m in read_po(f) if m.id}
    catalog = _po()
    translated = {(m.context, m.id) for m in catalog if m.id and m.string and not m.fuzzy}
    assert len(used) > 300, f"extraction found only {len(used)} messages"
    missing = sorted(used - translated, key=str)
    assert not missing, f"messages without a zh_CN translation (run scripts/translations update, translate): {missing}"
    problems = [(m.id, errors) for m, errors in catalog.check() if errors]
    assert not problems, f"translations whose placeholders do not match: {problems}"


def test_the_compiled_catalog_matches_the_po():
    """The committed .mo holds exactly the .po's translations (scripts/translations compile after each edit)."""
    with open(CATALOG / "messages.mo", "rb") as f:
        compiled = {(m.context, m.id): m.string for m in read_mo(f) if m.id}
    source = {(m.context, m.id): m.string for m in _po() if m.id and m.string and not m.fuzzy}
    assert compiled == source, "messages.mo is stale: run scripts/translations compile"


def test_no_template_has_untranslated_text():
    """Every word shown by a template goes through the catalog; the linter itself catches what it should."""
    templates = [t for t in sorted(TEMPLATES.glob("*.html")) if t.name not in ENGLISH_ONLY]
    problems = {t.name: untranslated_literals(t.read_text()) for t in templates}
    assert not {k: v for k, v in problems.items() if v}, problems
    # The check is not vacuous: plain text, attributes and phrases in expressions are reported; code is not.
    sample = (
        "<h1>Tickets</h1><input placeholder=\"reason\"> {{ x or 'none yet' }} <p>{{ _('ok') }}</p> "
        "{% trans %}Hello{% endtrans %} {{ d.at[:19].replace('T', ' ') }} <b>#{{ n }}</b> · Ferry"
    )
    assert untranslated_literals(sample) == ["Tickets", "reason", "none yet"]


def login(app, username: str, **headers: str):
    """Return a test client logged in as `username`, sending `headers` with every request."""
    c = app.test_client()
    c.environ_base.update({f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()})
    r = c.post("/login", data={"username": username, "password": PASSWORD})
    assert r.status_code == 302, r.data
    return c


def _file_ticket(c) -> int:
    """File a ticket through the page and return its id."""
    r = c.post("/tickets/new", data={"project": "site", "reason": "新的关于页面", "svn_paths": "about"})
    assert r.status_code == 303, r.data
    return int(r.headers["Location"].rsplit("/", 1)[1])


def test_browser_language_chinese_pages(app, world):
    """With Accept-Language zh-CN the ticket list and page are Chinese; state names stay in data attributes."""
    dev = login(app, "dev", **{"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"})
    tid = _file_ticket(dev)
    page = dev.get(f"/tickets/{tid}").get_data(as_text=True)
    assert '<html lang="zh-CN">' in page
    assert 'data-state="pending_staging">等待预发布环境更新</span>' in page
    assert "历史记录" in page and "提交人" in page and "撤销工单" in page
    assert "History" not in page and "Cancel ticket" not in page
    # The live progress table (filled by static/ferry.js) gets the host status labels from the page.
    progress = json.loads(html.unescape(re.search(r"data-labels='([^']*)'", page).group(1)))
    assert progress["ok"] == "成功" and progress["unreachable"] == "无法连接"
    listing = dev.get("/tickets").get_data(as_text=True)
    assert "新建发布单" in listing and "全部状态" in listing and "等待预发布环境更新" in listing
    assert 'data-state="pending_staging"' in listing and "New release ticket" not in listing
    # The flash after an action is Chinese too, with the state's label.
    r = dev.post(f"/tickets/{tid}/cancel", data={"expected_state": "pending_staging"}, follow_redirects=True)
    assert f"撤销工单：工单 #{tid} 现在的状态是“已撤销”。" in r.get_data(as_text=True)
    # The API keeps English and the state names.
    api = app.test_client().get(f"/api/tickets/{tid}", headers={**world.headers("dev"), "Accept-Language": "zh-CN"})
    assert api.get_json()["state"] == "cancelled"


def test_other_languages_fall_back_to_english(app, world):
    """A browser asking for a language Ferry lacks gets English; plain "zh" gets Chinese."""
    assert "Tickets" in login(app, "dev", **{"Accept-Language": "fr-FR,de;q=0.8"}).get("/tickets").get_data(
        as_text=True
    )
    assert "全部状态" in login(app, "lead", **{"Accept-Language": "zh"}).get("/tickets").get_data(as_text=True)
    assert '<h1 class="h3 mb-3">Log in</h1>' in app.test_client().get("/login").get_data(as_text=True)
    zh_login = app.test_client().get("/login", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert "登录" in zh_login and "密码" in zh_login


def test_profile_language_wins_over_the_browser(app, world):
    """A user who chose English in the profile reads English whatever the browser asks, and the reverse."""
    dev = login(app, "dev", **{"Accept-Language": "zh-CN"})
    r = dev.post("/profile", data={"op": "preferences", "language": "en", "timezone": ""}, follow_redirects=True)
    assert "Preferences saved." in r.get_data(as_text=True)
    tid = _file_ticket(dev)
    page = dev.get(f"/tickets/{tid}").get_data(as_text=True)
    assert "History" in page and "历史记录" not in page
    assert 'data-state="pending_staging">waiting for staging update</span>' in page
    lead = login(app, "lead", **{"Accept-Language": "en-US"})
    r = lead.post("/profile", data={"op": "preferences", "language": "zh_CN", "timezone": ""}, follow_redirects=True)
    assert "偏好设置已保存。" in r.get_data(as_text=True)
    assert "历史记录" in lead.get(f"/tickets/{tid}").get_data(as_text=True)


def test_times_are_shown_in_the_users_zone(app, world):
    """History, ticket list and release dates use the profile's zone, else FERRY_TIMEZONE; the header names it."""
    dev = login(app, "dev")
    tid = _file_ticket(dev)
    at = db.session.scalar(select(TicketEvent.at).where(TicketEvent.ticket_id == tid))
    updated = db.session.get(Ticket, tid).updated_at
    page = dev.get(f"/tickets/{tid}").get_data(as_text=True)
    assert "When (UTC)" in page and at.strftime("%Y-%m-%d %H:%M:%S") in page

    dev.post("/profile", data={"op": "preferences", "language": "", "timezone": "Asia/Shanghai"})
    page = dev.get(f"/tickets/{tid}").get_data(as_text=True)
    assert "When (Asia/Shanghai)" in page
    assert (at + timedelta(hours=8)).strftime("%Y-%m-%d %H:%M:%S") in page
    assert (updated + timedelta(hours=8)).strftime("%Y-%m-%d %H:%M") in dev.get("/tickets").get_data(as_text=True)

    app.config["FERRY_TIMEZONE"] = "America/Sao_Paulo"  # UTC-3 all year: the default for users without a choice
    lead = login(app, "lead")
    page = lead.get(f"/tickets/{tid}").get_data(as_text=True)
    assert "When (America/Sao_Paulo)" in page and (at - timedelta(hours=3)).strftime("%Y-%m-%d %H:%M:%S") in page


def test_bad_preferences_are_refused_and_named(app, world):
    """An unknown zone or language is a 400 naming the field, in the page's language; nothing is saved."""
    dev = login(app, "dev", **{"Accept-Language": "zh-CN"})
    r = dev.post("/profile", data={"op": "preferences", "language": "", "timezone": "Mars/Olympus"})
    assert r.status_code == 400
    assert "时区：&#39;Mars/Olympus&#39; 不是 IANA 时区名" in r.get_data(as_text=True)
    r = dev.post("/profile", data={"op": "preferences", "language": "klingon", "timezone": ""})
    assert r.status_code == 400 and "语言：只能是 en, zh_CN 之一" in r.get_data(as_text=True)
    user = db.session.scalar(select(User).where(User.username == "dev"))
    assert (user.language, user.timezone) == ("", "")


def test_domain_errors_translated_on_pages_english_in_the_api(app, world):
    """A service's error reads Chinese on a zh page (field label included) and stays English in the API."""
    dev = login(app, "dev", **{"Accept-Language": "zh-CN"})
    r = dev.post("/tickets/new", data={"project": "site", "reason": "", "svn_paths": ""})
    assert r.status_code == 400 and "更新理由：必填" in r.get_data(as_text=True)
    r = dev.post("/tickets/new", data={"project": "site", "reason": "x", "svn_paths": "../etc"})
    assert "SVN 路径：&#39;../etc&#39; 不能包含“..”" in r.get_data(as_text=True)
    tid = _file_ticket(dev)
    # The state machine's refusal, with the action and state labels.
    r = dev.post(f"/tickets/{tid}/approve", data={"expected_state": "pending_staging"})
    assert r.status_code == 403 and "只有项目负责人才能审批" in r.get_data(as_text=True)
    r = dev.post(f"/tickets/{tid}/cancel", data={"expected_state": "testing"})
    assert r.status_code == 409
    assert f"工单 {tid} 现在是“等待预发布环境更新”，不再是“预发布环境测试中”，请刷新页面" in r.get_data(as_text=True)
    api = app.test_client().post(
        "/api/tickets",
        json={"project": "site", "reason": "", "svn_paths": []},
        headers={**world.headers("dev"), "Accept-Language": "zh-CN"},
    )
    assert api.status_code == 400 and api.get_json() == {"error": "reason: required"}
