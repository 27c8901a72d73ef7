"""The status events the clusters report (received, delivered, playing, finished, ...).

Events are unique per (cluster, outbox, seq): an agent resends until acknowledged, so
duplicates are expected and dropped here. Storing new events also updates their
clusters' rows (controller.store.clusters.summarise), in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, tuple_

from controller.store.clusters import FINAL_KINDS, summarise
from controller.store.engine import Database, utc
from controller.store.schema import events
from protocol.messages import Event


class EventRepository:
    """Table events."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._engine = db.engine

    def add(self, batch: Sequence[Event], received_at: datetime) -> list[Event]:
        """Store a batch of events; return those that were new (duplicates are dropped)."""
        if not batch:
            return []
        unique: dict[tuple[str, str, int], Event] = {}
        for ev in batch:
            unique.setdefault((ev.cluster, ev.outbox, ev.seq), ev)
        with self._db.write, self._engine.begin() as conn:
            seen: set[tuple[str, str, int]] = set()
            keys = list(unique)
            for start in range(0, len(keys), 300):
                part = keys[start : start + 300]
                seen.update(
                    (r[0], r[1], r[2])
                    for r in conn.execute(
                        select(events.c.cluster, events.c.outbox, events.c.seq).where(
                            tuple_(events.c.cluster, events.c.outbox, events.c.seq).in_(part)
                        )
                    )
                )
            fresh = [ev for key, ev in unique.items() if key not in seen]
            if fresh:
                conn.execute(
                    insert(events),
                    [
                        {
                            "cluster": ev.cluster, "outbox": ev.outbox, "seq": ev.seq,
                            "at": utc(ev.at), "received_at": utc(received_at), "kind": ev.kind,
                            "ref": ev.ref, "play_id": ev.play_id, "bulletin": ev.bulletin,
                            "level": ev.level, "reason": ev.reason,
                        }
                        for ev in fresh
                    ],
                )
                summarise(conn, fresh, received_at)
        return fresh

    def of_play(self, play_id: str) -> list[dict[str, Any]]:
        """Every event about one play, in the order they were stored."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(events).where(events.c.play_id == play_id).order_by(events.c.id)
            ).mappings()
            return [dict(r) for r in rows]

    def play_states(self, play_id: str) -> dict[str, str]:
        """The latest state of a play on each cluster that reported on it."""
        state: dict[str, str] = {}
        order = {"received": 0, "delivered": 1, "playing": 2}
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(events.c.cluster, events.c.kind)
                .where(events.c.play_id == play_id)
                .order_by(events.c.at, events.c.seq)
            )
            for cluster, kind in rows:
                prev = state.get(cluster)
                if prev in FINAL_KINDS and kind not in FINAL_KINDS:
                    continue
                if prev in order and kind in order and order[kind] < order[prev]:
                    continue
                state[cluster] = kind
        return state

    def count(self, kind: str | None = None) -> int:
        """How many events are stored (of one kind, if given)."""
        with self._engine.connect() as conn:
            q = select(func.count()).select_from(events)
            if kind:
                q = q.where(events.c.kind == kind)
            return int(conn.execute(q).scalar() or 0)
