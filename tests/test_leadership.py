"""Two controllers, one leader (controller/leadership.py), on SQLite and on a real
PostgreSQL.

- the lease: one claimant leads, the other stands by; never both, also while the
  leader's store stops answering (its renewals fail, or hang): the leader steps down
  on its own clock before the other can take the lease; a leader stopping hands over
  at once;
- with real processes (tests/test_leadership_failover.py has the kill -9 acceptance).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import postgres_database, wait_until

from controller.leadership import Leadership, Leases
from controller.store import Lease, Store

TTL = timedelta(seconds=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'controller.db'}"
        made = Store(url)
        yield made
        made.close()
    else:
        for url in postgres_database("loa_test_leadership"):
            made = Store(url)
            yield made
            made.close()


class Cut:
    """A controller's way to its store, cut on demand: claims fail, or hang until mended."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.mode: str | None = None  # None | "fail" | "hang"
        self.mended = threading.Event()

    def current(self) -> Lease | None:
        return self._store.leases.current()

    def claim(self, holder: str, url: str, ttl: timedelta) -> Lease | None:
        if self.mode == "fail":
            raise ConnectionError("server closed the connection unexpectedly")
        if self.mode == "hang":
            self.mended.wait(30)
        return self._store.leases.claim(holder, url, ttl)

    def release(self, holder: str, term: int) -> bool:
        return self._store.leases.release(holder, term)


class Watched:
    """A Leadership with when it was elected and deposed (monotonic)."""

    def __init__(self, leases: Leases, name: str) -> None:
        self.elected: list[float] = []
        self.deposed: list[tuple[float, str]] = []
        self.lead = Leadership(
            leases, ttl=TTL, url=f"http://{name}.invalid:8080", holder=name,
            on_elected=lambda _term: self.elected.append(time.monotonic()),
            on_deposed=lambda why: self.deposed.append((time.monotonic(), why)),
        )


def never_both(a: Watched, b: Watched, until: threading.Event) -> list[str]:
    """Sample both while until is not set; what went wrong, if anything."""
    seen: list[str] = []
    while not until.is_set():
        if a.lead.is_leader and b.lead.is_leader:
            seen.append(f"both lead at {time.monotonic():.3f}")
        time.sleep(0.002)
    return seen


def test_one_leads_the_other_stands_by_and_a_stop_hands_over_at_once(store: Store) -> None:
    a, b = Watched(store.leases, "a"), Watched(store.leases, "b")
    a.lead.start()
    wait_until(lambda: a.lead.is_leader, 5, "a to lead")
    b.lead.start()
    try:
        time.sleep(0)  # b claims at once; it must find a's lease
        wait_until(lambda: b.lead.view().leader == "a", 5, "b to see a lead")
        assert not b.lead.is_leader
        assert b.lead.role == "standby"
        lease = store.leases.current()
        assert lease is not None
        assert (lease.holder, lease.url, lease.term) == ("a", "http://a.invalid:8080", 1)
        # a renews: after more than a TTL it still leads, in the same term.
        wait_until(lambda: (store.leases.current() or lease).renewed_at > lease.renewed_at, 5,
                   "a renewal")
        assert a.lead.is_leader
        assert not b.lead.is_leader
        # a stops cleanly: b takes over at its next look, well before the TTL.
        stopped = time.monotonic()
        a.lead.stop()
        wait_until(lambda: b.lead.is_leader, 5, "b to lead")
        assert b.elected[0] - stopped < TTL.total_seconds() / 2
        view = b.lead.view()
        assert (view.leader, view.term, view.role) == ("b", 2, "leader")
        assert a.deposed == []  # a stopped; it was not deposed
    finally:
        a.lead.stop()
        b.lead.stop()


@pytest.mark.parametrize("mode", ["fail", "hang"])
def test_a_leader_cut_from_its_store_steps_down_before_another_takes_over(
    store: Store, mode: str
) -> None:
    cut = Cut(store)
    a, b = Watched(cut, "a"), Watched(store.leases, "b")
    a.lead.start()
    wait_until(lambda: a.lead.is_leader, 5, "a to lead")
    b.lead.start()
    done = threading.Event()
    problems: list[str] = []
    sampler = threading.Thread(target=lambda: problems.extend(never_both(a, b, done)))
    sampler.start()
    try:
        wait_until(lambda: b.lead.view().leader == "a", 5, "b to see a lead")
        cut.mode = mode
        wait_until(lambda: b.lead.is_leader, 10, "b to take over")
        assert a.deposed, "a never stepped down"
        deposed_at, why = a.deposed[0]
        assert "no renewal of the lease" in why
        # a stopped first, by at least part of the margin: the two never overlapped.
        assert deposed_at < b.elected[0], (deposed_at, b.elected)
        assert not a.lead.is_leader
        assert a.lead.role == "stepped-down"
        # Mended, a does not come back by itself: the process starts again as a standby.
        cut.mode = None
        cut.mended.set()
        time.sleep(TTL.total_seconds())
        assert b.lead.is_leader
        assert not a.lead.is_leader
        assert len(b.elected) == 1
    finally:
        done.set()
        sampler.join()
        cut.mended.set()
        a.lead.stop()
        b.lead.stop()
    assert problems == []


def test_a_lease_taken_meanwhile_deposes_its_old_holder(store: Store) -> None:
    """A leader that finds another holding the lease (it slept past the TTL: a frozen
    process) steps down at its next claim, whatever its own clock said."""
    deposed: list[str] = []
    # a's process is frozen past the lease, its clock too (as a paused VM's would be).
    a = Leadership(store.leases, ttl=TTL, holder="a", monotonic=lambda: 0.0,
                   on_deposed=deposed.append)
    a.claim_once()
    assert a.is_leader

    def expired() -> bool:
        lease = store.leases.current()
        return lease is not None and lease.expired

    wait_until(expired, 5, "a's lease to run out")
    assert store.leases.claim("b", "", TTL) is not None
    a.claim_once()
    assert deposed == ["b holds the lease now (term 2)"]
    assert not a.is_leader
