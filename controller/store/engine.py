"""The one engine of the controller's store, and what every repository shares.

SQLAlchemy Core over SQLite by default (one file, no server) or PostgreSQL by URL. A
`Database` is the engine plus the lock that serialises writes (SQLite takes one writer
at a time; one lock in the process keeps writers from waiting on each other's busy
timeout). Every repository of the store (controller/store/*.py) is built on one
`Database`, so that they all write through the same lock.

Times: everything stored is UTC. SQLite keeps no offset and hands back naive
datetimes, so what is read is made aware again (`aware`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, bindparam, create_engine, event, or_


class Database:
    """The store's engine and its write lock. Thread-safe."""

    def __init__(self, url: str) -> None:
        make_parent_dir(url)
        self.url = url
        self.engine: Engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.write = threading.Lock()

    def close(self) -> None:
        self.engine.dispose()


#: The most keys one keys_in() clause matches; callers look up more in parts of this size.
KEYS_PER_LOOKUP = 256


def keys_in(
    columns: Sequence[ColumnElement[Any]], keys: Sequence[tuple[Any, ...]]
) -> tuple[ColumnElement[bool], dict[str, Any]]:
    """Rows whose columns equal one of the keys (at most KEYS_PER_LOOKUP), written so that
    the index on those columns is used: `(a = :k0_0 AND b = :k0_1) OR (a = :k1_0 ...`;
    the clause, and the values of its parameters to execute it with.

    Not `tuple_(a, b).in_(keys)`: SQLite does not use an index for a row value IN a
    list, and scans the whole table for each lookup (58 ms for 250 keys in 200,000
    events, against 0.8 ms this way), so each batch would cost more as the table grows.
    The list is padded (its last key repeated) to the next power of two, and the clause
    of each size is made once, with named parameters: a few statement shapes, each
    compiled once, for SQLAlchemy's and the drivers' statement caches."""
    if not 1 <= len(keys) <= KEYS_PER_LOOKUP:
        raise ValueError(f"keys_in() takes 1 to {KEYS_PER_LOOKUP} keys, not {len(keys)}")
    size = 1 << (len(keys) - 1).bit_length()
    clause = _key_clause(tuple(columns), size)
    values: dict[str, Any] = {}
    last = len(keys) - 1
    for row in range(size):
        key = keys[min(row, last)]
        if len(key) != len(columns):
            raise ValueError(f"a key of {len(key)} values for {len(columns)} columns")
        for index, value in enumerate(key):
            values[f"k{row}_{index}"] = value
    return clause, values


_KEY_CLAUSES: dict[tuple[tuple[str, ...], int], ColumnElement[bool]] = {}
_KEY_CLAUSES_LOCK = threading.Lock()


def _key_clause(columns: tuple[ColumnElement[Any], ...], size: int) -> ColumnElement[bool]:
    """The OR of `size` rows of equalities, named k<row>_<column>, made once per shape."""
    shape = (tuple(str(column) for column in columns), size)
    with _KEY_CLAUSES_LOCK:
        found = _KEY_CLAUSES.get(shape)
        if found is None:
            found = _KEY_CLAUSES[shape] = or_(*(
                and_(*(column == bindparam(f"k{row}_{index}")
                       for index, column in enumerate(columns)))
                for row in range(size)
            ))  # fmt: skip
        return found


def make_parent_dir(url: str) -> None:
    """The folder of a SQLite file, made if missing (SQLite makes the file, not folders)."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def utc(value: datetime) -> datetime:
    """Stored datetimes are UTC (SQLite keeps no offset)."""
    return value.astimezone(UTC)


def aware(value: datetime) -> datetime:
    """A time read back from the store, in UTC (SQLite gives it back without its zone)."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def aware_or_none(value: datetime | None) -> datetime | None:
    """A time from a column that may be NULL, with UTC as its zone if it has none."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
