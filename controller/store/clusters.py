"""The clusters and their latest heartbeats: the fleet as the controller last heard it.

A cluster's row (online, last seen, what it plays, last result) is derived from its
status events as they arrive (`summarise`, called by the events repository in the same
transaction as the events it stores).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from controller.store.engine import Database, aware_or_none, utc
from controller.store.schema import clusters, heartbeats, state_changes
from protocol.messages import Event

FINAL_KINDS = frozenset({"finished", "interrupted", "missed", "failed", "expired"})


@dataclass(frozen=True)
class ClusterRow:
    id: str
    name: str
    commune: str
    commune_name: str
    state: str
    last_seen: datetime | None
    playing: str | None
    last_result: str | None
    last_result_bulletin: str | None
    last_result_reason: str | None
    last_rejection: str | None
    last_rejection_at: datetime | None
    last_result_at: datetime | None = None


@dataclass(frozen=True)
class ClusterHealth:
    """Availability since when, and the latest heartbeat, of one cluster."""

    state: str
    state_at: datetime | None  # when it last changed (came online, went offline)
    heartbeat_at: datetime | None  # when the controller received the latest heartbeat
    heartbeat: dict[str, Any] | None
    state_reason: str | None = None  # why offline, when the controller decided it (silence)


class ClusterRepository:
    """Tables clusters and heartbeats."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._engine = db.engine

    def sync_fleet(self, rows: Iterable[tuple[str, str, str, str]]) -> None:
        """Make the clusters table match the fleet: (id, name, commune id, commune name)."""
        wanted = {r[0]: r for r in rows}
        with self._db.write, self._engine.begin() as conn:
            known = {r[0] for r in conn.execute(select(clusters.c.id))}
            for cid, (_, name, commune, commune_name) in wanted.items():
                values = {
                    "name": name, "commune": commune, "commune_name": commune_name,
                    "in_fleet": True,
                }
                if cid in known:
                    conn.execute(update(clusters).where(clusters.c.id == cid).values(**values))
                else:
                    conn.execute(insert(clusters).values(id=cid, state="unknown", **values))
            gone = known - wanted.keys()
            if gone:
                conn.execute(
                    update(clusters).where(clusters.c.id.in_(gone)).values(in_fleet=False)
                )

    def set_state(
        self, cluster: str, state: str, at: datetime, since: datetime | None = None,
        reason: str | None = None,
    ) -> tuple[str | None, datetime | None]:
        """Record a cluster's availability; return the previous (state, since when).

        state_at moves only when the state changes (a retained copy heard again after a
        controller restart changes nothing), or to `since` when that is later: the
        agent's own connect time, so a reconnection the controller did not see between
        two "online" messages still shows. reason: why the controller marked it offline
        (silence); kept until the state changes."""
        with self._db.write, self._engine.begin() as conn:
            _ensure_cluster(conn, cluster)
            previous = conn.execute(
                select(clusters.c.state, clusters.c.state_at).where(clusters.c.id == cluster)
            ).first()
            before, before_at = (
                (previous[0], aware_or_none(previous[1])) if previous else (None, None)
            )
            values: dict[str, Any] = {"state": state}
            if state != before or before_at is None:
                values["state_at"] = utc(since or at)
                values["state_reason"] = reason
                if state != before:
                    conn.execute(insert(state_changes).values(
                        cluster=cluster, state=state, at=utc(since or at),
                        recorded_at=utc(at), reason=reason,
                    ))
            elif since is not None and since > before_at:
                values["state_at"] = utc(since)
            if state == "online":
                values["last_seen"] = utc(at)
            else:
                values["playing_play_id"] = None
                values["playing_bulletin"] = None
            conn.execute(update(clusters).where(clusters.c.id == cluster).values(**values))
        return before, before_at

    def set_heartbeats(
        self, beats: Sequence[tuple[str, datetime, str]], received_at: datetime
    ) -> None:
        """Keep the latest heartbeat of each cluster: (cluster, its `at`, JSON body)."""
        if not beats:
            return
        with self._db.write, self._engine.begin() as conn:
            for cluster, at, body in beats:
                _ensure_cluster(conn, cluster)
                values = {"at": utc(at), "received_at": utc(received_at), "body": body}
                known = conn.execute(
                    select(heartbeats.c.cluster).where(heartbeats.c.cluster == cluster)
                ).first()
                if known:
                    conn.execute(
                        update(heartbeats).where(heartbeats.c.cluster == cluster).values(**values)
                    )
                else:
                    conn.execute(insert(heartbeats).values(cluster=cluster, **values))
                conn.execute(
                    update(clusters).where(clusters.c.id == cluster)
                    .values(last_seen=utc(received_at))
                )

    def health(self) -> dict[str, ClusterHealth]:
        """Every cluster's availability (since when) and latest heartbeat."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(
                    clusters.c.id, clusters.c.state, clusters.c.state_at,
                    heartbeats.c.received_at, heartbeats.c.body, clusters.c.state_reason,
                ).select_from(
                    clusters.outerjoin(heartbeats, heartbeats.c.cluster == clusters.c.id)
                )
            ).all()
        return {
            cid: ClusterHealth(
                state=state,
                state_at=aware_or_none(state_at),
                heartbeat_at=aware_or_none(received),
                heartbeat=json.loads(body) if body else None,
                state_reason=reason,
            )
            for cid, state, state_at, received, body, reason in rows
        }

    def fleet_rows(self) -> list[ClusterRow]:
        """The clusters of the fleet (not those only heard from), by commune."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(clusters).where(clusters.c.in_fleet.is_(True)).order_by(
                    clusters.c.commune_name, clusters.c.id
                )
            ).mappings()
            return [
                ClusterRow(
                    id=r["id"], name=r["name"], commune=r["commune"],
                    commune_name=r["commune_name"], state=r["state"],
                    last_seen=aware_or_none(r["last_seen"]),
                    playing=r["playing_bulletin"], last_result=r["last_result"],
                    last_result_bulletin=r["last_result_bulletin"],
                    last_result_reason=r["last_result_reason"],
                    last_rejection=r["last_rejection"],
                    last_rejection_at=aware_or_none(r["last_rejection_at"]),
                    last_result_at=aware_or_none(r["last_result_at"]),
                )
                for r in rows
            ]


def summarise(conn: Connection, fresh: Sequence[Event], received_at: datetime) -> None:
    """Each cluster's row from its new events: what it plays now, its last result.
    A few statements per batch whatever its size (a thousand clusters report at once
    after an announcement), not three per cluster."""
    by_cluster: dict[str, list[Event]] = {}
    for ev in fresh:
        by_cluster.setdefault(ev.cluster, []).append(ev)
    ids = list(by_cluster)
    playing: dict[str, str | None] = {}
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        rows = conn.execute(
            select(clusters.c.id, clusters.c.playing_play_id).where(clusters.c.id.in_(part))
        )
        playing.update((row[0], row[1]) for row in rows)
    unknown = [cid for cid in ids if cid not in playing]
    if unknown:  # events from clusters not in the fleet: kept, and shown as such
        conn.execute(insert(clusters), [_unknown_cluster(cid) for cid in unknown])
    changes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for cluster, evs in by_cluster.items():
        current = playing.get(cluster)
        values: dict[str, Any] = {"last_seen": utc(received_at)}
        for ev in sorted(evs, key=lambda e: (e.at, e.seq)):
            if ev.kind == "playing":
                current = ev.play_id
                values["playing_play_id"] = ev.play_id
                values["playing_bulletin"] = _on_air(ev)
            elif ev.kind in FINAL_KINDS:
                if ev.play_id == current:
                    current = None
                    values["playing_play_id"] = None
                    values["playing_bulletin"] = None
                values["last_result"] = ev.kind
                values["last_result_bulletin"] = ev.bulletin
                values["last_result_reason"] = ev.reason
                values["last_result_at"] = utc(ev.at)
            elif ev.kind == "rejected":
                values["last_rejection"] = ev.reason
                values["last_rejection_at"] = utc(ev.at)
        columns = tuple(sorted(values))
        changes.setdefault(columns, []).append(
            {"b_id": cluster, **{f"b_{col}": value for col, value in values.items()}}
        )
    for columns, params in changes.items():  # one executemany per set of columns
        statement = (
            update(clusters)
            .where(clusters.c.id == bindparam("b_id"))
            .values({col: bindparam(f"b_{col}") for col in columns})
        )
        conn.execute(statement, params)


#: What a live session's `playing` event says it is (its reason), as `fleet` shows it.
LIVE_SHOWN = {"rebroadcast": "relaying", "microphone": "live"}


def _on_air(ev: Event) -> str | None:
    """What the cluster plays, as `fleet` shows it: the bulletin, or for a live session
    "relaying: ..." (a rebroadcast) or "live: ..." (a microphone)."""
    shown = LIVE_SHOWN.get(ev.reason or "") if ev.bulletin else None
    return f"{shown}: {ev.bulletin}"[:200] if shown else ev.bulletin


def _ensure_cluster(conn: Connection, cluster: str) -> None:
    exists = conn.execute(select(clusters.c.id).where(clusters.c.id == cluster)).first()
    if not exists:
        conn.execute(insert(clusters).values(**_unknown_cluster(cluster)))


def _unknown_cluster(cluster: str) -> dict[str, Any]:
    """The row of a cluster heard from that the fleet does not name (kept, shown as such)."""
    return {
        "id": cluster, "name": cluster, "commune": "?", "commune_name": "(not in fleet)",
        "state": "unknown", "in_fleet": False,
    }
