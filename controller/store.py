"""The controller's store: clusters, status events, plays, dispatches, approvals,
web sessions.

SQLAlchemy Core over SQLite by default (one file, no server) or PostgreSQL by URL.
Events are unique per (cluster, outbox, seq): an agent resends until acknowledged, so
duplicates are expected and dropped here. The cluster summary (online, last seen, what
it plays, last result) is derived from the events as they arrive.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection

from protocol.messages import Event

metadata = MetaData()

clusters = Table(
    "clusters",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("commune", String(64), nullable=False),
    Column("commune_name", String(200), nullable=False),
    Column("state", String(16), nullable=False, default="unknown"),
    Column("state_at", DateTime(timezone=True)),
    Column("state_reason", Text),  # why offline, when the controller decided it
    Column("last_seen", DateTime(timezone=True)),
    Column("playing_play_id", String(128)),
    Column("playing_bulletin", String(200)),
    Column("last_result", String(32)),
    Column("last_result_bulletin", String(200)),
    Column("last_result_reason", Text),
    Column("last_result_at", DateTime(timezone=True)),
    Column("last_rejection", Text),
    Column("last_rejection_at", DateTime(timezone=True)),
    Column("in_fleet", Boolean, nullable=False, default=True),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cluster", String(64), nullable=False, index=True),
    Column("outbox", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("ref", String(64)),
    Column("play_id", String(128), index=True),
    Column("bulletin", String(200)),
    Column("level", String(16)),
    Column("reason", Text),
    UniqueConstraint("cluster", "outbox", "seq", name="uq_event_origin"),
)

plays = Table(
    "plays",
    metadata,
    Column("play_id", String(128), primary_key=True),
    Column("programme", String(128)),
    Column("bulletin", String(200), nullable=False),
    Column("level", String(16), nullable=False),
    Column("start_at", DateTime(timezone=True), nullable=False),
    Column("latest_start", DateTime(timezone=True), nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("items", Text, nullable=False),  # JSON list of sha256
    Column("clusters", Text, nullable=False),  # JSON list of cluster ids
    Column("urgent", Boolean, nullable=False, default=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Column("body", Text),  # the PlayBody JSON, to send again to clusters that missed it
)

# One row per scheduled occurrence the controller has dealt with: sent, or recorded
# as missed (and why). This is what stops a restart from sending a play twice.
dispatches = Table(
    "dispatches",
    metadata,
    Column("programme", String(128), primary_key=True),
    Column("occurrence", DateTime(timezone=True), primary_key=True),
    Column("outcome", String(16), nullable=False),  # sent | missed
    Column("reason", Text),
    Column("at", DateTime(timezone=True), nullable=False),
)

# Approvals of programmes that need one (requires_approval): who approved which content.
# `content` is the JSON list of the programme's bulletin content hashes at the time
# (controller.approval): a changed bulletin no longer matches, and needs approval again.
approvals = Table(
    "approvals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("programme", String(128), nullable=False, index=True),
    Column("content", Text, nullable=False),
    Column("approved_by", String(200), nullable=False),
    Column("approved_at", DateTime(timezone=True), nullable=False),
)

# The outcome of the last (re)load of the playlists and the fleet by the running
# controller: one row. A refused edit shows here (and in `loa-controller fleet`).
config_status = Table(
    "config_status",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("status", String(16), nullable=False),  # ok | error
    Column("problems", Text, nullable=False),  # file:line:col lines (warnings when ok)
    Column("at", DateTime(timezone=True), nullable=False),
)

# Named instants the controller keeps across restarts (the scheduler's "dealt with
# everything whose latest start is before this").
marks = Table(
    "marks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
)

# The latest heartbeat of each cluster (protocol.messages.Heartbeat as JSON: uptime, disk,
# temperature, relay, clock offset, what plays), replaced by every new one.
heartbeats = Table(
    "heartbeats",
    metadata,
    Column("cluster", String(64), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),  # the agent's clock
    Column("received_at", DateTime(timezone=True), nullable=False),  # the controller's
    Column("body", Text, nullable=False),
)

# Signed-in sessions of the web app and the API (controller.web.security.StoredSessions),
# so that a restart signs nobody out. A row is found by the SHA-256 of the session id: the
# id itself (the cookie, the Bearer token) is never stored. `fingerprint` is the SHA-256 of
# the user's password hash at sign-in (a new password ends the session); `expires` is
# `last_seen` plus the idle time, moved on by every use.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_sha256", String(64), primary_key=True),
    Column("user_name", String(64), nullable=False, index=True),
    Column("csrf", String(64), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("expires", DateTime(timezone=True), nullable=False, index=True),
)

FINAL_KINDS = frozenset({"finished", "interrupted", "missed", "failed"})


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


@dataclass(frozen=True)
class Approval:
    programme: str
    content: list[str]
    approved_by: str
    approved_at: datetime


@dataclass(frozen=True)
class ClusterHealth:
    """Availability since when, and the latest heartbeat, of one cluster."""

    state: str
    state_at: datetime | None  # when it last changed (came online, went offline)
    heartbeat_at: datetime | None  # when the controller received the latest heartbeat
    heartbeat: dict[str, Any] | None
    state_reason: str | None = None  # why offline, when the controller decided it (silence)


@dataclass(frozen=True)
class WebSession:
    """One row of web_sessions (what a session is, less its id)."""

    user: str
    csrf: str
    fingerprint: str
    created: datetime
    last_seen: datetime
    expires: datetime


@dataclass(frozen=True)
class ConfigStatus:
    status: str  # ok | error
    problems: str
    at: datetime


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def utc(value: datetime) -> datetime:
    """Stored datetimes are UTC (SQLite keeps no offset)."""
    return value.astimezone(UTC)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def add_missing_columns(engine: Engine, added: dict[str, dict[str, str]]) -> None:
    """Give tables of an existing database the columns added since it was created
    (table -> column -> SQL type; nullable, so existing rows stay valid)."""
    names = inspect(engine)
    with engine.begin() as conn:
        for table, columns in added.items():
            have = {c["name"] for c in names.get_columns(table)}
            for column, kind in columns.items():
                if column not in have:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))


class Store:
    """All controller persistence. Thread-safe; writes are serialised by one lock."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine: Engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)
        add_missing_columns(self.engine, {"clusters": {"state_reason": "TEXT"}})
        self._write = threading.Lock()

    def close(self) -> None:
        self.engine.dispose()

    # --- clusters -----------------------------------------------------------------------

    def sync_fleet(self, rows: Iterable[tuple[str, str, str, str]]) -> None:
        """Make the clusters table match the fleet: (id, name, commune id, commune name)."""
        wanted = {r[0]: r for r in rows}
        with self._write, self.engine.begin() as conn:
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
        with self._write, self.engine.begin() as conn:
            self._ensure_cluster(conn, cluster)
            previous = conn.execute(
                select(clusters.c.state, clusters.c.state_at).where(clusters.c.id == cluster)
            ).first()
            before, before_at = (previous[0], _aware(previous[1])) if previous else (None, None)
            values: dict[str, Any] = {"state": state}
            if state != before or before_at is None:
                values["state_at"] = utc(since or at)
                values["state_reason"] = reason
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
        with self._write, self.engine.begin() as conn:
            for cluster, at, body in beats:
                self._ensure_cluster(conn, cluster)
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

    def cluster_health(self) -> dict[str, ClusterHealth]:
        """Every cluster's availability (since when) and latest heartbeat."""
        with self.engine.connect() as conn:
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
                state_at=_aware(state_at),
                heartbeat_at=_aware(received),
                heartbeat=json.loads(body) if body else None,
                state_reason=reason,
            )
            for cid, state, state_at, received, body, reason in rows
        }

    def fleet_rows(self) -> list[ClusterRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(clusters).where(clusters.c.in_fleet.is_(True)).order_by(
                    clusters.c.commune_name, clusters.c.id
                )
            ).mappings()
            return [
                ClusterRow(
                    id=r["id"], name=r["name"], commune=r["commune"],
                    commune_name=r["commune_name"], state=r["state"],
                    last_seen=_aware(r["last_seen"]),
                    playing=r["playing_bulletin"], last_result=r["last_result"],
                    last_result_bulletin=r["last_result_bulletin"],
                    last_result_reason=r["last_result_reason"],
                    last_rejection=r["last_rejection"],
                    last_rejection_at=_aware(r["last_rejection_at"]),
                )
                for r in rows
            ]

    # --- events -------------------------------------------------------------------------

    def add_events(self, batch: Sequence[Event], received_at: datetime) -> list[Event]:
        """Store a batch of events; return those that were new (duplicates are dropped)."""
        if not batch:
            return []
        unique: dict[tuple[str, str, int], Event] = {}
        for ev in batch:
            unique.setdefault((ev.cluster, ev.outbox, ev.seq), ev)
        with self._write, self.engine.begin() as conn:
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
                self._summarise(conn, fresh, received_at)
        return fresh

    def _ensure_cluster(self, conn: Connection, cluster: str) -> None:
        exists = conn.execute(select(clusters.c.id).where(clusters.c.id == cluster)).first()
        if not exists:
            conn.execute(insert(clusters).values(**_unknown_cluster(cluster)))

    def _summarise(self, conn: Connection, fresh: list[Event], received_at: datetime) -> None:
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
                    values["playing_bulletin"] = ev.bulletin
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

    def events_for_play(self, play_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(events).where(events.c.play_id == play_id).order_by(events.c.id)
            ).mappings()
            return [dict(r) for r in rows]

    def play_states(self, play_id: str) -> dict[str, str]:
        """The latest state of a play on each cluster that reported on it."""
        state: dict[str, str] = {}
        order = {"received": 0, "delivered": 1, "playing": 2}
        with self.engine.connect() as conn:
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

    def count_events(self, kind: str | None = None) -> int:
        with self.engine.connect() as conn:
            q = select(func.count()).select_from(events)
            if kind:
                q = q.where(events.c.kind == kind)
            return int(conn.execute(q).scalar() or 0)

    # --- plays and dispatches -----------------------------------------------------------

    def record_play(
        self,
        *,
        play_id: str,
        programme: str | None,
        bulletin: str,
        level: str,
        start_at: datetime,
        latest_start: datetime,
        duration_s: float,
        items: list[str],
        cluster_ids: list[str],
        urgent: bool,
        sent_at: datetime,
        body: str | None = None,
    ) -> None:
        with self._write, self.engine.begin() as conn:
            exists = conn.execute(select(plays.c.play_id).where(plays.c.play_id == play_id))
            if exists.first():
                return
            conn.execute(
                insert(plays).values(
                    play_id=play_id, programme=programme, bulletin=bulletin, level=level,
                    start_at=utc(start_at), latest_start=utc(latest_start), duration_s=duration_s,
                    items=json.dumps(items), clusters=json.dumps(cluster_ids), urgent=urgent,
                    sent_at=utc(sent_at), body=body,
                )
            )

    def unheard_plays(self, cluster: str, now: datetime) -> list[str]:
        """PlayBody JSON of plays still to start that target cluster and that it never
        reported on (it was offline, or new, when they were sent)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(plays.c.play_id, plays.c.clusters, plays.c.body).where(
                    plays.c.latest_start > utc(now), plays.c.body.is_not(None)
                ).order_by(plays.c.start_at)
            ).all()
            wanted = [(pid, body) for pid, targets, body in rows if cluster in json.loads(targets)]
            if not wanted:
                return []
            heard = {
                r[0] for r in conn.execute(
                    select(events.c.play_id).where(
                        events.c.cluster == cluster,
                        events.c.play_id.in_([pid for pid, _ in wanted]),
                    )
                )
            }
        return [body for pid, body in wanted if pid not in heard]

    def play_clusters(self, play_id: str) -> list[str]:
        with self.engine.connect() as conn:
            raw = conn.execute(select(plays.c.clusters).where(plays.c.play_id == play_id)).scalar()
        return list(json.loads(raw)) if raw else []

    def claim_dispatch(
        self, programme: str, occurrence: datetime, outcome: str, reason: str | None,
        at: datetime,
    ) -> bool:
        """Record what became of an occurrence; False if it was already dealt with."""
        with self._write, self.engine.begin() as conn:
            found = conn.execute(
                select(dispatches.c.outcome).where(
                    dispatches.c.programme == programme,
                    dispatches.c.occurrence == utc(occurrence),
                )
            ).first()
            if found:
                return False
            conn.execute(
                insert(dispatches).values(
                    programme=programme, occurrence=utc(occurrence), outcome=outcome,
                    reason=reason, at=utc(at),
                )
            )
            return True

    def dispatched(self, programme: str, occurrence: datetime) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(dispatches.c.outcome).where(
                    dispatches.c.programme == programme,
                    dispatches.c.occurrence == utc(occurrence),
                )
            ).scalar()

    def dispatch_log(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(dispatches).order_by(dispatches.c.occurrence)).mappings()
            return [dict(r) for r in rows]

    def dispatches_of(self, programme: str) -> dict[datetime, tuple[str, str | None]]:
        """Occurrence (UTC) -> (outcome, reason) for one programme."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(dispatches.c.occurrence, dispatches.c.outcome, dispatches.c.reason)
                .where(dispatches.c.programme == programme)
            )
            return {aware(r[0]): (r[1], r[2]) for r in rows}

    # --- approvals ----------------------------------------------------------------------

    def approve(self, programme: str, content: Sequence[str], by: str, at: datetime) -> None:
        """Record that `by` approved this content of the programme."""
        with self._write, self.engine.begin() as conn:
            conn.execute(
                insert(approvals).values(
                    programme=programme, content=json.dumps(list(content)), approved_by=by,
                    approved_at=utc(at),
                )
            )

    def approval(self, programme: str, content: Sequence[str]) -> Approval | None:
        """The latest approval of exactly this content of the programme, or None."""
        wanted = json.dumps(list(content))
        with self.engine.connect() as conn:
            row = conn.execute(
                select(approvals)
                .where(approvals.c.programme == programme, approvals.c.content == wanted)
                .order_by(approvals.c.id.desc())
                .limit(1)
            ).mappings().first()
        return _approval(row) if row else None

    def last_approval(self, programme: str) -> Approval | None:
        """The latest approval of the programme, whatever content it was for."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(approvals)
                .where(approvals.c.programme == programme)
                .order_by(approvals.c.id.desc())
                .limit(1)
            ).mappings().first()
        return _approval(row) if row else None

    # --- the running controller's view of its files ----------------------------------------

    def set_config_status(self, status: str, problems: str, at: datetime) -> None:
        with self._write, self.engine.begin() as conn:
            values = {"status": status, "problems": problems, "at": utc(at)}
            if conn.execute(select(config_status.c.id).where(config_status.c.id == 1)).first():
                conn.execute(update(config_status).where(config_status.c.id == 1).values(**values))
            else:
                conn.execute(insert(config_status).values(id=1, **values))

    def config_status(self) -> ConfigStatus | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(config_status).where(config_status.c.id == 1)
            ).mappings().first()
        if row is None:
            return None
        return ConfigStatus(row["status"], row["problems"], aware(row["at"]))

    def mark(self, name: str) -> datetime | None:
        with self.engine.connect() as conn:
            at = conn.execute(select(marks.c.at).where(marks.c.name == name)).scalar()
        return aware(at) if at is not None else None

    def set_mark(self, name: str, at: datetime) -> None:
        with self._write, self.engine.begin() as conn:
            if conn.execute(select(marks.c.name).where(marks.c.name == name)).first():
                conn.execute(update(marks).where(marks.c.name == name).values(at=utc(at)))
            else:
                conn.execute(insert(marks).values(name=name, at=utc(at)))

    # --- web sessions (controller.web.security.StoredSessions) ------------------------------

    def add_web_session(self, id_sha256: str, session: WebSession) -> None:
        """Keep a new session, and remove those expired by its creation."""
        with self._write, self.engine.begin() as conn:
            conn.execute(delete(web_sessions).where(web_sessions.c.expires < utc(session.created)))
            conn.execute(insert(web_sessions).values(
                id_sha256=id_sha256, user_name=session.user, csrf=session.csrf,
                fingerprint=session.fingerprint, created=utc(session.created),
                last_seen=utc(session.last_seen), expires=utc(session.expires),
            ))

    def use_web_session(
        self, id_sha256: str, now: datetime, expires: datetime
    ) -> WebSession | None:
        """The session, if it has not expired by `now` (`expires` >= now), with its last use
        moved to `now` and its expiry to `expires`; one statement where the database has
        UPDATE ... RETURNING. An expired one is deleted."""
        now, expires = utc(now), utc(expires)
        cols = web_sessions.c
        found = (cols.id_sha256 == id_sha256) & (cols.expires >= now)
        picked = (cols.user_name, cols.csrf, cols.fingerprint, cols.created)
        moved = {"last_seen": now, "expires": expires}
        with self._write, self.engine.begin() as conn:
            if self.engine.dialect.update_returning:
                row = conn.execute(
                    update(web_sessions).where(found).values(**moved).returning(*picked)
                ).first()
            else:
                row = conn.execute(select(*picked).where(found)).first()
                if row is not None:
                    conn.execute(update(web_sessions).where(found).values(**moved))
            if row is None:
                conn.execute(
                    delete(web_sessions).where(
                        (cols.id_sha256 == id_sha256) & (cols.expires < now)
                    )
                )
                return None
        return WebSession(
            user=row.user_name, csrf=row.csrf, fingerprint=row.fingerprint,
            created=aware(row.created), last_seen=now, expires=expires,
        )

    def drop_web_sessions(
        self, *, id_sha256: str | None = None, user: str | None = None
    ) -> int:
        """Delete the session with that id hash, or every session of that user."""
        if id_sha256 is None and user is None:
            return 0
        query = delete(web_sessions)
        if id_sha256 is not None:
            query = query.where(web_sessions.c.id_sha256 == id_sha256)
        if user is not None:
            query = query.where(web_sessions.c.user_name == user)
        with self._write, self.engine.begin() as conn:
            return int(conn.execute(query).rowcount)

    def purge_web_sessions(self, now: datetime) -> int:
        """Delete the sessions expired by `now`; how many."""
        with self._write, self.engine.begin() as conn:
            query = delete(web_sessions).where(web_sessions.c.expires < utc(now))
            return int(conn.execute(query).rowcount)


def aware(value: datetime) -> datetime:
    """A time read back from the store, in UTC (SQLite gives it back without its zone)."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _approval(row: Any) -> Approval:
    return Approval(
        programme=row["programme"],
        content=list(json.loads(row["content"])),
        approved_by=row["approved_by"],
        approved_at=aware(row["approved_at"]),
    )


def _unknown_cluster(cluster: str) -> dict[str, Any]:
    """The row of a cluster heard from that the fleet does not name (kept, shown as such)."""
    return {
        "id": cluster, "name": cluster, "commune": "?", "commune_name": "(not in fleet)",
        "state": "unknown", "in_fleet": False,
    }
