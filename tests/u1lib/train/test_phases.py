"""The job clock: phases add up, repeated phases accumulate, the rest is "other"."""

from __future__ import annotations

import time

import pytest

from u1lib.train.phases import JobClock


def test_phases_accumulate_and_other_is_the_rest():
    clock = JobClock()
    for _ in range(2):
        with clock.phase("validation"):
            time.sleep(0.02)
    time.sleep(0.03)  # in no phase
    summary = clock.summary()
    assert list(summary) == ["total", "validation", "other"]
    assert summary["validation"] >= 0.04
    assert summary["other"] >= 0.03
    assert summary["validation"] + summary["other"] == pytest.approx(summary["total"], abs=0.011)


def test_a_phase_that_raises_still_counts():
    clock = JobClock()
    with pytest.raises(RuntimeError), clock.phase("save"):
        time.sleep(0.01)
        raise RuntimeError("disk full")
    assert clock.summary()["save"] >= 0.01


def test_nested_phases_count_exclusively():
    clock = JobClock()
    with clock.phase("save"):
        time.sleep(0.02)
        with clock.phase("adapters"):
            time.sleep(0.03)
    summary = clock.summary()
    assert 0.02 <= summary["save"] < 0.03  # the adapter's 30 ms are not counted twice
    assert summary["adapters"] >= 0.03
    assert summary["save"] + summary["adapters"] + summary["other"] == pytest.approx(summary["total"], abs=0.011)
