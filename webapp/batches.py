"""Gray releases (灰度发布): which hosts switch in which batch. Pure (stdlib only).

A batch spec lists how far the release has reached after each batch, as a host count or a share of the
fleet: `1,50%,100%` on 10 hosts switches 1 host, then up to 5 (4 more), then all (5 more). Counts are
cumulative, so `1,3` on 10 hosts is 1, 2 more, then the rest: the last batch always completes the fleet.
An empty spec is one batch of every host (switch all at once).
"""

from __future__ import annotations

import math
import re

ITEM = re.compile(r"^(\d{1,4})(%?)$")


class BatchSpecError(ValueError):
    """A batch spec that cannot be read; the message says why."""


def parse(spec: str) -> list[tuple[int, bool]]:
    """Return [(number, is_percent)] from "1,50%,100%"; refuse anything else (empty → [])."""
    items = []
    for raw in (spec or "").replace(" ", "").split(","):
        if not raw:
            continue
        m = ITEM.match(raw)
        if not m:
            raise BatchSpecError(f"{raw!r} is neither a host count nor a percentage")
        number, percent = int(m.group(1)), bool(m.group(2))
        if number < 1 or (percent and number > 100):
            raise BatchSpecError(f"{raw!r} is out of range (counts from 1, percentages 1–100%)")
        items.append((number, percent))
    return items


def normalise(spec: str) -> str:
    """Return the spec in its canonical form ("1,50%,100%"), or "" for one batch; raise BatchSpecError."""
    return ",".join(f"{n}{'%' if p else ''}" for n, p in parse(spec))


def plan(spec: str, hosts: list[str]) -> list[list[str]]:
    """Split hosts (in inventory order) into batches; every host is in exactly one, none is empty."""
    if not hosts:
        return []
    batches: list[list[str]] = []
    done = 0
    for number, percent in parse(spec):
        reach = math.ceil(len(hosts) * number / 100) if percent else number
        reach = min(max(reach, done + 1), len(hosts))  # every batch moves on by at least one host
        if reach > done:
            batches.append(hosts[done:reach])
            done = reach
        if done == len(hosts):
            break
    if done < len(hosts):
        batches.append(hosts[done:])
    return batches
