"""The store's schema revisions: an empty database is created at head, a database written
by the last release before migrations is upgraded in place with every row kept, and one
that is behind or ahead is refused, saying what to run.

The old database is built from the DDL that release ran (tests/data/store-6cc7da1.*.sql,
frozen), filled with rows in every column of every table, then brought forward by the
real CLI (`python -m controller.cli db upgrade`, a subprocess). On SQLite and on
PostgreSQL (conftest.postgres_database: skipped where no server answers, except under CI).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import postgres_database
from sqlalchemy import (
    Boolean,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    create_engine,
    insert,
    inspect,
    select,
    text,
)

# The composition roots import every module that might define a table.
import controller.main
import controller.web.server  # noqa: F401 - its tables are compared with the database
from controller.store import SchemaAheadError, SchemaBehindError, Store, metadata
from controller.store.migrate import head, state_of
from protocol.messages import Event

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 25, 23, 0, tzinfo=UTC)
# What releases before 6cc7da1 lacked: columns added at start-up, tables made on first use.
LATE_COLUMNS = {"clusters": ["state_reason"], "cap_alerts": ["msg_type", "outcome"]}
LATE_TABLES = ["web_sessions", "heartbeats", "cap_alerts", "holdings"]
# Tables the revisions after the baseline add (empty after an upgrade), and columns they
# add to existing tables with the value an existing row gets.
NEW_TABLES = {
    "confirmations": "0002",
    "event_conflicts": "0003", "cluster_keys": "0003", "enrolment_tokens": "0003",
    "enrolments": "0003",
    "state_changes": "0006",
    "leadership": "0008",
}
NEW_COLUMNS: dict[str, dict[str, Any]] = {
    "events": {"key_id": "", "digest": None, "seconds": None},  # 0003, 0005
    "cap_alerts": dict.fromkeys(("level", "repeat", "every_s", "expires_at", "due_at")),  # 0007
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        (tmp_path / "var").mkdir()
        yield f"sqlite:///{tmp_path / 'var' / 'controller.db'}"
    else:
        yield from postgres_database("loa_test_migrations")


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    made = create_engine(url)
    yield made
    made.dispose()


def build_old_store(engine: Engine) -> None:
    """The database as the last release before migrations created it."""
    ddl = (DATA / f"store-6cc7da1.{engine.dialect.name}.sql").read_text(encoding="utf-8")
    statements = [
        "\n".join(line for line in part.splitlines() if not line.startswith("--")).strip()
        for part in ddl.split(";\n")
    ]
    with engine.begin() as conn:
        for statement in statements:
            if statement:
                conn.exec_driver_sql(statement)


def value(column: Any, row: int) -> Any:
    """A value for every column of a row, distinct per row (keys stay unique)."""
    kind = column.type
    if isinstance(kind, Boolean):
        return row % 2 == 1
    if isinstance(kind, Integer):
        return row
    if isinstance(kind, Float):
        return row + 0.5
    if isinstance(kind, DateTime):
        return T0.replace(minute=row)
    if isinstance(kind, String) and kind.length is not None:  # VARCHAR(n)
        return f"{column.name}-{row}"[: kind.length]
    return f'["{column.name}-{row}"]'  # TEXT columns hold JSON lists


def fill(engine: Engine, rows: int = 2) -> dict[str, list[tuple[Any, ...]]]:
    """Rows in every column of every table there; return them as read back."""
    found = MetaData()
    found.reflect(engine)
    with engine.begin() as conn:
        for table in found.sorted_tables:
            conn.execute(insert(table), [
                {c.name: value(c, row) for c in table.columns} for row in range(1, rows + 1)
            ])
    return read(engine)


def columns_of(engine: Engine) -> dict[str, list[str]]:
    """The columns of every table there."""
    found = MetaData()
    found.reflect(engine)
    return {t.name: [c.name for c in t.columns] for t in found.sorted_tables}


def assert_new_columns(engine: Engine, rows: int, created: Sequence[str] = ()) -> None:
    """The columns later revisions add to existing tables hold, in each of the `rows`
    existing rows, the value an existing row gets (`created`: tables the upgrade made
    anew, empty)."""
    with engine.connect() as conn:
        for table, added in NEW_COLUMNS.items():
            got = conn.execute(text(f"SELECT {', '.join(added)} FROM {table}")).all()
            expected = 0 if table in created else rows
            assert [tuple(r) for r in got] == [tuple(added.values())] * expected


def read(
    engine: Engine, only: dict[str, list[str]] | None = None
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but alembic_version, in key order; `only`: those columns."""
    found = MetaData()
    found.reflect(engine)
    out = {}
    with engine.connect() as conn:
        for table in found.sorted_tables:
            if table.name == "alembic_version":
                continue
            names = (only or {}).get(table.name) or [c.name for c in table.columns]
            keys = list(table.primary_key.columns) or list(table.columns)
            query = select(*(table.c[n] for n in names)).order_by(*keys)
            out[table.name] = [tuple(r) for r in conn.execute(query)]
    return out


def cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=120, cwd=config.parent, check=False,
    )


def write_config(tmp_path: Path, url: str) -> Path:
    """A controller config on the repository's fleet and playlists, storing at url."""
    path = tmp_path / "controller.yaml"
    path.write_text(
        "broker_url: mqtt://127.0.0.1:1\n"
        f"fleet: {REPO / 'config' / 'fleet.yaml'}\n"
        f"playlists: [{REPO / 'playlists'}]\n"
        "timezone: Asia/Ho_Chi_Minh\n"
        f"store_url: {url}\n"
        f"private_key: {tmp_path / 'never-read.key'}\n"
        f"content_dir: {tmp_path / 'content'}\n",
        encoding="utf-8",
    )
    return path


def differences(engine: Engine) -> list[Any]:
    """What differs between the database and the tables the code defines."""
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), metadata))


# --- an empty database ---------------------------------------------------------------------


def test_an_empty_database_is_created_at_head_with_the_tables_the_code_defines(
    url: str, engine: Engine
) -> None:
    store = Store(url)
    store.close()
    assert state_of(engine).current
    assert state_of(engine).revision == head()
    assert differences(engine) == []


# --- a database from the last release --------------------------------------------------------


def test_a_database_from_the_last_release_is_upgraded_in_place_with_every_row(
    url: str, engine: Engine, tmp_path: Path
) -> None:
    build_old_store(engine)
    before = fill(engine)
    assert all(len(rows) == 2 for rows in before.values()), before.keys()
    assert len(before) == len(metadata.tables) - len(NEW_TABLES)
    kept = columns_of(engine)
    config = write_config(tmp_path, url)

    current = cli("db", "current", config=config)
    assert current.returncode == 1, current
    assert "no schema version" in current.stdout
    assert "loa-controller db upgrade" in current.stdout

    refused = cli("run", config=config)
    assert refused.returncode == 1, refused
    assert f"loa-controller db upgrade --config {config}" in refused.stderr
    assert "Nothing was started" in refused.stderr
    assert "alembic_version" not in inspect(engine).get_table_names()  # left as it was
    with pytest.raises(SchemaBehindError, match="db upgrade"):
        Store(url)

    upgraded = cli("db", "upgrade", config=config)
    assert upgraded.returncode == 0, upgraded
    assert f"to revision {head()} (head); every row kept" in upgraded.stdout
    assert read(engine, kept) == {**before, **{table: [] for table in NEW_TABLES}}
    assert_new_columns(engine, rows=2)
    assert differences(engine) == []
    again = cli("db", "current", config=config)
    assert (again.returncode, again.stdout.strip().endswith("up to date.")) == (0, True), again

    store = Store(url)  # and the code reads what the old release wrote
    try:
        assert [r.id for r in store.clusters.fleet_rows()] == ["id-1"]  # in_fleet: row 1
        assert store.events.count() == 2
        assert store.marks.get("name-2") == T0.replace(minute=2)
        latest = store.approvals.latest("programme-1")
        assert latest is not None
        assert latest.content == ["content-1"]
    finally:
        store.close()


def test_a_database_from_an_older_release_gets_what_it_lacked_and_keeps_its_rows(
    url: str, engine: Engine, tmp_path: Path
) -> None:
    build_old_store(engine)
    with engine.begin() as conn:
        for table, columns in LATE_COLUMNS.items():
            for column in columns:
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        for table in LATE_TABLES:
            conn.execute(text(f"DROP TABLE {table}"))
    before = fill(engine)
    assert not set(LATE_TABLES) & before.keys()

    kept = columns_of(engine)
    upgraded = cli("db", "upgrade", config=write_config(tmp_path, url))
    assert upgraded.returncode == 0, upgraded
    after = read(engine, kept)
    assert {table: after[table] for table in before} == before
    assert {table: after[table] for table in LATE_TABLES} == {table: [] for table in LATE_TABLES}
    assert {table: after[table] for table in NEW_TABLES} == {table: [] for table in NEW_TABLES}
    assert_new_columns(engine, rows=2, created=LATE_TABLES)
    assert differences(engine) == []
    with engine.connect() as conn:
        added = conn.execute(text("SELECT state_reason FROM clusters")).scalars().all()
    assert added == [None, None]
    store = Store(url)
    try:
        assert [r.id for r in store.clusters.fleet_rows()] == ["id-1"]
    finally:
        store.close()


def test_an_upgrade_that_fails_leaves_the_database_as_it_was(
    url: str, engine: Engine, tmp_path: Path
) -> None:
    build_old_store(engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE clusters DROP COLUMN state_reason"))
        conn.execute(text("DROP TABLE web_sessions"))
        # Taken by another table: creating web_sessions' index fails, after clusters
        # has had its column added and other tables were checked.
        conn.execute(text("CREATE INDEX ix_web_sessions_user_name ON marks (name)"))
    before = fill(engine)

    failed = cli("db", "upgrade", config=write_config(tmp_path, url))
    assert failed.returncode == 1, failed
    assert "the upgrade failed, and was undone" in failed.stderr
    assert "ix_web_sessions_user_name" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert read(engine) == before
    names = inspect(engine)
    assert "web_sessions" not in names.get_table_names()
    assert "alembic_version" not in names.get_table_names()
    assert "state_reason" not in {c["name"] for c in names.get_columns("clusters")}


# --- refusals ------------------------------------------------------------------------------------


def test_tables_that_are_not_a_loa_store_are_refused_and_left_as_they_were(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE clusters (id INTEGER PRIMARY KEY, colour TEXT)"))
    refused = cli("db", "upgrade", config=write_config(tmp_path, url))
    assert refused.returncode == 1, refused
    assert "table clusters lacks column(s) commune, commune_name" in refused.stderr
    assert "table clusters has column(s) colour no release of Loa made" in refused.stderr
    assert "Nothing was changed" in refused.stderr
    assert inspect(engine).get_table_names() == ["clusters"]
    engine.dispose()


def test_a_database_of_a_newer_release_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    Store(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaAheadError, match="newer release of Loa"):
        Store(url)
    config = write_config(tmp_path, url)
    current = cli("db", "current", config=config)
    assert current.returncode == 1, current
    assert "revision 9999, which this release does not know" in current.stdout
    refused = cli("db", "upgrade", config=config)
    assert refused.returncode == 1, refused
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "9999"
    engine.dispose()


def test_db_current_on_a_database_not_made_yet_says_what_creates_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'var' / 'none.db'}"
    current = cli("db", "current", config=write_config(tmp_path, url))
    assert current.returncode == 0, current
    assert f"no database at {tmp_path / 'var' / 'none.db'} yet" in current.stdout
    assert not (tmp_path / "var" / "none.db").exists()


# --- the migrations ship with the package ----------------------------------------------------


def test_every_migration_file_is_package_data() -> None:
    """An installed controller (not this checkout) must find its revisions."""
    import configparser
    from fnmatch import fnmatch

    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    patterns = setup["options.package_data"]["controller"].split()
    package = REPO / "controller"
    shipped = [
        p.relative_to(package).as_posix()
        for p in (package / "store" / "migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert "store/migrations/env.py" in shipped
    assert "store/migrations/versions/0001_baseline.py" in shipped
    unshipped = [f for f in shipped if not any(fnmatch(f, pat) for pat in patterns)]
    assert unshipped == []


def test_a_database_at_the_baseline_is_upgraded_to_confirmations_with_its_rows(
    url: str, engine: Engine, tmp_path: Path
) -> None:
    """Revision 0002 adds the table of which cluster confirmed which play; a database the
    first release with migrations made (at 0001) gets it, every row kept."""
    from alembic import command

    from controller.store.migrate import _config

    with engine.begin() as conn:
        command.upgrade(_config(conn), "0001")
    assert state_of(engine).revision == "0001"
    assert "confirmations" not in inspect(engine).get_table_names()
    before = fill(engine)
    kept = columns_of(engine)
    with engine.begin() as conn:  # fill() wrote rows in alembic_version too: one again
        conn.execute(text("DELETE FROM alembic_version"))
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('0001')"))
    with pytest.raises(SchemaBehindError, match="db upgrade"):
        Store(url)

    upgraded = cli("db", "upgrade", config=write_config(tmp_path, url))
    assert upgraded.returncode == 0, upgraded
    assert state_of(engine).revision == head()
    assert read(engine, kept) == {**before, **{table: [] for table in NEW_TABLES}}
    assert differences(engine) == []
    store = Store(url)
    try:
        from controller.confirmations import ConfirmationRecords

        assert ConfirmationRecords(store.engine).waiting_by_cluster() == {}
    finally:
        store.close()


def test_a_database_at_confirmations_gets_cluster_identities_with_its_rows(
    url: str, engine: Engine, tmp_path: Path
) -> None:
    """Revision 0003 adds cluster keys, enrolment tokens and requests and event conflicts,
    and keys events by the cluster key that signed them: a database at 0002 keeps every
    row, its events as unsigned ones; the same number under a key is a new event."""
    from alembic import command

    from controller.store.migrate import _config

    with engine.begin() as conn:
        command.upgrade(_config(conn), "0002")
    assert "cluster_keys" not in inspect(engine).get_table_names()
    before = fill(engine)
    kept = columns_of(engine)
    with engine.begin() as conn:  # fill() wrote rows in alembic_version too: one again
        conn.execute(text("DELETE FROM alembic_version"))
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('0002')"))

    upgraded = cli("db", "upgrade", config=write_config(tmp_path, url))
    assert upgraded.returncode == 0, upgraded
    assert state_of(engine).revision == head()
    new = [table for table, revision in NEW_TABLES.items() if revision >= "0003"]
    assert read(engine, kept) == {**before, **{table: [] for table in new}}
    assert_new_columns(engine, rows=2)
    assert differences(engine) == []
    if engine.dialect.name == "postgresql":  # fill() gave the ids: move the sequence on
        with engine.begin() as conn:
            conn.execute(text(
                "SELECT setval(pg_get_serial_sequence('events', 'id'), MAX(id)) FROM events"
            ))
    store = Store(url)
    try:
        old = store.events.of_play("play_id-1")[0]
        again = Event(cluster=old["cluster"], outbox=old["outbox"], seq=old["seq"],
                      at=T0, kind="finished", play_id="play_id-1")  # fmt: skip
        assert store.events.store([(again, "0123456789abcdef")], T0).fresh == [again]
        # Unsigned, that number is taken by a row stored before digests: a duplicate.
        assert store.events.add([again], T0) == []
        assert store.events.count_conflicts() == 0
    finally:
        store.close()



def test_a_database_at_cluster_identities_gets_the_seconds_of_live_events_with_its_rows(
    url: str, engine: Engine, tmp_path: Path
) -> None:
    """Revision 0005 adds the seconds of an event (a live session's gap, or its audio aired);
    a database at 0003 keeps every row, its events without seconds."""
    from alembic import command

    from controller.store.migrate import _config

    with engine.begin() as conn:
        command.upgrade(_config(conn), "0003")
    before = fill(engine)
    kept = columns_of(engine)
    with engine.begin() as conn:  # fill() wrote rows in alembic_version too: one again
        conn.execute(text("DELETE FROM alembic_version"))
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('0003')"))

    upgraded = cli("db", "upgrade", config=write_config(tmp_path, url))
    assert upgraded.returncode == 0, upgraded
    assert state_of(engine).revision == head()
    later = [table for table, revision in NEW_TABLES.items() if revision > "0005"]
    assert read(engine, kept) == {**before, **{table: [] for table in later}}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT seconds FROM events")).all() == [(None,)] * 2
    assert differences(engine) == []
    if engine.dialect.name == "postgresql":  # fill() gave the ids: move the sequence on
        with engine.begin() as conn:
            conn.execute(text(
                "SELECT setval(pg_get_serial_sequence('events', 'id'), MAX(id)) FROM events"
            ))
    store = Store(url)
    try:
        gap = Event(cluster="c-1", outbox="o-live", seq=1, at=T0, kind="gap",
                    play_id="ab" * 16, reason="1.20 s of silence", seconds=1.2)  # fmt: skip
        assert store.events.store([(gap, "0123456789abcdef")], T0).fresh == [gap]
        assert store.events.of_play("ab" * 16)[0]["seconds"] == 1.2
    finally:
        store.close()
