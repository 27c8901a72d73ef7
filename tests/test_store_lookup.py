"""The store finds rows by their keys through an index, whatever the table's size.

A batch of events is checked against what is stored before it is written; a lookup that
scanned the events table would cost each batch more as the province's history grows
(SQLite does not use an index for a row value IN a list: 58 ms a lookup at 200,000
events). Every SELECT the store runs while taking a batch is explained by SQLite here,
and none may scan a table that grows with the history.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text

from controller.store import Store
from controller.store.engine import KEYS_PER_LOOKUP, keys_in
from controller.store.schema import confirmations
from protocol.messages import Event

T0 = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
GROWING = ("events", "event_conflicts", "confirmations")


def ev(cluster: str, seq: int, kind: str = "playing") -> Event:
    return Event(cluster=cluster, outbox="ob", seq=seq, at=T0 + timedelta(seconds=seq),
                 kind=kind, play_id=f"p-{seq}", bulletin="Bản tin")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'c.db'}")
    s.clusters.sync_fleet([(f"c{n}", f"Cụm {n}", "xa-a", "Xã A") for n in range(20)])
    yield s
    s.close()


def _scans(store: Store, statement: str, parameters: Any) -> list[str]:
    with store.engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()
    return [row[-1] for row in plan if str(row[-1]).startswith("SCAN ")
            and any(f"SCAN {table}" in row[-1] for table in GROWING)]  # fmt: skip


def test_taking_a_batch_looks_stored_events_up_by_their_index(store: Store) -> None:
    store.events.store([(ev(f"c{n % 20}", n), "k1") for n in range(1, 601)], T0)
    selects: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
             _many: bool) -> None:  # fmt: skip
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        # Resends of stored events (one changed: a conflict) and new ones, more than one
        # lookup's worth.
        batch = [(ev(f"c{n % 20}", n), "k1") for n in range(300, 901)]
        batch[0] = (ev("c0", 300, kind="finished"), "k1")
        result = store.events.store(batch, T0)
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    assert len(result.fresh) == 300
    assert len(result.conflicts) == 1
    assert len(selects) >= 3, selects  # the events looked up in parts, and the conflicts
    for statement, parameters in selects:
        assert _scans(store, statement, parameters) == [], statement[:200]


@pytest.mark.parametrize("count", [1, 2, 3, 100, KEYS_PER_LOOKUP])
def test_keys_in_finds_exactly_the_keys_asked_for_by_the_index(store: Store, count: int) -> None:
    c = confirmations.c
    rows = [{"play_id": f"p{n}", "cluster": f"c{n % 7}", "state": "pending", "sends": 1}
            for n in range(2 * KEYS_PER_LOOKUP)]  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(confirmations.insert(), rows)
    wanted = [(f"p{n}", f"c{n % 7}") for n in range(0, 2 * count, 2)]
    wanted[-1] = ("p1", "c0")  # not stored: p1 is on c1
    clause, values = keys_in((c.play_id, c.cluster), wanted)
    query = select(c.play_id, c.cluster).where(clause)
    with store.engine.connect() as conn:
        found = {(r[0], r[1]) for r in conn.execute(query, values)}
        compiled = query.compile(conn)
        statement = str(compiled)
        parameters = tuple(values[name] for name in compiled.positiontup or ())
    assert found == set(wanted[:-1])
    assert _scans(store, statement, parameters) == []
    # Padded to a power of two: a few statement shapes, not one per batch size.
    assert statement.count(" OR ") + 1 == 1 << (count - 1).bit_length()


def test_keys_in_refuses_more_than_one_lookup_holds() -> None:
    c = confirmations.c
    with pytest.raises(ValueError, match="1 to 256 keys"):
        keys_in((c.play_id, c.cluster), [("p", "c")] * (KEYS_PER_LOOKUP + 1))
    with pytest.raises(ValueError, match="not 0"):
        keys_in((c.play_id, c.cluster), [])


def test_the_plan_check_sees_a_scan_when_there_is_one(store: Store) -> None:
    """The check above can fail: the row-value IN the store used before scans."""
    statement = ("SELECT id FROM events WHERE (cluster, key_id, outbox, seq) IN "
                 "(VALUES (?, ?, ?, ?), (?, ?, ?, ?))")  # fmt: skip
    assert _scans(store, statement, ("c1", "k1", "ob", 1, "c2", "k1", "ob", 2)) != []
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM events")).scalar_one() == 0
