"""The broker logins the controller keeps: one per cluster (user name = cluster id), and
its own.

They live in one YAML file, mode 0600, beside the controller's private key unless the
config says otherwise (`provisioning.credentials_file`)::

    # Loa broker logins: ...
    accounts:
      tan-binh-01:
        password: Zq0...            # made once, at random; the bundle's broker.password
        mosquitto: $7$101$...       # its mosquitto password-file hash, made with it
        created_at: '2026-11-26T08:00:00+00:00'

A login is made the first time a cluster is provisioned or the broker configuration is
written, and kept: writing bundles or broker files again gives the same passwords, so a
box already installed keeps working. `--rotate` makes a new one (then the broker's files
are written again and reloaded, and the box gets its new bundle). Passwords are kept in
clear because the controller writes them into bundles and broker files; the file is
readable by its owner only and is written whole or not at all (protocol/files.py).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import secrets
import stat
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from protocol.config_errors import ConfigError
from protocol.files import PRIVATE, write_atomic
from protocol.topics import ID_PATTERN
from protocol.validation import validate
from protocol.yamlload import load_yaml

log = logging.getLogger(__name__)

# mosquitto 2.0's password file (mosquitto_passwd): PBKDF2-HMAC-SHA512, 101 rounds, a
# 12-byte random salt, written `$7$<rounds>$<base64 salt>$<base64 hash>`.
MOSQUITTO_ITERATIONS = 101
MOSQUITTO_SALT_BYTES = 12
PASSWORD_BYTES = 24  # 32 URL-safe characters: no ':' (the password file's separator)

UserName = Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """The `$7$` PBKDF2-SHA512 hash mosquitto 2.0 reads from its password_file."""
    salt = salt if salt is not None else secrets.token_bytes(MOSQUITTO_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, MOSQUITTO_ITERATIONS)
    return (
        f"$7${MOSQUITTO_ITERATIONS}${base64.b64encode(salt).decode()}"
        f"${base64.b64encode(digest).decode()}"
    )


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


class Account(BaseModel):
    """One broker login."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    password: Annotated[str, Field(min_length=16, pattern=r"^[A-Za-z0-9_-]+$")]
    mosquitto: Annotated[str, Field(pattern=r"^\$7\$[0-9]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")]
    created_at: AwareDatetime

    @classmethod
    def make(cls, now: datetime) -> Account:
        password = new_password()
        return cls(password=password, mosquitto=mosquitto_hash(password), created_at=now)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accounts: dict[UserName, Account] = {}


HEADER = (
    "# Loa broker logins, kept by the controller: one per cluster (its id) and the\n"
    "# controller's own. SECRET: readable by the controller's user only (mode 0600).\n"
    "# Written by `loa-controller provision` and `loa-controller broker-config`; a new\n"
    "# password: `loa-controller provision CLUSTER --rotate`.\n"
)


class BrokerCredentials:
    """The credentials file: read it, and add or rotate logins (one writer at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Account]:
        """Every login kept; {} when the file does not exist yet."""
        if not self.path.exists():
            return {}
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            log.warning(
                "%s is readable by others (mode %o): it holds every cluster's broker password; "
                "chmod 600 it (the controller writes it 0600)", self.path, mode,
            )
        data, locations = load_yaml(self.path)
        parsed = validate(_File, data if data is not None else {}, locations)
        if isinstance(parsed, list):
            raise ConfigError(parsed)
        return dict(parsed.accounts)

    def ensure(
        self, names: Iterable[str], now: datetime, rotate: Iterable[str] = ()
    ) -> tuple[dict[str, Account], list[str]]:
        """The login of every name, making those missing and new ones for `rotate`; saved
        before this returns. Also returns the names whose password is new."""
        wanted = list(dict.fromkeys(names))
        again = set(rotate)
        with self._locked():
            accounts = self.load()
            made = []
            for name in wanted:
                if name not in accounts or name in again:
                    accounts[name] = Account.make(now)
                    made.append(name)
            if made:
                self._save(accounts)
        return {name: accounts[name] for name in wanted}, made

    def _save(self, accounts: dict[str, Account]) -> None:
        doc = {
            "accounts": {
                name: account.model_dump(mode="json") for name, account in sorted(accounts.items())
            }
        }
        text = HEADER + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        write_atomic(self.path, text.encode(), PRIVATE)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (two provision runs at once would each add their own)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def controller_login(path: Path, username: str) -> tuple[str, str] | None:
    """(user name, password) of the controller's own login, if the file holds it."""
    account = BrokerCredentials(path).load().get(username)
    return (username, account.password) if account else None
