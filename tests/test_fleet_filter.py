"""release.yml's `ferry_fleet` filter (playbooks/filter_plugins/ferry_fleet.py): what the hosts' results say."""

from __future__ import annotations

import pytest

from tests.support.plugins import load_plugin

fleet = load_plugin("ferry_fleet", "filter_plugins").FilterModule().filters()["ferry_fleet"]

OK = {"ferry": {}}
FAILED = {"failed": True, "msg": "boom"}  # a registered result without Ferry's key


def hostvars(**hosts):
    """Hostvars of hosts a, b, c (missing ones have no variables)."""
    return {name: hosts.get(name, {}) for name in ("a", "b", "c")}


@pytest.mark.parametrize(
    ("hosts", "kwargs", "want"),
    [
        ({n: {"ferry_stage": OK, "ferry_switch": OK} for n in "abc"}, {}, {}),
        ({n: {"ferry_stage": OK} for n in "abc"}, {}, {}),  # nothing switched yet: not broken
        (
            {
                "a": {"ferry_stage": OK, "ferry_switch": OK},
                "b": {"ferry_stage": OK, "ferry_switch": FAILED},
                "c": {"ferry_stage": OK},
            },
            {},
            {"switch_broken": True},
        ),
        ({"a": {"ferry_stage": OK, "ferry_switch": OK}, "b": {"ferry_stage": OK}}, {"batched": True}, {}),
        ({"b": {"ferry_stage": OK, "ferry_switch": OK, "ferry_hook_error": "rc 1"}}, {}, {"hook_broken": True}),
        ({"c": {"ferry_batch_error": "health"}}, {"batched": True}, {"batch_broken": True}),
        ({"a": {"ferry_switch": OK}}, {"batched": True, "switch_hosts": ["a", "b"]}, {"batch_lost": True}),
        ({"a": {"ferry_switch": OK}}, {"batched": True, "switch_hosts": ["a", "b"], "phase": "abort"}, {}),
        (
            {"a": {"ferry_stage": OK}, "b": {"ferry_stage": OK}},
            {"batched": True, "mode": "inplace", "switch_hosts": ["a", "b"]},
            {},
        ),
    ],
)
def test_fleet(hosts, kwargs, want):
    got = fleet(hostvars(**hosts), ["a", "b", "c"], **kwargs)
    flags = {k: v for k, v in got.items() if k.endswith(("_broken", "_lost")) and v}
    assert flags == want


def test_counts_and_unknown_hosts():
    got = fleet({"a": {"ferry_stage": OK, "ferry_switch": OK}, "b": {"ferry_stage": FAILED}}, ["a", "b", "gone"])
    assert (got["staged"], got["switched"]) == (1, 1)
