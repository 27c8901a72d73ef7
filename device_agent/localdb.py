"""The agent's one local SQLite database: its outbox of status events and its state.

Besides the outbox (device_agent/outbox.py) the agent keeps a few small records on the
SD card: the current group membership, one JSON document replaced whole
(`StateDocument`); the local schedule, a JSON record a play, and the commands already
seen, a row an id (`StateTable`: a change writes the rows that changed, where the
schedule keeps a day of plays and the seen ids their commands' lifetimes). Every write
is a transaction, so a reader after a crash finds the old version or the new one, never
half of each. A schedule or seen ids saved as one document by an earlier version are
moved to rows when the agent starts.

One database per agent, one connection, WAL journal, exclusive locking:
- replacing a row costs tens of microseconds, where creating and renaming a file costs a
  file system metadata update (near a millisecond on an SD card and on many virtual
  disks);
- exclusive locking keeps WAL's index in memory instead of a `-shm` file, so an agent
  holds two file descriptors for its state. That matters when a simulated fleet runs
  many agents in one process: a link on its own thread waits on its socket with paho's
  select(), which cannot see descriptors numbered 1024 or above (the simulator's shared
  NetworkLoop, scripts/sim_network.py, uses epoll), and every descriptor counts against
  the process's limit. It also means a second process cannot open the database of a
  running agent.
- durable=True syncs every commit to the SD card (it survives a power cut); False only
  survives a crash of the process (simulated fleets on one machine).
- 1 KiB pages (`PAGE_SIZE`, for a new file): a commit writes every page it changed to the
  WAL, and a step changes a few small rows in three tables. With SQLite's default 4 KiB
  pages that is about 19 KB of writes per commit; with 1 KiB, about 7 KB (measured, 1,000
  databases, 24,000 steps of seen ids, a schedule row and an event), for the same CPU.

Group commit: the agent's worker runs each step (a batch of messages, then what is due)
inside `batch()`, so the step's writes (seen commands, schedule, outbox) are one
transaction and one sync, not one per statement. What must only happen once those writes
are on disk (publishing an event, starting a play's sound) is handed to `after_commit`,
which runs it after the COMMIT (at once outside a batch). Other threads' writes wait for
the step to end; they must not hold a lock the step needs while they write (the player's
output thread hands its outcome to the worker instead of writing it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Page size of a new database (an existing one keeps the size it was made with).
PAGE_SIZE = 1024

SCHEMA = "CREATE TABLE IF NOT EXISTS documents (name TEXT PRIMARY KEY, body TEXT NOT NULL)"
ROWS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS records (tbl TEXT NOT NULL, key TEXT NOT NULL, "
    "body TEXT NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID"
)


class DatabaseInUse(RuntimeError):
    """Another process has this agent's database open."""


class LocalDatabase:
    """The agent's SQLite file; thread-safe (one lock around the one connection)."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._batch_thread: int | None = None  # the thread whose batch is open
        self._batch_begun = False  # its transaction, begun at its first write
        self._after: list[Callable[[], None]] = []
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=0.5
        )
        try:
            # A new file only (an existing one keeps its own): see PAGE_SIZE.
            self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")  # before WAL: no -shm file
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute(SCHEMA)
            self._db.execute(ROWS_SCHEMA)
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
        """The connection, inside one write transaction (committed on leaving; inside a
        batch, a savepoint of it: undone alone on an error, committed with the batch)."""
        with self._lock:
            nested = self._in_batch()
            if nested:
                self._begin_batch()
            self._db.execute("SAVEPOINT part" if nested else "BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK TO part" if nested else "ROLLBACK")
                if nested:
                    self._db.execute("RELEASE part")
                raise
            self._db.execute("RELEASE part" if nested else "COMMIT")

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """This thread's writes until the end of the block, as one transaction; then the
        `after_commit` actions, in order. A write that fails inside still raises to its
        caller; what the others wrote is committed all the same (each would have been
        committed alone without the batch). Nested: part of the outer batch."""
        actions: list[Callable[[], None]] = []
        try:
            with self._lock:
                if self._in_batch():
                    yield
                    return
                self._batch_thread = threading.get_ident()
                try:
                    yield
                finally:
                    self._batch_thread = None
                    actions, self._after = self._after, []
                    if self._batch_begun:
                        self._batch_begun = False
                        self._commit_batch()
        finally:
            for action in actions:
                try:
                    action()
                except Exception:
                    log.exception("%s: an action after saving failed", self.path)

    def _commit_batch(self) -> None:
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            # A full or failing SD card: the step's records are lost, but a play already
            # started in memory still sounds and its events still go out (an urgent
            # message matters more than its record).
            log.error(
                "%s: could not save the last changes (%s); check the SD card (df -h, dmesg)",
                self.path, exc,
            )
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run action once what this thread wrote is committed: at the end of its batch,
        or now if it has none open."""
        with self._lock:
            if self._in_batch():
                self._after.append(action)
                return
        action()

    def _in_batch(self) -> bool:
        return self._batch_thread == threading.get_ident()

    def _begin_batch(self) -> None:
        """Open the batch's transaction, if not yet: a step that writes nothing (a chunk
        that completes nothing) costs no BEGIN and COMMIT."""
        if not self._batch_begun:
            self._db.execute("BEGIN IMMEDIATE")
            self._batch_begun = True

    def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement, its own transaction (SQLite's autocommit: atomic, and a third
        of the calls of BEGIN, statement, COMMIT), or part of this thread's batch.
        Returns the rows it changed."""
        with self._lock:
            if self._in_batch():
                self._begin_batch()
            return self._db.execute(sql, params).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def executescript(self, script: str) -> None:
        """Run a script (schema); not inside a batch (SQLite commits before a script)."""
        with self._lock:
            if self._in_batch():
                raise RuntimeError("executescript inside a batch would commit it half-way")
            self._db.executescript(script)

    def document(self, name: str) -> StateDocument:
        return StateDocument(self, name)

    def table(self, name: str) -> StateTable:
        return StateTable(self, name)

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


class StateTable:
    """Named JSON records in the agent's database, a row each: saving a change writes
    the records that changed, not all of them (the schedule keeps a day of plays)."""

    def __init__(self, database: LocalDatabase, name: str) -> None:
        self._database = database
        self.name = name

    def __str__(self) -> str:
        return f"{self._database.path} ({self.name})"

    def load(self) -> list[tuple[str, str]]:
        """Every record as (key, JSON text)."""
        rows = self._database.query(
            "SELECT key, body FROM records WHERE tbl = ? ORDER BY key", (self.name,)
        )
        return [(str(key), str(body)) for key, body in rows]

    def save(self, changed: Mapping[str, str], removed: Collection[str] = ()) -> None:
        """Write these records (key -> JSON text) and delete those keys, atomically."""
        upsert = (
            "INSERT INTO records (tbl, key, body) VALUES (?, ?, ?) "
            "ON CONFLICT (tbl, key) DO UPDATE SET body = excluded.body"
        )
        if len(changed) == 1 and not removed:  # the usual case: one statement
            ((key, body),) = changed.items()
            self._database.write(upsert, (self.name, key, body))
            return
        with self._database.transaction() as db:
            db.executemany(upsert, [(self.name, k, v) for k, v in changed.items()])
            db.executemany(
                "DELETE FROM records WHERE tbl = ? AND key = ?", [(self.name, k) for k in removed]
            )

    def legacy_document(self) -> Any:
        """What an earlier version kept as one document of this name (None: nothing)."""
        return StateDocument(self._database, self.name).load()

    def replace_legacy(self, records: Mapping[str, str]) -> None:
        """Move to a record a row: write these and drop the old one-document form."""
        with self._database.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO records (tbl, key, body) VALUES (?, ?, ?)",
                [(self.name, k, v) for k, v in records.items()],
            )
            db.execute("DELETE FROM documents WHERE name = ?", (self.name,))

    def after_commit(self, action: Callable[[], None]) -> None:
        """See `LocalDatabase.after_commit`."""
        self._database.after_commit(action)
