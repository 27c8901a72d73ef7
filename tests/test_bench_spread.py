"""The figures of `bench.py spread` (scripts/bench_spread.py), computed from start times."""

from __future__ import annotations

import math

import pytest
from bench_spread import spread_stats


def test_spread_is_the_distance_from_the_median_start_and_lateness_from_the_schedule() -> None:
    scheduled = 1000.0
    # 20 agents: 19 start within 1-19 ms of the schedule, one 200 ms late.
    starts = [scheduled + i / 1000 for i in range(1, 20)] + [scheduled + 0.2]
    s = spread_stats(starts, scheduled)
    # The median start is 10.5 ms late; distances from it: 0.5, 0.5, 1.5, 1.5, ... 8.5,
    # 8.5, 9.5 and 189.5 (nearest rank: p50 is the 10th of 20, p95 the 19th, p99 the 20th).
    assert s["spread_p50_ms"] == 4.5
    assert s["spread_p95_ms"] == 9.5
    assert s["spread_p99_ms"] == s["spread_max_ms"] == 189.5
    assert s["range_ms"] == 199.0
    assert (s["late_min_ms"], s["late_p50_ms"], s["late_p99_ms"], s["late_max_ms"]) == (
        1.0, 10.0, 200.0, 200.0
    )


def test_a_shared_delay_is_no_spread() -> None:
    s = spread_stats([5.25] * 7, 5.0)
    assert s["spread_p95_ms"] == s["range_ms"] == 0.0
    assert s["late_p50_ms"] == 250.0


@pytest.mark.parametrize("starts", [[], [math.nan, math.nan]])
def test_no_start_gives_no_figures(starts: list[float]) -> None:
    assert set(spread_stats(starts, 0.0).values()) == {None}


def test_a_timer_that_never_woke_is_left_out() -> None:
    s = spread_stats([1.0, 1.002, math.nan], 1.0)
    assert s["range_ms"] == 2.0
    assert s["late_max_ms"] == 2.0
