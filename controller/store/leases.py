"""The leadership lease (table leadership, one row): which controller leads, since when,
until when (controller/leadership.py decides what to do with it).

Every change is a compare-and-set on the row's term, in one UPDATE: two controllers
that both see an expired lease cannot both take it (the second UPDATE finds the term
moved on and changes nothing). Times come from the database's clock (PostgreSQL's
now(); SQLite runs on one machine, whose clock it is), so the controllers' own clocks
never decide who leads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from controller.store.engine import Database, aware, utc
from controller.store.schema import leadership

ROW = 1


@dataclass(frozen=True)
class Lease:
    """The lease as the database holds it, and the database's time when it was read."""

    holder: str
    url: str
    term: int
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    now: datetime

    @property
    def expired(self) -> bool:
        return self.expires_at <= self.now


class LeaseRepository:
    """Table leadership."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._engine = db.engine

    def _now(self, conn: Connection) -> datetime:
        if self._engine.dialect.name == "postgresql":
            return aware(conn.execute(select(func.now())).scalar_one())
        return datetime.now(UTC)

    def _read(self, conn: Connection) -> Lease | None:
        now = self._now(conn)
        row = conn.execute(select(leadership).where(leadership.c.id == ROW)).mappings().first()
        if row is None:
            return None
        return Lease(
            holder=row["holder"], url=row["url"], term=row["term"],
            acquired_at=aware(row["acquired_at"]), renewed_at=aware(row["renewed_at"]),
            expires_at=aware(row["expires_at"]), now=now,
        )

    def current(self) -> Lease | None:
        """The lease as it is now (None: no controller ever led on this store)."""
        with self._engine.connect() as conn:
            return self._read(conn)

    def claim(self, holder: str, url: str, ttl: timedelta) -> Lease | None:
        """Renew the lease if holder holds it, or take it if it is free or expired (the
        term then goes up by one). The lease after the attempt; its holder says whether
        the claim won."""
        with self._db.write, self._engine.begin() as conn:
            found = self._read(conn)
            if found is None:
                now = self._now(conn)
                try:
                    with conn.begin_nested():
                        conn.execute(insert(leadership).values(
                            id=ROW, holder=holder, url=url, term=1, acquired_at=utc(now),
                            renewed_at=utc(now), expires_at=utc(now + ttl),
                        ))
                except IntegrityError:  # another controller made the row first
                    return None
                return self._read(conn)
            if found.holder == holder and not found.expired:
                values: dict[str, object] = {"renewed_at": utc(found.now),
                                             "expires_at": utc(found.now + ttl)}
            elif found.expired:
                values = {"holder": holder, "url": url, "term": found.term + 1,
                          "acquired_at": utc(found.now), "renewed_at": utc(found.now),
                          "expires_at": utc(found.now + ttl)}
            else:
                return found  # another controller holds it
            changed = conn.execute(
                update(leadership)
                .where(leadership.c.id == ROW, leadership.c.term == found.term,
                       leadership.c.holder == found.holder)
                .values(**values)
            ).rowcount
            return self._read(conn) if changed == 1 else None

    def release(self, holder: str, term: int) -> bool:
        """Let the lease go at once (a controller stopping): the next claim takes it."""
        with self._db.write, self._engine.begin() as conn:
            now = self._now(conn)
            return conn.execute(
                update(leadership)
                .where(leadership.c.id == ROW, leadership.c.holder == holder,
                       leadership.c.term == term)
                .values(expires_at=utc(now))
            ).rowcount == 1
