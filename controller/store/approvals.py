"""Approvals of programmes that need one (requires_approval): who approved which content.

`content` is the list of the programme's bulletin content hashes at the time
(controller.approval): a changed bulletin no longer matches, and needs approval again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select

from controller.store.engine import Database, aware, utc
from controller.store.schema import approvals


@dataclass(frozen=True)
class Approval:
    programme: str
    content: list[str]
    approved_by: str
    approved_at: datetime


class ApprovalRepository:
    """Table approvals."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._engine = db.engine

    def add(self, programme: str, content: Sequence[str], by: str, at: datetime) -> None:
        """Record that `by` approved this content of the programme."""
        with self._db.write, self._engine.begin() as conn:
            conn.execute(
                insert(approvals).values(
                    programme=programme, content=json.dumps(list(content)), approved_by=by,
                    approved_at=utc(at),
                )
            )

    def of_content(self, programme: str, content: Sequence[str]) -> Approval | None:
        """The latest approval of exactly this content of the programme, or None."""
        wanted = json.dumps(list(content))
        with self._engine.connect() as conn:
            row = conn.execute(
                select(approvals)
                .where(approvals.c.programme == programme, approvals.c.content == wanted)
                .order_by(approvals.c.id.desc())
                .limit(1)
            ).mappings().first()
        return _approval(row) if row else None

    def latest(self, programme: str) -> Approval | None:
        """The latest approval of the programme, whatever content it was for."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(approvals)
                .where(approvals.c.programme == programme)
                .order_by(approvals.c.id.desc())
                .limit(1)
            ).mappings().first()
        return _approval(row) if row else None


def _approval(row: Any) -> Approval:
    return Approval(
        programme=row["programme"],
        content=list(json.loads(row["content"])),
        approved_by=row["approved_by"],
        approved_at=aware(row["approved_at"]),
    )
