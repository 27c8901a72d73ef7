"""Refusals are logged at most ten times a minute per kind, then counted in one line."""

from __future__ import annotations

import logging

import pytest

from protocol.ratelimit import LogLimiter


def test_a_flood_of_one_kind_is_ten_lines_and_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = LogLimiter(logging.getLogger("loa.test"), monotonic=lambda: now[0])
    caplog.set_level(logging.INFO, "loa.test")
    logged = [limiter.warning("bad events", "bad event %d", n) for n in range(25)]
    assert logged == [True] * 10 + [False] * 15
    assert limiter.warning("bad states", "another kind has its own ten")
    now[0] = 61.0
    limiter.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:10] == [f"bad event {n}" for n in range(10)]
    assert "15 more of these in the last minute were not logged one by one: bad events" in lines
    assert all(r.exc_info is None for r in caplog.records)
    caplog.clear()
    assert limiter.warning("bad events", "bad event again")  # a new minute
    assert limiter.held_back_total == 15
