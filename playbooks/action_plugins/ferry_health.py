"""Ansible action plugin: check one host's health over HTTP from the controller, with retries.

Arguments: url (template: `{host}` = inventory hostname, `{address}` = ansible_host or the hostname; a host
var `ferry_health_url` overrides it), expect (status codes: "2xx", "200,301", "200-399"; default 2xx),
body (optional substring the answer must contain), retries (default 3), interval (seconds, default 2),
timeout (seconds per request, default 5).
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

from ansible.plugins.action import ActionBase

EXCERPT = 300


def parse_expect(spec: str) -> list[tuple[int, int]]:
    """Turn "2xx", "200,301" or "200-399" into inclusive status ranges."""
    ranges = []
    for part in (spec or "2xx").replace(" ", "").split(","):
        if not part:
            continue
        if re.fullmatch(r"[1-5]xx", part, re.IGNORECASE):
            base = int(part[0]) * 100
            ranges.append((base, base + 99))
        elif re.fullmatch(r"\d{3}-\d{3}", part):
            lo, hi = part.split("-")
            ranges.append((int(lo), int(hi)))
        elif re.fullmatch(r"\d{3}", part):
            ranges.append((int(part), int(part)))
        else:
            raise ValueError(f"bad status spec {part!r}")
    return ranges or [(200, 299)]


def probe(url: str, timeout: float) -> tuple[int | None, str, str]:
    """GET url once; return (status or None, body excerpt, error)."""
    req = urllib.request.Request(url, headers={"User-Agent": "Ferry health check"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read(65536).decode("utf-8", "replace"), ""
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read(65536).decode("utf-8", "replace") if exc.fp else ""
        return exc.code, body, ""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, "", str(reason)


def check(url: str, expect: str, body: str, retries: int, interval: float, timeout: float) -> dict:
    """Probe until healthy or out of tries; return the last attempt's facts."""
    ranges = parse_expect(expect)
    attempt, status, text, error = 0, None, "", ""
    for attempt in range(1, max(retries, 1) + 1):
        started = time.monotonic()
        status, text, error = probe(url, timeout)
        ok_status = status is not None and any(lo <= status <= hi for lo, hi in ranges)
        if ok_status and (not body or body in text):
            return {"healthy": True, "url": url, "status": status, "attempts": attempt, "seconds": 0.0}
        if attempt < retries:
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    if status is None:
        why = f"no answer ({error})"
    elif body and body not in text:
        why = f"status {status}, body lacks {body!r}"
    else:
        why = f"status {status}, expected {expect or '2xx'}"
    excerpt = re.sub(r"\s+", " ", text).strip()[:EXCERPT]
    return {"healthy": False, "url": url, "status": status, "attempts": attempt, "why": why, "excerpt": excerpt}


class ActionModule(ActionBase):
    """Run the health check of the current host from the controller."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        """Check and report; failed (not unreachable) when the host is unhealthy."""
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        name = task_vars.get("inventory_hostname", "?")
        template = str(task_vars.get("ferry_health_url") or args.get("url") or "")
        if not template:
            return {**result, "failed": True, "msg": "ferry_health: no url"}
        address = str(task_vars.get("ansible_host") or name)
        url = template.replace("{host}", name).replace("{address}", address)
        started = time.monotonic()
        try:
            out = check(
                url,
                str(args.get("expect") or "2xx"),
                str(args.get("body") or ""),
                int(args.get("retries") or 3),
                float(args.get("interval") if args.get("interval") not in (None, "") else 2),
                float(args.get("timeout") or 5),
            )
        except ValueError as exc:
            return {**result, "failed": True, "msg": f"ferry_health: {exc}"}
        out["seconds"] = round(time.monotonic() - started, 3)
        health = {"health": {name: out}}
        if not out["healthy"]:
            msg = f"health check failed: {url}: {out['why']}"
            if out.get("excerpt"):
                msg += f"; body: {out['excerpt']}"
            return {**result, "failed": True, "msg": msg, "ferry": health}
        result.update(changed=False, msg=f"healthy: {url} → {out['status']}", ferry=health)
        return result
