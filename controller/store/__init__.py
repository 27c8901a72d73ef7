"""The controller's store: one database, one repository per area.

- engine.py: the engine and the write lock every repository shares; times in UTC.
- schema.py: the metadata and every table.
- clusters.py, events.py, plays.py, dispatches.py, approvals.py, status.py (the last
  reload's outcome, the scheduler's marks), sessions.py (web sessions), history.py (what
  a range of time holds, for reports), leases.py (which controller leads): the
  repositories, each a small class over the one `Database`.
- migrate.py and migrations/: the schema's numbered revisions (Alembic).

`Store` opens the database and hands out the repositories (`store.plays.record(...)`);
it holds no queries of its own. Opening creates an empty database at the schema's head
and refuses one that is behind (`loa-controller db upgrade`) or ahead.
"""

from __future__ import annotations

from sqlalchemy import Engine

from controller.store.approvals import Approval, ApprovalRepository
from controller.store.clusters import FINAL_KINDS, ClusterHealth, ClusterRepository, ClusterRow
from controller.store.dispatches import DispatchRepository
from controller.store.engine import Database, aware, utc
from controller.store.events import EventRepository
from controller.store.history import History, HistoryRepository
from controller.store.leases import Lease, LeaseRepository
from controller.store.migrate import SchemaAheadError, SchemaBehindError, SchemaError, open_schema
from controller.store.plays import PlayRepository
from controller.store.schema import metadata
from controller.store.sessions import WebSession, WebSessionRepository
from controller.store.status import ConfigStatus, ConfigStatusRepository, MarkRepository

__all__ = [
    "FINAL_KINDS",
    "Approval",
    "ClusterHealth",
    "ClusterRow",
    "ConfigStatus",
    "History",
    "Lease",
    "SchemaAheadError",
    "SchemaBehindError",
    "SchemaError",
    "Store",
    "WebSession",
    "aware",
    "metadata",
    "utc",
]


class Store:
    """All controller persistence, by area. Thread-safe; writes are serialised by one lock."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        try:
            open_schema(self.db)
        except BaseException:
            self.db.close()
            raise
        self.url = url
        self.engine: Engine = self.db.engine
        self.clusters = ClusterRepository(self.db)
        self.events = EventRepository(self.db)
        self.plays = PlayRepository(self.db)
        self.dispatches = DispatchRepository(self.db)
        self.approvals = ApprovalRepository(self.db)
        self.config_status = ConfigStatusRepository(self.db)
        self.marks = MarkRepository(self.db)
        self.web_sessions = WebSessionRepository(self.db)
        self.history = HistoryRepository(self.db)
        self.leases = LeaseRepository(self.db)

    def close(self) -> None:
        self.db.close()
