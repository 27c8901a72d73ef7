"""The agent's one local SQLite database: its outbox of status events and its state.

Besides the outbox (device_agent/outbox.py) the agent keeps a few small records on the
SD card: commands already seen, the current group membership, the local schedule. Each
is one JSON document, replaced whole in one transaction, so a reader after a crash finds
the old version or the new one, never half of each.

One database per agent, one connection, WAL journal, exclusive locking:
- replacing a row costs tens of microseconds, where creating and renaming a file costs a
  file system metadata update (near a millisecond on an SD card and on many virtual
  disks);
- exclusive locking keeps WAL's index in memory instead of a `-shm` file, so an agent
  holds two file descriptors for its state. That matters when a simulated fleet runs
  many agents in one process: a link on its own thread waits on its socket with paho's
  select(), which cannot see descriptors numbered 1024 or above (the shared NetworkLoop
  uses epoll), and every descriptor counts against the process's limit. It also means
  a second process cannot open the database of a running agent.
- durable=True syncs every commit to the SD card (it survives a power cut); False only
  survives a crash of the process (simulated fleets on one machine).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = "CREATE TABLE IF NOT EXISTS documents (name TEXT PRIMARY KEY, body TEXT NOT NULL)"


class DatabaseInUse(RuntimeError):
    """Another process has this agent's database open."""


class LocalDatabase:
    """The agent's SQLite file; thread-safe (one lock around the one connection)."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=0.5
        )
        try:
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")  # before WAL: no -shm file
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute(SCHEMA)
        except sqlite3.OperationalError as exc:
            self._db.close()
            if "locked" in str(exc):
                raise DatabaseInUse(
                    f"{path} is in use by another loa-agent; stop it first or give this "
                    "one its own data_dir"
                ) from None
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection, inside one write transaction (committed on leaving)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement, its own transaction (SQLite's autocommit: atomic, and a third
        of the calls of BEGIN, statement, COMMIT). Returns the rows it changed."""
        with self._lock:
            return self._db.execute(sql, params).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def executescript(self, script: str) -> None:
        with self._lock:
            self._db.executescript(script)

    def document(self, name: str) -> StateDocument:
        return StateDocument(self, name)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class StateDocument:
    """One named JSON document in the agent's database."""

    def __init__(self, database: LocalDatabase, name: str) -> None:
        self._database = database
        self.name = name

    def __str__(self) -> str:
        return f"{self._database.path} ({self.name})"

    def load(self) -> Any:
        """The saved document, or None if there is none (or it was unreadable)."""
        rows = self._database.query("SELECT body FROM documents WHERE name = ?", (self.name,))
        if not rows:
            return None
        try:
            return json.loads(rows[0][0])
        except json.JSONDecodeError as exc:
            log.error("%s cannot be read (%s); starting it from empty", self, exc)
            return None

    def save(self, document: Any) -> None:
        """Replace the document (committed when this returns)."""
        self.save_text(json.dumps(document, ensure_ascii=False, separators=(",", ":")))

    def save_text(self, body: str) -> None:
        """Replace the document with this JSON text (the caller encoded it)."""
        self._database.write(
            "INSERT INTO documents (name, body) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET body = excluded.body",
            (self.name, body),
        )
