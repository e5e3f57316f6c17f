"""Batch specs of gray releases (pure)."""

from __future__ import annotations

import pytest

from webapp import batches

HOSTS = [f"web{i}" for i in range(1, 11)]


def test_canary_then_half_then_all():
    """1,50%,100% on 10 hosts: 1, then 4 more (5 in all), then the other 5."""
    assert [len(b) for b in batches.plan("1,50%,100%", HOSTS)] == [1, 4, 5]
    assert batches.plan("1,50%,100%", HOSTS)[0] == ["web1"]


def test_empty_spec_is_one_batch_and_the_last_batch_completes_the_fleet():
    """No spec: everything at once; a spec that stops short still ends with every host."""
    assert batches.plan("", HOSTS) == [HOSTS]
    assert [len(b) for b in batches.plan("1,3", HOSTS)] == [1, 2, 7]
    assert [len(b) for b in batches.plan("10%", ["a", "b", "c"])] == [1, 2]


def test_no_empty_batches_and_small_fleets():
    """Repeated or shrinking reaches still move on by one host; one host is one batch."""
    assert [len(b) for b in batches.plan("1,1,1", ["a", "b", "c", "d"])] == [1, 1, 1, 1]
    assert batches.plan("1,50%,100%", ["only"]) == [["only"]]
    assert batches.plan("2,100%", []) == []


@pytest.mark.parametrize("bad", ["0", "abc", "150%", "1,,x", "-1", "50 %x"])
def test_bad_specs_are_refused(bad):
    """Anything but counts and percentages is a clear error."""
    with pytest.raises(batches.BatchSpecError):
        batches.normalise(bad)


def test_normalise():
    """Spaces go, the form is canonical."""
    assert batches.normalise(" 1, 50% ,100%") == "1,50%,100%"
    assert batches.normalise("") == ""
