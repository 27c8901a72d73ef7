"""The controller store: duplicates dropped, summaries derived, dispatches claimed once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import postgres_database

from controller.store import Store
from protocol.messages import Event

T0 = datetime(2026, 11, 25, 23, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'c.db'}")
    s.clusters.sync_fleet([("c1", "Cụm 1", "xa-a", "Xã A"), ("c2", "Cụm 2", "xa-b", "Xã B")])
    return s


def ev(seq: int, kind: str, cluster: str = "c1", play: str | None = "p1", **kw: Any) -> Event:
    return Event(
        cluster=cluster, outbox="ob1", seq=seq, at=T0 + timedelta(seconds=seq), kind=kind,
        play_id=play, bulletin="Bản tin", **kw,
    )


def test_duplicates_are_dropped_and_new_events_returned(store: Store) -> None:
    first = store.events.add([ev(1, "received"), ev(2, "playing")], T0)
    assert [e.seq for e in first] == [1, 2]
    again = store.events.add([ev(2, "playing"), ev(3, "finished"), ev(3, "finished")], T0)
    assert [e.seq for e in again] == [3]
    assert store.events.count() == 3


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store on each engine (the events' lookup of what is stored differs by engine)."""
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'c.db'}")
        yield s
        s.close()
        return
    for url in postgres_database("loa_test_store"):
        s = Store(url)
        try:
            yield s
        finally:
            s.close()


def test_a_large_batch_keeps_its_new_events_and_drops_or_sets_apart_the_rest(
    any_store: Store,
) -> None:
    """Batches larger than one lookup of stored keys: what is stored is found whichever
    part of the batch it is in, on both engines."""
    clusters = [f"c{n:03d}" for n in range(150)]

    def signed(seq: int, cluster: str, key: str = "k1", kind: str = "received"
               ) -> tuple[Event, str]:  # fmt: skip
        return ev(seq, kind, cluster=cluster), key

    first = [signed(seq, c) for c in clusters for seq in (1, 2, 3, 4)]  # 600 events
    stored = any_store.events.store(first, T0)
    assert (len(stored.fresh), stored.conflicts) == (600, [])
    again = (
        first[::2]  # 300 resends: dropped
        + [signed(2, c, kind="playing") for c in clusters[:5]]  # 5 conflicts
        + [signed(5, c) for c in clusters]  # 150 new
        + [signed(1, c, key="k2") for c in clusters[:10]]  # under another key: new
    )
    stored = any_store.events.store(again, T0)
    assert sorted((e.cluster, e.seq) for e in stored.fresh) == sorted(
        [(c, 5) for c in clusters] + [(c, 1) for c in clusters[:10]]
    )
    assert sorted(e.cluster for e, _key in stored.conflicts) == clusters[:5]
    assert any_store.events.count() == 600 + 150 + 10
    assert any_store.events.count_conflicts() == 5


def test_same_seq_from_another_outbox_is_not_a_duplicate(store: Store) -> None:
    store.events.add([ev(1, "received")], T0)
    other = Event(cluster="c1", outbox="ob2", seq=1, at=T0, kind="received", play_id="p1")
    assert store.events.add([other], T0) == [other]


def test_summary_follows_play_states(store: Store) -> None:
    store.clusters.set_state("c1", "online", T0)
    store.events.add([ev(1, "playing")], T0)
    row = {r.id: r for r in store.clusters.fleet_rows()}["c1"]
    assert (row.state, row.playing) == ("online", "Bản tin")
    store.events.add([ev(2, "interrupted", reason="preempted")], T0)
    row = {r.id: r for r in store.clusters.fleet_rows()}["c1"]
    assert row.playing is None
    assert (row.last_result, row.last_result_reason) == ("interrupted", "preempted")
    assert store.events.play_states("p1") == {"c1": "interrupted"}


def test_rejections_show_in_the_fleet_view(store: Store) -> None:
    store.events.add([ev(1, "rejected", play=None, reason="bad signature")], T0)
    row = {r.id: r for r in store.clusters.fleet_rows()}["c1"]
    assert row.last_rejection == "bad signature"


def test_unknown_cluster_is_kept_but_marked(store: Store) -> None:
    store.events.add([ev(1, "received", cluster="stranger")], T0)
    assert "stranger" not in {r.id for r in store.clusters.fleet_rows()}
    assert store.events.count() == 1


def test_dispatch_is_claimed_once(store: Store) -> None:
    occ = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
    assert store.dispatches.claim("news", occ, "sent", None, T0)
    assert not store.dispatches.claim("news", occ, "sent", None, T0)
    # the same instant written with another offset is the same occurrence
    assert store.dispatches.outcome("news", occ.astimezone(timezone(timedelta(hours=7)))) == "sent"


def test_fleet_sync_hides_removed_clusters(store: Store) -> None:
    store.clusters.sync_fleet([("c1", "Cụm 1", "xa-a", "Xã A")])
    assert [r.id for r in store.clusters.fleet_rows()] == ["c1"]
