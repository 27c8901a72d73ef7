"""What the running controller keeps about itself: the outcome of its last (re)load of
the playlists and the fleet (one row; a refused edit shows in `loa-controller fleet`),
and named instants it keeps across restarts (the scheduler's marks)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update

from controller.store.engine import Database, aware, utc
from controller.store.schema import config_status, marks


@dataclass(frozen=True)
class ConfigStatus:
    status: str  # ok | error
    problems: str
    at: datetime


class ConfigStatusRepository:
    """Table config_status (one row)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._engine = db.engine

    def set(self, status: str, problems: str, at: datetime) -> None:
        with self._db.write, self._engine.begin() as conn:
            values = {"status": status, "problems": problems, "at": utc(at)}
            if conn.execute(select(config_status.c.id).where(config_status.c.id == 1)).first():
                conn.execute(update(config_status).where(config_status.c.id == 1).values(**values))
            else:
                conn.execute(insert(config_status).values(id=1, **values))

    def get(self) -> ConfigStatus | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(config_status).where(config_status.c.id == 1)
            ).mappings().first()
        if row is None:
            return None
        return ConfigStatus(row["status"], row["problems"], aware(row["at"]))


class MarkRepository:
    """Table marks (controller.schedule.MarkStore)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._engine = db.engine

    def get(self, name: str) -> datetime | None:
        with self._engine.connect() as conn:
            at = conn.execute(select(marks.c.at).where(marks.c.name == name)).scalar()
        return aware(at) if at is not None else None

    def set(self, name: str, at: datetime) -> None:
        with self._db.write, self._engine.begin() as conn:
            if conn.execute(select(marks.c.name).where(marks.c.name == name)).first():
                conn.execute(update(marks).where(marks.c.name == name).values(at=utc(at)))
            else:
                conn.execute(insert(marks).values(name=name, at=utc(at)))
