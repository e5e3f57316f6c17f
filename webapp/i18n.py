"""Languages and time zones of the pages: Flask-Babel with the user's choice, else the browser's, else the defaults.

The API stays English and keeps its tokens (state names, statuses); only pages translate. Domain errors carry an
English template and its parameters (webapp/errors.py): the API shows the English text, a page the catalog's.
"""

from __future__ import annotations

import functools
import zoneinfo
from datetime import UTC, datetime

from flask import Flask, current_app, has_request_context, request
from flask_babel import Babel, get_translations, gettext, lazy_gettext, lazy_pgettext
from flask_babel import refresh as babel_refresh
from flask_login import current_user
from markupsafe import Markup, escape

from .errors import BadInput, DomainError

TRANSLATIONS_DIR = "translations"  # webapp/translations/<locale>/LC_MESSAGES/messages.po (+ the compiled .mo)
LANGUAGES = {"en": "English", "zh_CN": "简体中文"}  # names shown in their own language
DEFAULT_LANGUAGE = "en"

babel = Babel()

# Displayed labels of the tokens the API and data attributes keep (states, kinds, roles, statuses, actions).
_l = lazy_gettext
_lp = lazy_pgettext
LABELS = {
    # ticket states
    "pending_staging": _l("waiting for staging update"),
    "staging_updating": _l("updating staging"),
    "staging_failed": _l("staging update failed"),
    "testing": _l("testing on staging"),
    "returned": _l("returned for changes"),
    "pending_approval": _l("waiting for approval"),
    "rejected": _l("rejected"),
    "approved": _l("approved, ready to release"),
    "releasing": _l("releasing"),
    "release_paused": _l("paused between batches"),
    "release_failed": _l("release failed"),
    "released": _l("released"),
    "cancelled": _l("cancelled"),
    # ticket kinds, roles, deploy modes
    "release": _l("release"),
    "rollback": _l("rollback"),
    "developer": _l("developer"),
    "lead": _l("lead"),
    "atomic": _l("atomic"),
    "inplace": _l("in place"),
    # history actions and system events
    "file": _l("filed"),
    "request-rollback": _l("requested rollback"),
    "return": _l("returned for changes"),
    "resubmit": _l("resubmitted"),
    "test-passed": _l("test passed"),
    "approve": _l("approved"),
    "reject": _l("rejected"),
    "retry": _l("retried"),
    "cancel": _l("cancelled"),
    "continue": _l("continued with the next batch"),
    "abort": _l("aborted: every host back"),
    "staging_started": _l("staging update started"),
    "staging_succeeded": _l("staging updated"),
    "release_succeeded": _l("release succeeded"),
    "release_refused": _l("release refused"),
    "release_pause": _l("paused between batches"),
    "approval_voided": _l("approval voided"),
    "run_lost": _l("run lost"),
    # notification events (the rest share the state and action labels above)
    "approval_needed": _l("approval needed"),
    "rollback_requested": _l("rollback requested"),
    "test": _l("test message"),
    # run stages and statuses, host results, fleet states, deliveries
    "staging": _l("staging"),
    "switch_back": _l("switch back"),
    "verify": _l("verify"),
    "queued": _l("queued"),
    "running": _l("running"),
    "succeeded": _l("succeeded"),
    "successful": _l("successful"),
    "failed": _l("failed"),
    "canceled": _l("canceled"),
    "timeout": _l("timed out"),
    "lost": _l("lost"),
    "switched": _l("switched"),
    "healthy": _l("healthy"),
    "reverted": _l("reverted"),
    "ok": _l("ok"),
    "changed": _l("changed"),
    "unreachable": _l("unreachable"),
    "skipped": _l("skipped"),
    "pending": _l("pending"),
    "paused": _l("paused"),
    "switched_back": _l("switched back"),
    "in_sync": _l("in sync"),
    "drifted": _l("drifted"),
    "new": _l("new"),
    "sent": _l("sent"),
    "modified": _l("modified"),
    "added": _l("added"),
    "deleted": _l("deleted"),
}

# Field names that start the English error messages ("reason: required"): shown as the form's label on pages.
FIELD_LABELS = {
    "project": _l("Project"),
    "reason": _l("Reason"),
    "comment": _l("Comment"),
    "svn_paths": _l("SVN paths"),
    "svn_revision": _l("SVN revision"),
    "version": _l("Version"),
    "username": _l("User"),
    "password": _l("Password"),
    "current_password": _l("Current password"),
    "new_password": _l("New password"),
    "name": _l("Name"),
    "language": _l("Language"),
    "timezone": _l("Time zone"),
}


# Actions as verbs, for the state machine's refusals ("only a lead of the project may %(action)s").
ACTION_VERBS = {
    "return": _lp("action", "return for changes"),
    "resubmit": _lp("action", "resubmit"),
    "test-passed": _lp("action", "mark as tested"),
    "approve": _lp("action", "approve"),
    "reject": _lp("action", "reject"),
    "release": _lp("action", "release"),
    "retry": _lp("action", "retry"),
    "cancel": _lp("action", "cancel"),
    "continue": _lp("action", "continue with the next batch"),
    "abort": _lp("action", "abort"),
}


class _PageMemo:
    """What one request looked up for its page: translated labels, the time zone, the catalog."""

    __slots__ = ("labels", "badges", "zone", "translations")

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}
        self.badges: dict[str, Markup] = {}
        self.zone: zoneinfo.ZoneInfo | None = None
        self.translations = None


def _memo() -> _PageMemo | None:
    """Return the current request's memo (None outside a request).

    Kept on the request, not on `g`: an app context can outlive a request (tests reuse one), a request cannot.
    """
    if not has_request_context():
        return None
    try:
        return request._ferry_i18n
    except AttributeError:
        memo = request._ferry_i18n = _PageMemo()
        return memo


def label(token: object) -> str:
    """Return the displayed label of a state, kind, role or status token (the token itself when unknown).

    A page shows the same few labels many times (a badge per row): each is translated once per request.
    """
    text = "" if token is None else str(token)
    found = LABELS.get(text)
    if found is None:
        return text
    memo = _memo()
    if memo is None:
        return str(found)
    try:
        return memo.labels[text]
    except KeyError:
        memo.labels[text] = translated = str(found)
        return translated


# Bootstrap colour of each ticket state's badge.
STATE_COLORS = {
    "pending_staging": "secondary",
    "staging_updating": "info",
    "staging_failed": "danger",
    "testing": "primary",
    "returned": "warning",
    "pending_approval": "warning",
    "rejected": "danger",
    "approved": "success",
    "releasing": "info",
    "release_failed": "danger",
    "released": "success",
    "cancelled": "dark",
}


def state_badge(state: str) -> Markup:
    """Return a ticket state's badge: its label, coloured, with the state token in data-state (a filter per row)."""
    memo = _memo()
    badge = memo.badges.get(state) if memo is not None else None
    if badge is None:
        color = STATE_COLORS.get(state, "secondary")
        shown = escape(label(state))
        badge = Markup(f'<span class="badge text-bg-{color} state-badge" data-state="{escape(state)}">{shown}</span>')
        if memo is not None:
            memo.badges[state] = badge
    return badge


def _once(slot: str, compute):
    """Return the request memo's `slot`, computing it on first use (every time outside a request)."""
    memo = _memo()
    if memo is None:
        return compute()
    value = getattr(memo, slot)
    if value is None:
        value = compute()
        setattr(memo, slot, value)
    return value


def page_translations():
    """Return the request's catalog (Flask-Babel's for the page's language), looked up once per request."""
    return _once("translations", get_translations)


def refresh() -> None:
    """Forget the request's language, time zone, catalog and labels (after the user changed them)."""
    babel_refresh()
    if _memo() is not None:
        del request._ferry_i18n


def select_language() -> str:
    """Return the page language: the user's profile choice, else the browser's Accept-Language, else English."""
    if not has_request_context():
        return DEFAULT_LANGUAGE
    if current_user and current_user.is_authenticated and current_user.language in LANGUAGES:
        return current_user.language
    return request.accept_languages.best_match(list(LANGUAGES), default=DEFAULT_LANGUAGE)


def select_timezone() -> str:
    """Return the IANA name of the page's time zone: the user's profile choice, else FERRY_TIMEZONE."""
    if has_request_context() and current_user and current_user.is_authenticated and current_user.timezone:
        return current_user.timezone
    return current_app.config["FERRY_TIMEZONE"]


def user_zone() -> zoneinfo.ZoneInfo:
    """Return the page's time zone as a ZoneInfo, chosen once per request (a page formats many dates)."""
    return _once("zone", _zone)


def _zone() -> zoneinfo.ZoneInfo:
    """Return the time zone select_timezone names as a ZoneInfo."""
    try:
        return zoneinfo.ZoneInfo(select_timezone())
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")  # a zone removed from tzdata since it was chosen


def localtime(value: object, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """Format a UTC datetime (naive as stored, aware, or ISO text from the serializers) in the page's zone."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        return str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(user_zone()).strftime(fmt)


def zone_name() -> str:
    """Return the name of the page's time zone, for table headers."""
    return user_zone().key


def check_language(value: object) -> str:
    """Return a valid profile language ("" = the browser's), or raise BadInput."""
    value = "" if value is None else str(value).strip()
    if value and value not in LANGUAGES:
        raise BadInput(
            "language: one of %(choices)s, or empty for the browser's", "language", choices=", ".join(LANGUAGES)
        )
    return value


@functools.cache
def available_zones() -> frozenset[str]:
    """Return the IANA time zone names this machine knows (read once; scanning tzdata takes a while)."""
    return frozenset(zoneinfo.available_timezones())


def check_timezone(value: object) -> str:
    """Return a valid IANA time zone name ("" = FERRY_TIMEZONE), or raise BadInput."""
    value = "" if value is None else str(value).strip()
    if value and value not in available_zones():
        raise BadInput(
            "timezone: %(value)r is not an IANA time zone name (e.g. Asia/Shanghai)", "timezone", value=value
        )
    return value


def translate_error(e: DomainError) -> str:
    """Return a domain error's message in the page's language (the catalog's text with its parameters)."""
    params = dict(e.params)
    # English pages keep the field's name, as the API says it; other languages show the form's label.
    if "field" in params and params["field"] in FIELD_LABELS and select_language() != DEFAULT_LANGUAGE:
        params["field"] = FIELD_LABELS[params["field"]]
    for key in ("state", "expected", "kind", "status"):
        if key in params:
            params[key] = label(params[key])
    if params.get("action") in ACTION_VERBS:
        params["action"] = ACTION_VERBS[params["action"]]
    return gettext(e.template, **params) if params else gettext(e.template)


def progress_labels() -> dict[str, str]:
    """Return the labels of the host statuses the live progress table shows, in the page's language."""
    return {status: label(status) for status in ("ok", "changed", "failed", "unreachable", "running", "skipped")}


def init_app(app: Flask) -> None:
    """Bind Flask-Babel (language and zone selectors) and give templates their helpers."""
    babel.init_app(
        app,
        locale_selector=select_language,
        timezone_selector=select_timezone,
        default_translation_directories=TRANSLATIONS_DIR,
    )
    # Templates' _() and friends, as Flask-Babel installs them but with the request's catalog looked up once.
    app.jinja_env.install_gettext_callables(
        gettext=lambda s: page_translations().ugettext(s),
        ngettext=lambda s, p, n: page_translations().ungettext(s, p, n),
        newstyle=True,
        pgettext=lambda c, s: page_translations().upgettext(c, s),
        npgettext=lambda c, s, p, n: page_translations().unpgettext(c, s, p, n),
    )
    app.jinja_env.globals.update(
        label=label, zone_name=zone_name, languages=LANGUAGES, current_language=select_language
    )
    app.jinja_env.filters["localtime"] = localtime
    # Host statuses the live log's progress table shows (static/ferry.js reads them from data-labels).
    app.jinja_env.globals["progress_labels"] = progress_labels
    app.jinja_env.filters["label"] = label
    app.jinja_env.filters["state_badge"] = state_badge
    # A page's <html lang>: "zh-CN" for zh_CN.
    app.jinja_env.globals["html_lang"] = lambda: Markup(select_language().replace("_", "-"))
