"""What became of each scheduled occurrence: sent, or recorded as missed (and why).

This is what stops a restart from sending a play twice: an occurrence is claimed once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select

from controller.store.engine import Database, aware, utc
from controller.store.schema import dispatches


class DispatchRepository:
    """Table dispatches."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._engine = db.engine

    def claim(
        self, programme: str, occurrence: datetime, outcome: str, reason: str | None,
        at: datetime,
    ) -> bool:
        """Record what became of an occurrence; False if it was already dealt with."""
        with self._db.write, self._engine.begin() as conn:
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

    def outcome(self, programme: str, occurrence: datetime) -> str | None:
        """sent | missed, or None if the occurrence was not dealt with yet."""
        with self._engine.connect() as conn:
            return conn.execute(
                select(dispatches.c.outcome).where(
                    dispatches.c.programme == programme,
                    dispatches.c.occurrence == utc(occurrence),
                )
            ).scalar()

    def log(self) -> list[dict[str, Any]]:
        """Every row, by occurrence."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(dispatches).order_by(dispatches.c.occurrence)).mappings()
            return [dict(r) for r in rows]

    def of_programme(self, programme: str) -> dict[datetime, tuple[str, str | None]]:
        """Occurrence (UTC) -> (outcome, reason) for one programme."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(dispatches.c.occurrence, dispatches.c.outcome, dispatches.c.reason)
                .where(dispatches.c.programme == programme)
            )
            return {aware(r[0]): (r[1], r[2]) for r in rows}
