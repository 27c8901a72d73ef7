"""Backing up and restoring the store: `loa-controller db backup FILE`, `db restore FILE`.

SQLite: the store runs in WAL mode, so the database file alone misses what is still in
its `-wal` file; copying it while the controller writes gives a torn or stale copy. The
backup goes through SQLite's online backup API instead (one step, under a read
transaction: a consistent snapshot while the controller keeps running), into
`FILE.part`, checked (`PRAGMA integrity_check`, the schema revision read), then renamed
to FILE. A restore copies a backup into the store the same way, after checking that it
is a Loa store this release can open (or upgrade).

PostgreSQL: `pg_dump --format=custom` to FILE (the password, if the URL has one, goes to
pg_dump in PGPASSWORD, not on its command line), and `pg_restore --clean --if-exists
--single-transaction` back.

This module is the edge that runs pg_dump and pg_restore (subprocess).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from controller.store.migrate import head
from protocol.l10n import _


class BackupError(Exception):
    """A backup or restore that could not be made; the message says why and what to do."""


@dataclass(frozen=True)
class Done:
    what: str  # one line for the operator


def sqlite_file(url: str) -> Path | None:
    """The database file of a sqlite:/// URL; None for another database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise BackupError(_("{url}: an in-memory database cannot be backed up", url=url))
    return Path(parsed.database)


def backup(url: str, target: Path) -> Done:
    """Write a consistent copy of the store at url to target (replaced only when whole)."""
    source = sqlite_file(url)
    if source is None:
        return _pg_dump(make_url(url), target)
    if not source.is_file():
        raise BackupError(_("no database at {source}: nothing to back up (is store_url right?)",
                            source=source))
    part = target.with_name(target.name + ".part")
    part.unlink(missing_ok=True)
    try:
        with closing(_connect(source, readonly=True)) as src, closing(_connect(part)) as dst:
            src.backup(dst)
        revision = _check(part)
    except sqlite3.Error as exc:
        part.unlink(missing_ok=True)
        raise BackupError(_("backing up {source} failed: {exc}", source=source, exc=exc)) from None
    os.replace(part, target)
    return Done(_(
        "backed up {source} to {target} ({size} bytes, schema revision "
        "{revision}); restore with: loa-controller db restore {target}", source=source,
        target=target, size=target.stat().st_size, revision=revision,
    ))


def restore(url: str, backup_file: Path) -> Done:
    """Replace the store at url with backup_file's content (the controller stopped)."""
    if not backup_file.is_file():
        raise BackupError(_("{file} does not exist", file=backup_file))
    target = sqlite_file(url)
    if target is None:
        return _pg_restore(make_url(url), backup_file)
    try:
        revision = _check(backup_file)
    except sqlite3.Error as exc:
        raise BackupError(
            _("{file} is not a SQLite database: {exc}", file=backup_file, exc=exc)
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with closing(_connect(backup_file, readonly=True)) as src, \
                closing(_connect(target)) as dst:
            src.backup(dst)
    except sqlite3.Error as exc:
        raise BackupError(_(
            "restoring {file} into {target} failed: {exc} (is the controller still "
            "running? stop it first)", file=backup_file, target=target, exc=exc,
        )) from None
    behind = "" if revision == head() else _(
        "; it is at revision {revision}, this release at {head}: run "
        "`loa-controller db upgrade` before starting the controller", revision=revision,
        head=head(),
    )
    return Done(_("restored {target} from {file} (schema revision {revision}){behind}",
                  target=target, file=backup_file, revision=revision, behind=behind))


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    return sqlite3.connect(path, timeout=30)


def _check(path: Path) -> str:
    """The schema revision of a Loa store in this SQLite file, after an integrity check;
    BackupError if it is not one."""
    with closing(_connect(path, readonly=True)) as conn:
        verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if verdict != "ok":
            raise BackupError(
                _("{path} fails SQLite's integrity check: {verdict}", path=path, verdict=verdict)
            )
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:
            row = None
    if row is None:
        raise BackupError(_("{path} is not a Loa store (it has no schema revision)", path=path))
    return str(row[0])


def _pg_env(url: URL) -> tuple[str, dict[str, str]]:
    """The URL as libpq takes it (no driver name, no password) and the environment."""
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _run(tool: str, args: list[str], env: dict[str, str]) -> None:
    if shutil.which(tool) is None:
        raise BackupError(_(
            "{tool} is not installed: apt-get install postgresql-client (the same major "
            "version as the server, or newer)", tool=tool,
        ))
    done = subprocess.run([tool, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BackupError(
            _("{tool} failed: {said}", tool=tool, said=done.stderr.strip() or done.returncode)
        )


def _pg_dump(url: URL, target: Path) -> Done:
    dsn, env = _pg_env(url)
    part = target.with_name(target.name + ".part")
    part.unlink(missing_ok=True)
    try:
        _run("pg_dump", ["--format=custom", "--no-owner", f"--file={part}", f"--dbname={dsn}"],
             env)
    except BackupError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, target)
    return Done(_(
        "backed up {url} to {target} with pg_dump "
        "({size} bytes); restore with: loa-controller db restore {target}",
        url=url.render_as_string(hide_password=True), target=target,
        size=target.stat().st_size,
    ))


def _pg_restore(url: URL, backup_file: Path) -> Done:
    dsn, env = _pg_env(url)
    _run("pg_restore", ["--clean", "--if-exists", "--no-owner", "--single-transaction",
                        f"--dbname={dsn}", str(backup_file)], env)
    return Done(_(
        "restored {url} from {file} with "
        "pg_restore; `loa-controller db current` tells its schema revision",
        url=url.render_as_string(hide_password=True), file=backup_file,
    ))
