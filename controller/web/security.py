"""Sessions and CSRF tokens of the web app and the API.

- **Sessions** are server-side: a random 256-bit id in an HttpOnly, SameSite=Lax
  cookie (or, for API clients, the same id as a Bearer token from POST /api/v1/login).
  They end after `idle` without use, at sign-out, when the user is disabled, or when
  the user's password changes. The running controller keeps them in its store
  (`StoredSessions`, table web_sessions), so a restart signs nobody out; the store holds
  only the SHA-256 of each id, never the id. `Sessions` keeps them in memory instead.
- **CSRF**: every session has its own random token. Every form carries it in a hidden
  `csrf_token` field and every state-changing API call made with the cookie carries it
  in an `X-CSRF-Token` header; it is compared in constant time. A Bearer token is not
  sent by browsers on their own, so calls made with one need no CSRF token.

The sign-in itself, and its limit, are controller.web.signin and controller.web.limiter.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from controller.store import Store, WebSession

SESSION_COOKIE = "loa_session"
#: Sessions end after this long without use.
IDLE_S = 8 * 3600


@dataclass
class Session:
    id: str
    user: str
    csrf: str
    created: float
    last_used: float = field(default=0.0)
    #: password_fingerprint() of the user's password hash when the session began.
    fingerprint: str = ""


def password_fingerprint(password_hash: str) -> str:
    """What a session remembers of its user's password: the SHA-256 of its Argon2 hash."""
    return hashlib.sha256(password_hash.encode()).hexdigest()


def session_id_hash(session_id: str) -> str:
    """How the store finds a session: the SHA-256 of its id (the id is never stored)."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def _new_session(user: str, now: float, fingerprint: str) -> Session:
    """A fresh session: a random id and CSRF token, used now."""
    return Session(
        secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now, fingerprint
    )


def _no_fingerprint(_user: str) -> str:
    return ""


class SessionStore(Protocol):
    """Where the web app keeps its sessions (WebContext.sessions)."""

    #: The current password fingerprint of a user name, recorded by create().
    fingerprint_of: Callable[[str], str]

    def create(self, user: str) -> Session: ...
    def get(self, session_id: str | None) -> Session | None: ...
    def drop(self, session_id: str | None) -> None: ...
    def drop_user(self, user: str) -> None: ...


class Sessions:
    """Sessions in memory: a restart ends them all."""

    def __init__(
        self, idle_s: float = IDLE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._idle = idle_s
        self._clock = clock
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}
        self.fingerprint_of: Callable[[str], str] = _no_fingerprint

    def create(self, user: str) -> Session:
        now = self._clock()
        session = _new_session(user, now, self.fingerprint_of(user))
        with self._lock:
            self._expire(now)
            self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = self._clock()
        with self._lock:
            session = self._by_id.get(session_id)
            if session is None:
                return None
            if now - session.last_used > self._idle:
                del self._by_id[session_id]
                return None
            session.last_used = now
            return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._by_id.pop(session_id, None)

    def drop_user(self, user: str) -> None:
        with self._lock:
            for sid in [s.id for s in self._by_id.values() if s.user == user]:
                del self._by_id[sid]

    def _expire(self, now: float) -> None:
        for sid in [s.id for s in self._by_id.values() if now - s.last_used > self._idle]:
            del self._by_id[sid]


class StoredSessions:
    """Sessions in the controller's store (controller.store.web_sessions): they survive a
    restart. The same rules as `Sessions`: a session ends after `idle_s` without use
    (measured on `clock`, wall-clock seconds), at drop(), or through the checks of
    controller.web.app.session_of (user gone or disabled, password changed).

    Each get() is one statement (find the row if not expired, and move its last use and
    expiry on). Expired rows are deleted when one is looked up, when a session is created,
    and at most every `purge_every_s` by a get().
    """

    def __init__(
        self,
        store: Store,
        idle_s: float = IDLE_S,
        clock: Callable[[], float] = time.time,
        purge_every_s: float = 600.0,
    ) -> None:
        self._store = store
        self._idle = idle_s
        self._clock = clock
        self._purge_every = purge_every_s
        self._lock = threading.Lock()
        self._next_purge = float("-inf")
        self.fingerprint_of: Callable[[str], str] = _no_fingerprint

    def create(self, user: str) -> Session:
        now = self._clock()
        session = _new_session(user, now, self.fingerprint_of(user))
        self._store.web_sessions.add(session_id_hash(session.id), WebSession(
            user=user, csrf=session.csrf, fingerprint=session.fingerprint,
            created=_at(now), last_seen=_at(now), expires=_at(now + self._idle),
        ))
        with self._lock:
            self._next_purge = now + self._purge_every
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = self._clock()
        found = self._store.web_sessions.use(
            session_id_hash(session_id), _at(now), _at(now + self._idle)
        )
        with self._lock:
            purge = now >= self._next_purge
            if purge:
                self._next_purge = now + self._purge_every
        if purge:
            self._store.web_sessions.purge(_at(now))
        if found is None:
            return None
        return Session(
            session_id, found.user, found.csrf, found.created.timestamp(), now,
            found.fingerprint,
        )

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._store.web_sessions.drop(id_sha256=session_id_hash(session_id))

    def drop_user(self, user: str) -> None:
        self._store.web_sessions.drop(user=user)


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf.encode(), (token or "").encode())
