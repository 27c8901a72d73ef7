"""Users of the web app and the API: who they are, their role and where in the tree.

The users file (config `web.users_file`, e.g. config/users.yaml) is edited by the admin
or with `loa-controller user add/passwd/disable/list`; it is read again when it changes,
so a disabled user is refused from the next request on::

    users:
      - name: can-bo-tan-binh
        display_name: Nguyễn Văn An
        role: operator            # commune staff: sends urgent announcements
        scope: [xa-tan-binh]      # fleet node ids (or cluster ids) this user may reach
        password: $argon2id$v=19$m=65536,t=3,p=4$...
      - name: quan-ly-tinh
        role: manager             # sees and targets its subtree, approves, reads the audit log
        scope: [tinh-hau-giang]

Roles:
- ``operator`` (cán bộ xã): sends and stops urgent announcements to the clusters under
  its scope, nothing else.
- ``manager`` (cán bộ quản lý phát thanh): the same over its subtree, plus approvals of
  scheduled programmes and the audit log.

Passwords are stored as Argon2id hashes (argon2-cffi's defaults, RFC 9106); the file
holds no password in clear. A scope is checked against the fleet when the web app
starts and on every request: a scope naming a node the fleet no longer has reaches
nothing.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from protocol.config_errors import ConfigError, Problem
from protocol.l10n import _
from protocol.validation import validate
from protocol.yamlload import load_yaml

Role = Literal["operator", "manager"]
ROLES: tuple[Role, ...] = ("operator", "manager")
MIN_PASSWORD_LENGTH = 8

_hasher = PasswordHasher()  # Argon2id, RFC 9106 low-memory profile


def normal_name(typed: str) -> str:
    """A sign-in name as typed, in the form the users file keeps names: Unicode NFC,
    without surrounding white space, case-folded (names are lower-case). The sign-in and
    its limit both work on this form, computed once (controller.web.signin)."""
    return unicodedata.normalize("NFC", typed).strip().casefold()


def _user_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", value):
        raise ValueError(_(
            "user name {value!r}: use 1-64 lower-case letters, digits, '.', '_' or '-' "
            "(no accents or spaces), e.g. can-bo-tan-binh", value=value,
        ))
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class User(_Strict):
    """One person who signs in to the web app or the API."""

    name: Annotated[str, AfterValidator(_user_name)]
    """Sign-in name: lower-case letters, digits, '.', '_', '-'."""
    display_name: Annotated[str, Field(max_length=200)] = ""
    """The person's full name, shown in the page and the audit log."""
    role: Role
    """operator (commune staff: urgent announcements) or manager (also approvals, audit)."""
    scope: Annotated[list[str], Field(min_length=1)]
    """Fleet node ids (province, district, commune, village) or cluster ids this user may reach."""
    password: str = ""
    """Argon2id hash written by `loa-controller user add/passwd`; never a clear password."""
    disabled: bool = False
    """A disabled user cannot sign in, and its open sessions stop working."""

    @property
    def label(self) -> str:
        return self.display_name or self.name


class UsersFile(_Strict):
    """The users file."""

    users: list[User] = []


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(
            _("a password needs at least {n} characters", n=MIN_PASSWORD_LENGTH)
        )
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    if not stored:
        return False
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# Verified against when a user does not exist, so that the answer takes as long.
_DUMMY_HASH = _hasher.hash("not a real password")


def load_users(path: Path) -> list[User]:
    """Read the users file; ConfigError (file:line:col) on anything wrong in it."""
    data, locations = load_yaml(path)
    if data is None:
        return []
    parsed = validate(UsersFile, data, locations)
    if isinstance(parsed, list):
        raise ConfigError(parsed)
    seen: set[str] = set()
    problems: list[Problem] = []
    for i, user in enumerate(parsed.users):
        if user.name in seen:
            problems.append(
                locations.problem(("users", i, "name"), f"user {user.name!r} is listed twice; "
                                  "keep one")
            )
        seen.add(user.name)
    if problems:
        raise ConfigError(problems)
    return list(parsed.users)


def save_users(path: Path, users: Iterable[User]) -> None:
    """Write the users file atomically, readable by its owner only (it holds hashes)."""
    doc = {"users": [u.model_dump(exclude_defaults=True) for u in users]}
    for entry in doc["users"]:
        entry.setdefault("role", "operator")
    text = (
        "# Loa users: edit with `loa-controller user add/passwd/disable`.\n"
        "# Passwords are Argon2id hashes; the controller re-reads this file when it changes.\n"
        + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".users.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(name, 0o600)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


class UserDirectory:
    """The users file, re-read when it changes on disk (its inode, mtime and size).

    `save_users` replaces the file, so every save is a new inode: a change is seen even
    within one tick of a coarse file-system clock and at the same size (a new password
    hash is as long as the old one).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}
        self.problem: str | None = None

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        if stamp == (0, 0, 0):
            self._users, self.problem = {}, f"{self.path}: no users file; add a user first"
            return
        try:
            self._users = {u.name: u for u in load_users(self.path)}
            self.problem = None
        except (ConfigError, OSError) as exc:
            # Keep nobody signed in on a broken file rather than guess.
            self._users, self.problem = {}, str(exc)

    def get(self, name: str) -> User | None:
        with self._lock:
            self._refresh()
            return self._users.get(name)

    def all(self) -> list[User]:
        with self._lock:
            self._refresh()
            return sorted(self._users.values(), key=lambda u: u.name)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user, if the name exists, is enabled and the password matches."""
        user = self.get(name)
        if user is None or user.disabled:
            verify_password(_DUMMY_HASH, password)
            return None
        return user if verify_password(user.password, password) else None


# --- what `loa-controller user ...` does --------------------------------------------------


def _read_or_empty(path: Path) -> list[User]:
    return load_users(path) if path.exists() else []


def add_user(
    path: Path, name: str, role: Role, scope: list[str], password: str, display_name: str = ""
) -> User:
    users = _read_or_empty(path)
    if any(u.name == name for u in users):
        raise ValueError(f"user {name!r} already exists in {path}; use `user passwd` instead")
    user = User(
        name=name, display_name=display_name, role=role, scope=scope,
        password=hash_password(password),
    )
    save_users(path, [*users, user])
    return user


def find_user(path: Path, name: str) -> User:
    users = _read_or_empty(path)
    for user in users:
        if user.name == name:
            return user
    known = ", ".join(u.name for u in users) or "none"
    raise ValueError(f"no user {name!r} in {path} (users: {known})")


def _replace(path: Path, name: str, **changes: object) -> User:
    users = _read_or_empty(path)
    for i, user in enumerate(users):
        if user.name == name:
            users[i] = user.model_copy(update=changes)
            save_users(path, users)
            return users[i]
    known = ", ".join(u.name for u in users) or "none"
    raise ValueError(f"no user {name!r} in {path} (users: {known})")


def set_password(path: Path, name: str, password: str) -> User:
    return _replace(path, name, password=hash_password(password))


def set_disabled(path: Path, name: str, disabled: bool = True) -> User:
    return _replace(path, name, disabled=disabled)
