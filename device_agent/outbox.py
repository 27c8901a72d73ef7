"""The persistent outbox: every status event is kept until the controller acknowledges it.

Proof of play is a legal record, so an event is committed to SQLite (WAL) *before* it is
published, and stays there until an ack command names its sequence number. Unacknowledged
events are published again after every (re)connection, and while connected whenever
their resend delay has passed: `resend_after_s` after the first send, doubling with
each unanswered resend up to `max_resend_s` (a controller that is down for a day must
not cost every cluster its 4G data allowance). The controller drops duplicates by
(outbox, seq).

`outbox_id` is random, made once per database: if the SD card is replaced or the data
directory wiped, the new outbox numbers its events from 1 again under a new id, and the
controller does not mistake them for duplicates of the old ones.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from device_agent.localdb import LocalDatabase
from protocol.clock import Clock
from protocol.messages import Event, EventKind, Level, parse

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL,
    last_sent REAL,  -- unix time of the last send; NULL: never sent
    next_send REAL,  -- unix time it is due again; NULL: never sent
    sends INTEGER NOT NULL DEFAULT 0  -- sends since the last (re)connection
);
CREATE INDEX IF NOT EXISTS events_next_send ON events (next_send);
"""


# Sequence numbers deleted per statement (SQLite's parameter limit is far above this).
ACK_BATCH = 500


class Outbox:
    """Status events of one cluster, numbered, stored, resent until acknowledged."""

    def __init__(
        self,
        database: LocalDatabase | Path,
        cluster_id: str,
        clock: Clock,
        *,
        resend_after_s: float = 10.0,
        max_resend_s: float = 600.0,
    ) -> None:
        """database: the agent's database, or a path to open one of its own (durable)."""
        self._owns_db = isinstance(database, Path)
        self._db = LocalDatabase(database) if isinstance(database, Path) else database
        self.cluster_id = cluster_id
        self.resend_after_s = resend_after_s
        self.max_resend_s = max(max_resend_s, resend_after_s)
        self._clock = clock
        # When the next event is due (epoch seconds; None: nothing waits), known since the
        # last change: the agent asks after every batch of messages, the disk need not.
        self._next_due: float | None = None
        self._next_due_known = False
        self._db.executescript(SCHEMA)
        with self._db.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'outbox_id'").fetchone()
            if row is None:
                self.outbox_id = uuid.uuid4().hex
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('outbox_id', ?)", (self.outbox_id,)
                )
            else:
                self.outbox_id = str(row[0])
            # The last number given (AUTOINCREMENT's: never reused, even once acknowledged);
            # this process alone writes the database, so the next is known without asking.
            last = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            self._last_seq = int(last[0]) if last else 0

    def close(self) -> None:
        """Close the database if this outbox opened it."""
        if self._owns_db:
            self._db.close()

    def add(
        self,
        kind: EventKind,
        *,
        ref: str | None = None,
        play_id: str | None = None,
        bulletin: str | None = None,
        level: Level | None = None,
        reason: str | None = None,
        sending: bool = False,
        seconds: float | None = None,
    ) -> Event:
        """Number and store an event (committed when this returns); publish it afterwards.

        sending: the caller publishes it right after, so it counts as sent now (it goes
        out again after resend_after_s unless acknowledged by then).
        """
        if reason is not None and len(reason) > 500:
            reason = reason[:497] + "..."
        now = self._clock.now()
        sent = now.timestamp() if sending else None
        event = Event(
            cluster=self.cluster_id,
            outbox=self.outbox_id,
            seq=self._last_seq + 1,
            at=now,
            kind=kind,
            ref=ref,
            play_id=play_id,
            bulletin=bulletin,
            level=level,
            reason=reason,
            seconds=round(seconds, 3) if seconds is not None else None,
        )
        self._db.write(
            "INSERT INTO events (seq, payload, last_sent, next_send, sends) VALUES (?, ?, ?, ?, ?)",
            (event.seq, event.to_json(), sent, sent + self.resend_after_s if sent else None,
             1 if sending else 0),
        )  # fmt: skip
        self._last_seq = event.seq
        if self._next_due_known:  # the new one is due at once (unsent) or at its resend
            due = sent + self.resend_after_s if sent is not None else 0.0
            self._next_due = due if self._next_due is None else min(self._next_due, due)
        return event

    def unacked(self) -> list[Event]:
        """Every event not acknowledged yet, oldest first."""
        rows = self._db.query("SELECT payload FROM events ORDER BY seq")
        return [parse(Event, bytes(row[0])) for row in rows]

    def unacked_of(self, play_id: str, kind: EventKind) -> Event | None:
        """The unacknowledged event of this kind about this play, if there is one."""
        needle = json.dumps({"play_id": play_id}, ensure_ascii=False, separators=(",", ":"))
        rows = self._db.query(  # the JSON payload names the play: look at those only
            "SELECT payload FROM events WHERE instr(CAST(payload AS TEXT), ?) > 0 ORDER BY seq",
            (needle[1:-1],),
        )
        for row in rows:
            event = parse(Event, bytes(row[0]))
            if event.play_id == play_id and event.kind == kind:
                return event
        return None

    def due(self) -> list[Event]:
        """Events never sent, or whose resend delay has passed, oldest first."""
        if self._next_due_known and (
            self._next_due is None or self._next_due > self._clock.now().timestamp()
        ):
            return []
        rows = self._db.query(
            "SELECT payload FROM events WHERE next_send IS NULL OR next_send <= ? ORDER BY seq",
            (self._clock.now().timestamp(),),
        )
        return [parse(Event, bytes(row[0])) for row in rows]

    def next_due_at(self) -> datetime | None:
        """When the next unacknowledged event is due to go out (None: nothing waits)."""
        if not self._next_due_known:
            rows = self._db.query("SELECT MIN(COALESCE(next_send, 0)), COUNT(*) FROM events")
            self._next_due = float(rows[0][0]) if rows and rows[0][1] else None
            self._next_due_known = True
        if self._next_due is None:
            return None
        return datetime.fromtimestamp(self._next_due, UTC)

    def mark_sent(self, seqs: Iterable[int], *, reconnected: bool = False) -> None:
        """Record a send; reconnected: a send after a new connection, which starts the
        resend delays afresh (otherwise each resend doubles the delay)."""
        now = self._clock.now().timestamp()
        with self._db.transaction() as db:
            for seq in seqs:
                if reconnected:
                    db.execute("UPDATE events SET sends = 0 WHERE seq = ?", (seq,))
                db.execute(
                    "UPDATE events SET sends = sends + 1, last_sent = ?, next_send = ? + "
                    "MIN(? * (1 << MIN(sends, 16)), ?) WHERE seq = ?",
                    (now, now, self.resend_after_s, self.max_resend_s, seq),
                )
        self._next_due_known = False

    def ack(self, outbox_id: str, seqs: Iterable[int]) -> int:
        """Forget the acknowledged events of this outbox; returns how many were forgotten."""
        if outbox_id != self.outbox_id:
            log.info(
                "ack for outbox %s ignored: this cluster's outbox is %s (data directory reset?)",
                outbox_id, self.outbox_id,
            )
            return 0
        numbers = sorted({int(s) for s in seqs})
        if len(numbers) <= ACK_BATCH:  # the usual case: one statement
            forgotten = self._db.write(_delete_sql(len(numbers)), numbers) if numbers else 0
        else:
            forgotten = 0
            with self._db.transaction() as db:
                for i in range(0, len(numbers), ACK_BATCH):
                    part = numbers[i : i + ACK_BATCH]
                    forgotten += max(db.execute(_delete_sql(len(part)), part).rowcount, 0)
        self._next_due_known = False
        return max(forgotten, 0)

    def pending(self) -> int:
        return int(self._db.query("SELECT COUNT(*) FROM events")[0][0])


def _delete_sql(count: int) -> str:
    """DELETE of `count` sequence numbers, as ? parameters (no value is put in the text)."""
    return f"DELETE FROM events WHERE seq IN ({','.join('?' * count)})"  # noqa: S608 - only ? placeholders
