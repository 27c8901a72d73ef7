"""The store's schema version, and bringing a database to it (Alembic, run in code).

The revisions live in controller/store/migrations/versions (numbered: 0001_baseline.py,
0002_..., shipped inside the package, so an installed controller has them); there is
no alembic.ini. The database's revision is in its `alembic_version` table.

What a database can be, seen from this release (`SchemaState`):
- empty: none of the store's tables. Opening the store creates it at head: the demo,
  the tests, and a first `loa-controller run`.
- at head: ready.
- behind: at an older revision, or written by a release before migrations (tables,
  no alembic_version). Only `loa-controller db upgrade` brings it forward, after a
  backup; the store refuses to open it (`SchemaBehindError`), so `run` never changes an
  existing database on its own.
- ahead: at a revision this release does not know, written by a newer release.
  Nothing here touches it (`SchemaAheadError`).

Migrations run in one transaction: on PostgreSQL DDL is transactional, and on SQLite
the migration's connection takes the transaction itself (pysqlite would commit each
CREATE and ALTER on its own), so a failed upgrade leaves the database as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import Connection, make_url

from controller.store.engine import Database, make_parent_dir
from controller.store.schema import metadata
from protocol.l10n import _

MIGRATIONS = Path(__file__).with_name("migrations")
UPGRADE_COMMAND = "loa-controller db upgrade"


class SchemaError(ValueError):
    """The database's schema is not the one this release works with; says what to do."""


class SchemaBehindError(SchemaError):
    """The database is behind this release: `loa-controller db upgrade` brings it forward."""


class SchemaAheadError(SchemaError):
    """The database was written by a newer release of Loa."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands against this release's migrations."""

    where: str  # the database's URL, without its password
    revision: str | None  # from alembic_version; None: never migrated
    head: str  # this release's latest revision
    known: bool  # revision is one of this release's (or None)
    tables: tuple[str, ...]  # the store's tables present

    @property
    def empty(self) -> bool:
        return self.revision is None and not self.tables

    @property
    def current(self) -> bool:
        return self.revision == self.head

    @property
    def ahead(self) -> bool:
        return self.revision is not None and not self.known

    @property
    def behind(self) -> bool:
        return not self.empty and not self.current and not self.ahead

    def describe(self) -> str:
        """What `loa-controller db current` prints: the revision, and what to do."""
        if self.empty:
            return _("{where}: empty (no store tables); this release's schema is "
                     "revision {head}. `{command}` or `loa-controller run` "
                     "creates it.", where=self.where, head=self.head, command=UPGRADE_COMMAND)
        if self.current:
            return _("{where}: revision {revision} (head): up to date.", where=self.where,
                     revision=self.revision)
        if self.ahead:
            return _("{where}: revision {revision}, which this release does not "
                     "know (its latest is {head}): written by a newer release of Loa. "
                     "Run that release, or restore a backup taken before it.",
                     where=self.where, revision=self.revision, head=self.head)
        was = (_("revision {revision}", revision=self.revision) if self.revision
               else _("no schema version (written by a release before migrations)"))
        return _("{where}: {was}; behind this release's revision {head}. "
                 "Back it up, then run `{command}`.", where=self.where, was=was,
                 head=self.head, command=UPGRADE_COMMAND)


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """This release's latest revision."""
    found = _scripts().get_current_head()
    assert found is not None, f"no revisions in {MIGRATIONS / 'versions'}"
    return found


def state_of(engine: Engine) -> SchemaState:
    """Where the database behind engine stands (reads only)."""
    with engine.connect() as conn:
        return _state(conn)


def _state(conn: Connection) -> SchemaState:
    revision = MigrationContext.configure(conn).get_current_revision()
    scripts = _scripts()
    known = revision is None or any(s.revision == revision for s in scripts.walk_revisions())
    present = set(inspect(conn).get_table_names())
    return SchemaState(
        where=conn.engine.url.render_as_string(hide_password=True),
        revision=revision,
        head=head(),
        known=known,
        tables=tuple(sorted(present & set(metadata.tables))),
    )


def upgrade(url: str, *, only_if_empty: bool = False) -> tuple[SchemaState, SchemaState]:
    """Bring the database at url to head, whatever it was (empty, behind, or written by
    a release before migrations); return its state before and after. A database ahead of
    this release is left alone (SchemaAheadError). only_if_empty: create an empty
    database, and refuse one that is behind (SchemaBehindError)."""
    engine = _migration_engine(url)
    try:
        with engine.begin() as conn:
            before = _state(conn)
            if before.ahead:
                raise SchemaAheadError(before.describe())
            if only_if_empty and before.behind:
                raise SchemaBehindError(before.describe())
            if not before.current:
                command.upgrade(_config(conn), "head")
            after = _state(conn)
        return before, after
    finally:
        engine.dispose()


def open_schema(db: Database) -> SchemaState:
    """What opening the store does: create an empty database at head; accept one at
    head; refuse one that is behind or ahead, saying what to run. Never changes a
    database that has the store's tables."""
    found = state_of(db.engine)
    if found.empty:  # checked again inside upgrade's transaction
        _, found = upgrade(db.url, only_if_empty=True)
    if found.current:
        return found
    if found.ahead:
        raise SchemaAheadError(found.describe())
    raise SchemaBehindError(found.describe())


def _migration_engine(url: str) -> Engine:
    """An engine of its own for migrating, on which a transaction covers DDL too."""
    make_parent_dir(url)
    engine = create_engine(make_url(url))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_own_transactions)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_own_transactions(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # pysqlite begins nothing; _sqlite_begin does
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")
