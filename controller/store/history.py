"""What the store holds about a range of time, for proof-of-play reports (controller.report).

Read only, and only what was stored as it happened: the plays sent (`plays`), every
event the clusters reported on them (`events`), which cluster never confirmed a play
(`confirmations`), occurrences the controller recorded as missed without sending them
(`dispatches`), and the clusters' changes of availability (`state_changes`). Nothing
here counts or summarises: the report does, from these rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, func, select

from controller.store.engine import Database, aware, utc
from controller.store.schema import (
    clusters,
    confirmations,
    dispatches,
    events,
    plays,
    state_changes,
)

# Bound parameters per IN (...) query: well under SQLite's and PostgreSQL's limits.
_BATCH = 500


@dataclass(frozen=True)
class StoredPlay:
    play_id: str
    programme: str | None  # None: an urgent announcement
    bulletin: str
    level: str
    start_at: datetime
    latest_start: datetime
    duration_s: float
    clusters: tuple[str, ...]
    urgent: bool


@dataclass(frozen=True)
class StoredEvent:
    play_id: str
    cluster: str
    kind: str
    at: datetime  # the cluster's clock
    reason: str | None
    id: int  # the order it was stored in, for events of the same instant


@dataclass(frozen=True)
class StoredConfirmation:
    play_id: str
    cluster: str
    state: str  # pending | confirmed | missed | withdrawn
    reason: str | None


@dataclass(frozen=True)
class NotSent:
    """An occurrence the controller recorded as missed without sending it."""

    programme: str
    occurrence: datetime
    reason: str


@dataclass(frozen=True)
class StoredCluster:
    id: str
    name: str
    commune: str
    commune_name: str
    in_fleet: bool


@dataclass(frozen=True)
class StateChange:
    cluster: str
    state: str
    at: datetime


@dataclass(frozen=True)
class LiveAired:
    """The end of a live session (a microphone or a rebroadcast) on one cluster: the
    seconds of audio it aired there, as the cluster reported them."""

    session: str
    cluster: str
    bulletin: str
    level: str
    at: datetime  # the cluster's clock, when it ended
    seconds: float


#: The events that end a live session on a cluster, with the seconds it aired.
LIVE_ENDS = ("finished", "interrupted", "missed")


@dataclass
class History:
    """The rows of one range [start, end)."""

    start: datetime
    end: datetime
    plays: list[StoredPlay]
    events: list[StoredEvent]
    confirmations: list[StoredConfirmation]
    not_sent: list[NotSent]
    clusters: list[StoredCluster]
    state_changes: list[StateChange]  # in the range, and the last before it per cluster
    live: list[LiveAired] = field(default_factory=list)  # sessions that ended in the range


@dataclass(frozen=True)
class ClusterEvent:
    """One event a cluster reported, for its page."""

    at: datetime  # the cluster's clock
    received_at: datetime
    kind: str
    play_id: str | None
    bulletin: str | None
    level: str | None
    reason: str | None


class HistoryRepository:
    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def first_play(self) -> datetime | None:
        """When the earliest stored play starts (the whole history's beginning)."""
        with self._engine.connect() as conn:
            first = conn.execute(select(func.min(plays.c.start_at))).scalar()
            missed = conn.execute(select(func.min(dispatches.c.occurrence))).scalar()
        found = [aware(t) for t in (first, missed) if t is not None]
        return min(found) if found else None

    def last_play(self) -> datetime | None:
        with self._engine.connect() as conn:
            last = conn.execute(select(func.max(plays.c.start_at))).scalar()
            missed = conn.execute(select(func.max(dispatches.c.occurrence))).scalar()
        found = [aware(t) for t in (last, missed) if t is not None]
        return max(found) if found else None

    def recent_events(self, cluster: str, limit: int = 50) -> list[ClusterEvent]:
        """The cluster's latest events, newest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(events.c.at, events.c.received_at, events.c.kind, events.c.play_id,
                       events.c.bulletin, events.c.level, events.c.reason)
                .where(events.c.cluster == cluster)
                .order_by(events.c.at.desc(), events.c.id.desc())
                .limit(limit)
            ).all()
        return [
            ClusterEvent(aware(r.at), aware(r.received_at), r.kind, r.play_id, r.bulletin,
                         r.level, r.reason)
            for r in rows
        ]

    def between(self, start: datetime, end: datetime) -> History:
        """Everything stored about the plays that start in [start, end)."""
        with self._engine.connect() as conn:
            found = [
                StoredPlay(
                    r.play_id, r.programme, r.bulletin, r.level, aware(r.start_at),
                    aware(r.latest_start), float(r.duration_s),
                    tuple(json.loads(r.clusters)), bool(r.urgent),
                )
                for r in conn.execute(
                    select(plays).where(plays.c.start_at >= utc(start), plays.c.start_at < utc(end))
                    .order_by(plays.c.start_at, plays.c.play_id)
                )
            ]
            ids = [p.play_id for p in found]
            stored_events: list[StoredEvent] = []
            stored_confirmations: list[StoredConfirmation] = []
            for batch in _batches(ids):
                stored_events.extend(
                    StoredEvent(r.play_id, r.cluster, r.kind, aware(r.at), r.reason, r.id)
                    for r in conn.execute(
                        select(events.c.id, events.c.play_id, events.c.cluster, events.c.kind,
                               events.c.at, events.c.reason)
                        .where(events.c.play_id.in_(batch))
                    )
                )
                stored_confirmations.extend(
                    StoredConfirmation(r.play_id, r.cluster, r.state, r.reason)
                    for r in conn.execute(
                        select(confirmations.c.play_id, confirmations.c.cluster,
                               confirmations.c.state, confirmations.c.reason)
                        .where(confirmations.c.play_id.in_(batch))
                    )
                )
            not_sent = [
                NotSent(r.programme, aware(r.occurrence), r.reason or "")
                for r in conn.execute(
                    select(dispatches).where(
                        dispatches.c.outcome == "missed",
                        dispatches.c.occurrence >= utc(start),
                        dispatches.c.occurrence < utc(end),
                    ).order_by(dispatches.c.occurrence, dispatches.c.programme)
                )
            ]
            known = [
                StoredCluster(r.id, r.name, r.commune, r.commune_name, bool(r.in_fleet))
                for r in conn.execute(select(clusters).order_by(clusters.c.id))
            ]
            before = (
                select(state_changes.c.cluster, func.max(state_changes.c.at).label("at"))
                .where(state_changes.c.at < utc(start))
                .group_by(state_changes.c.cluster)
                .subquery()
            )
            changes = [
                StateChange(r.cluster, r.state, aware(r.at))
                for r in conn.execute(
                    select(state_changes.c.cluster, state_changes.c.state, state_changes.c.at)
                    .join(before, and_(state_changes.c.cluster == before.c.cluster,
                                       state_changes.c.at == before.c.at))
                )
            ]
            changes.extend(
                StateChange(r.cluster, r.state, aware(r.at))
                for r in conn.execute(
                    select(state_changes.c.cluster, state_changes.c.state, state_changes.c.at)
                    .where(state_changes.c.at >= utc(start), state_changes.c.at < utc(end))
                    .order_by(state_changes.c.at, state_changes.c.id)
                )
            )
            live = [
                LiveAired(r.play_id or "", r.cluster, r.bulletin or "", r.level or "normal",
                          aware(r.at), float(r.seconds))
                for r in conn.execute(
                    select(events.c.play_id, events.c.cluster, events.c.bulletin,
                           events.c.level, events.c.at, events.c.seconds)
                    .where(events.c.seconds.is_not(None), events.c.kind.in_(LIVE_ENDS),
                           events.c.at >= utc(start), events.c.at < utc(end))
                    .order_by(events.c.at, events.c.id)
                )
            ]  # fmt: skip
        stored_events.sort(key=lambda e: (e.at, e.id))
        return History(start, end, found, stored_events, stored_confirmations, not_sent, known,
                       changes, live)


def _batches(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i:i + _BATCH] for i in range(0, len(items), _BATCH)]
