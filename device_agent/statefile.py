"""Small state documents that survive kill -9 and power loss, in one SQLite file per agent.

The agent keeps a few small records on the SD card: commands already seen, the current
group membership, the local schedule. Each is one JSON document, replaced whole in one
SQLite transaction (WAL), so a reader after a crash finds either the old version or the
new one, never half of each. One database rather than one file per record: replacing a
row costs a few tens of microseconds, creating and renaming a file costs a file system
metadata update (near a millisecond on an SD card, and on many virtual disks).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = "CREATE TABLE IF NOT EXISTS documents (name TEXT PRIMARY KEY, body TEXT NOT NULL)"


class StateStore:
    """The agent's state database; hands out one `StateDocument` per record name.

    durable: each save is synced to the SD card before it returns, so it survives a power
    cut; False only survives a crash of the process (simulated fleets on one machine).
    """

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute(SCHEMA)

    def document(self, name: str) -> StateDocument:
        return StateDocument(self, name)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def load_document(self, name: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT body FROM documents WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except json.JSONDecodeError as exc:
            log.error(
                "state record %r in %s cannot be read (%s); starting it from empty",
                name, self.path, exc,
            )
            return None

    def save_document(self, name: str, document: Any) -> None:
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._db.execute(
                "INSERT INTO documents (name, body) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET body = excluded.body",
                (name, body),
            )


class StateDocument:
    """One named JSON document of a StateStore."""

    def __init__(self, store: StateStore, name: str) -> None:
        self._store = store
        self.name = name

    def __str__(self) -> str:
        return f"{self._store.path} ({self.name})"

    def load(self) -> Any:
        """The saved document, or None if there is none (or it was unreadable)."""
        return self._store.load_document(self.name)

    def save(self, document: Any) -> None:
        """Replace the document (committed when this returns)."""
        self._store.save_document(self.name, document)
