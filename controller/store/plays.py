"""The plays sent to clusters: what, when, to whom, and the body to send again to a
cluster that has not confirmed it (controller/confirmations.py)."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import insert, select

from controller.store.engine import Database, utc
from controller.store.schema import plays


class PlayRepository:
    """Table plays (controller.distribution.PlayRecorder)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._engine = db.engine

    def record(
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
        """Keep a play as sent; a play already kept is left as it is."""
        with self._db.write, self._engine.begin() as conn:
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

    def clusters_of(self, play_id: str) -> list[str]:
        """The clusters a play was sent to (none if it is unknown)."""
        with self._engine.connect() as conn:
            raw = conn.execute(select(plays.c.clusters).where(plays.c.play_id == play_id)).scalar()
        return list(json.loads(raw)) if raw else []

    def items_of(self, play_id: str) -> list[str]:
        """The SHA-256 of each item a play carried, in order (none if it is unknown)."""
        with self._engine.connect() as conn:
            raw = conn.execute(select(plays.c["items"]).where(plays.c.play_id == play_id)).scalar()
        return list(json.loads(raw)) if raw else []
