"""The figures of `bench.py spread` (scripts/bench_spread.py), computed from start times."""

from __future__ import annotations

import math
from typing import Any

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


def _result(spread_p95: float, raw_p95: float) -> dict[str, Any]:
    """A result of bench_spread.run() as bench.py completes it, with made-up figures."""
    from bench_spread import STAT_KEYS

    figures = {k: spread_p95 for k in STAT_KEYS}
    per_trial = {"started": 1000, **figures, "raw_spread_p95_ms": raw_p95,
                 "cpu_per_start_ms": 2.0}  # fmt: skip
    return {
        "bench": "spread", "agents": 1000, "processes": 2, "trials": 1, "lead_s": 7.0,
        "bulletin_s": 2.0, "started": 1000, "delivered_before_start": 1000, **figures,
        **{f"raw_{k}": raw_p95 for k in STAT_KEYS}, "raw_woke": 1000,
        "cpu_per_start_ms": 2.0, "serial_ms": 1000.0, "alone": 40,
        **{f"alone_{k}": 1.5 for k in STAT_KEYS},
        "cpu": {"agents": {"user_s": 1.0, "system_s": 3.0}},
        "per_trial": [per_trial], "measured": "when the output is handed the play",
        "targets": [{"what": "start spread p95 across agents", "target": "≤ 20 ms",
                     "value": spread_p95, "pass": spread_p95 <= 20}],
        "pass": spread_p95 <= 20, "machine": {"nproc": 2},
    }  # fmt: skip


def test_a_missed_target_is_explained_from_the_figures() -> None:
    from bench_spread import markdown

    text = " ".join(markdown(_result(700.0, 90.0), "Run ...", "Broker ...").split())
    assert "**FAIL**" in text
    assert "Why the target is missed here" in text
    assert "75 % of it in the kernel" in text
    assert "at least 1000.0 ms for that work" in text
    assert "already takes the machine more than the target" in text
    assert "1.5 ms late at the median" in text
    met = markdown(_result(12.0, 0.5), "Run ...", "Broker ...")
    assert "**PASS**" in met
    assert "Why the target is missed" not in met
