"""How long status events are kept: `loa-controller db prune` (config `events_retention`).

Events are the proof of play: a report of the retention period must still find every
one of its events. So what goes is only what lies wholly before that period, counted in
whole months of the controller's time zone: with `events_retention: 730d` on 2028-03-15,
events before 2026-03-01 (the first day of the month 730 days back) may go, and a report
of March 2026 onward is whole. The default keeps five years; less than 31 days is
refused in the config.

Before anything is deleted, the rows can be written to an archive (`--archive FILE`: one
JSON object a line, gzip), synced to disk; the rows are deleted only once the archive is
whole, in one transaction, and only those written to it. `--dry-run` counts.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select

from controller.store.engine import Database, aware, utc
from controller.store.schema import event_conflicts, events
from protocol.l10n import _

#: Rows read, written and deleted at a time.
BATCH = 5000


@dataclass(frozen=True)
class Pruned:
    before: datetime  # events with `at` before this went
    events: int
    conflicts: int
    archive: Path | None

    def describe(self, tz: tzinfo, dry_run: bool = False) -> str:
        when = self.before.astimezone(tz).strftime("%Y-%m-%d")
        kept = (_("; archived first to {archive}", archive=self.archive)
                if self.archive and not dry_run else "")
        if dry_run:
            return _("would delete {events} events and {conflicts} conflicting events from "
                     "before {when}{kept}; everything since is kept", events=self.events,
                     conflicts=self.conflicts, when=when, kept=kept)
        return _("deleted {events} events and {conflicts} conflicting events from "
                 "before {when}{kept}; everything since is kept", events=self.events,
                 conflicts=self.conflicts, when=when, kept=kept)


def cutoff(now: datetime, retention: timedelta, tz: tzinfo) -> datetime:
    """The first instant kept: the start of the month (local) that holds now - retention."""
    start = (now - retention).astimezone(tz)
    first = date(start.year, start.month, 1)
    return datetime(first.year, first.month, 1, tzinfo=tz)


def prune(
    db: Database, now: datetime, retention: timedelta, tz: tzinfo, *,
    archive: Path | None = None, dry_run: bool = False,
) -> Pruned:
    """Delete the events older than the retention period (module docstring)."""
    before = cutoff(now, retention, tz)
    old = events.c.at < utc(before)
    old_conflicts = event_conflicts.c.received_at < utc(before)
    with db.engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(events).where(old)).scalar_one()
        conflicts = conn.execute(
            select(func.count()).select_from(event_conflicts).where(old_conflicts)
        ).scalar_one()
    if dry_run or (count == 0 and conflicts == 0):
        return Pruned(before, int(count), int(conflicts), archive)
    with db.write, db.engine.begin() as conn:
        if archive is not None:
            part = archive.with_name(archive.name + ".part")
            with gzip.open(part, "wt", encoding="utf-8") as out:
                for table, where in ((events, old), (event_conflicts, old_conflicts)):
                    rows = conn.execute(select(table).where(where).order_by(table.c.id))
                    for row in rows.mappings():
                        out.write(json.dumps({"table": table.name, **_plain(row)},
                                             ensure_ascii=False) + "\n")
            with part.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(part, archive)
        gone = conn.execute(delete(events).where(old)).rowcount
        gone_conflicts = conn.execute(delete(event_conflicts).where(old_conflicts)).rowcount
    return Pruned(before, int(gone), int(gone_conflicts), archive)


def _plain(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        out[key] = aware(value).isoformat() if isinstance(value, datetime) else value
    return out
