"""Backing up, restoring and pruning the store with `loa-controller db` as a process:
SQLite while a controller's store is open and its last writes are still in the WAL,
PostgreSQL with pg_dump where a server answers (conftest.postgres_database); the
controller's systemd unit verified by systemd."""

from __future__ import annotations

import configparser
import gzip
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import postgres_database, require

from controller.broker_state import CONNECTED, STOPPED
from controller.store import Store
from controller.store.retention import cutoff, prune
from protocol.messages import Event

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "scripts" / "loa-controller.service"
HCM = ZoneInfo("Asia/Ho_Chi_Minh")


def config(tmp: Path, store_url: str) -> Path:
    path = tmp / "controller.yaml"
    path.write_text(f"fleet: fleet.yaml\nplaylists: [playlists]\nstore_url: {store_url}\n"
                    "private_key: k\ncontent_dir: content\n", encoding="utf-8")
    return path


def db(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "db", *args, "--config", str(config_file)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120, check=False,
    )


def events(store: Store, first: int, count: int, at: datetime) -> None:
    store.events.add([
        Event(cluster="c-01", outbox="o1", seq=n, at=at, kind="finished", play_id=f"p-{n}",
              bulletin="Bản tin", level="normal")
        for n in range(first, first + count)
    ], at)


def test_a_sqlite_store_in_use_is_backed_up_whole_and_restored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    cfg = config(tmp_path, url)
    store = Store(url)  # open, as a running controller holds it
    try:
        events(store, 1, 50, datetime.now(UTC))
        wal = tmp_path / "controller.db-wal"
        assert wal.stat().st_size > 0  # the last writes are in the WAL: a file copy misses them
        done = db(cfg, "backup", str(tmp_path / "backup.db"))
        assert done.returncode == 0, done.stderr
        assert "schema revision" in done.stdout
        assert "loa-controller db restore" in done.stdout
        with sqlite3.connect(tmp_path / "backup.db") as copy:
            assert copy.execute("SELECT count(*) FROM events").fetchone() == (50,)
        events(store, 51, 25, datetime.now(UTC))  # written after the backup
        store.marks.set(CONNECTED, datetime.now(UTC))  # the controller ran, no clean stop
    finally:
        store.close()

    refused = db(cfg, "restore", str(tmp_path / "backup.db"))
    assert refused.returncode == 1
    assert "stop it first" in refused.stderr
    store = Store(url)
    store.marks.set(STOPPED, datetime.now(UTC) + timedelta(seconds=1))
    store.close()

    done = db(cfg, "restore", str(tmp_path / "backup.db"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"restored {tmp_path / 'controller.db'} from ")
    store = Store(url)  # opens: at this release's schema
    try:
        assert store.events.count() == 50
    finally:
        store.close()
    assert db(cfg, "current").returncode == 0


def test_a_backup_of_no_database_and_a_restore_of_something_else_are_refused(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, f"sqlite:///{tmp_path / 'none.db'}")
    done = db(cfg, "backup", str(tmp_path / "b.db"))
    assert done.returncode == 1
    assert "no database at" in done.stderr
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    done = db(cfg, "restore", str(tmp_path / "junk.db"))
    assert done.returncode == 1
    assert "is not a SQLite database" in done.stderr
    assert not (tmp_path / "none.db").exists()


def test_pruning_keeps_whole_months_of_the_retention_period_and_archives_first(
    tmp_path: Path,
) -> None:
    now = datetime(2028, 3, 15, 9, 0, tzinfo=UTC)
    assert cutoff(now, timedelta(days=730), HCM) == datetime(2026, 3, 1, tzinfo=HCM)
    store = Store(f"sqlite:///{tmp_path / 'controller.db'}")
    try:
        events(store, 1, 3, datetime(2026, 2, 28, 16, 59, tzinfo=UTC))  # 23:59 local: old
        events(store, 4, 2, datetime(2026, 2, 28, 17, 0, tzinfo=UTC))  # 1 March local: kept
        events(store, 6, 4, datetime(2027, 6, 1, tzinfo=UTC))
        counted = prune(store.db, now, timedelta(days=730), HCM, dry_run=True)
        assert (counted.events, store.events.count()) == (3, 9)
        archive = tmp_path / "events-2026.jsonl.gz"
        done = prune(store.db, now, timedelta(days=730), HCM, archive=archive)
        assert done.events == 3
        assert store.events.count() == 6
        with gzip.open(archive, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        assert sorted(r["seq"] for r in rows) == [1, 2, 3]
        assert {r["table"] for r in rows} == {"events"}
        assert rows[0]["at"].startswith("2026-02-28T16:59:00")
        assert "before 2026-03-01" in done.describe(HCM)
        again = prune(store.db, now, timedelta(days=730), HCM)
        assert again.events == 0
    finally:
        store.close()


def test_prune_from_the_command_line_uses_the_configured_retention(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    cfg = config(tmp_path, url)
    cfg.write_text(cfg.read_text() + "events_retention_days: 31\n", encoding="utf-8")
    store = Store(url)
    events(store, 1, 2, datetime.now(UTC) - timedelta(days=120))
    events(store, 3, 2, datetime.now(UTC))
    store.close()
    done = db(cfg, "prune", "--archive", str(tmp_path / "old.jsonl.gz"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 2 events"), done.stdout
    store = Store(url)
    assert store.events.count() == 2
    store.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_database("loa_test_backup")


def test_a_postgresql_store_is_backed_up_with_pg_dump_and_restored(
    tmp_path: Path, pg_url: str
) -> None:
    require("pg_dump", shutil.which("pg_dump") is not None, "apt-get install postgresql-client")
    cfg = config(tmp_path, pg_url)
    store = Store(pg_url)
    try:
        events(store, 1, 20, datetime.now(UTC))
    finally:
        store.close()
    done = db(cfg, "backup", str(tmp_path / "loa.dump"))
    assert done.returncode == 0, done.stderr
    assert "with pg_dump" in done.stdout
    store = Store(pg_url)
    events(store, 21, 5, datetime.now(UTC))
    store.close()
    done = db(cfg, "restore", "--force", str(tmp_path / "loa.dump"))
    assert done.returncode == 0, done.stderr
    store = Store(pg_url)
    try:
        assert store.events.count() == 20
    finally:
        store.close()


def test_the_controller_unit_is_hardened_and_verified_by_systemd(tmp_path: Path) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    service = parser["Service"]
    assert service["ExecStart"].startswith("/opt/loa/bin/loa-controller ")
    assert service["ExecStart"].endswith(" run --config /etc/loa/controller.yaml")
    assert service["User"] == "loa"
    assert service["Restart"] == "always"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == ""
    assert service["PrivateDevices"] == "yes"
    require("systemd-analyze", shutil.which("systemd-analyze") is not None,
            "apt-get install systemd")
    copy = tmp_path / "loa-controller.service"
    copy.write_text(UNIT.read_text().replace("/opt/loa/bin/loa-controller",
                                             shutil.which("true") or "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if str(copy) in line]
    assert complaints == [], "\n".join(complaints)
