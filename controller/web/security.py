"""Sessions, CSRF tokens and the sign-in rate limit of the web app and the API.

- **Sessions** are server-side: a random 256-bit id in an HttpOnly, SameSite=Lax
  cookie (or, for API clients, the same id as a Bearer token from POST /api/v1/login).
  They end after `idle` without use, at sign-out, or when the user is disabled. They
  live in the controller's memory: a restart signs everybody out.
- **CSRF**: every session has its own random token. Every form carries it in a hidden
  `csrf_token` field and every state-changing API call made with the cookie carries it
  in an `X-CSRF-Token` header; it is compared in constant time. A Bearer token is not
  sent by browsers on their own, so calls made with one need no CSRF token.
- **Rate limit**: after `max_failures` failed sign-ins within `window` for one user
  name, or for one client address, further attempts are refused (HTTP 429) until the
  window has passed, whether the password is right or not.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

SESSION_COOKIE = "loa_session"


@dataclass
class Session:
    id: str
    user: str
    csrf: str
    created: float
    last_used: float = field(default=0.0)


class Sessions:
    def __init__(
        self, idle_s: float = 8 * 3600, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._idle = idle_s
        self._clock = clock
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}

    def create(self, user: str) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now)
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


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf.encode(), (token or "").encode())


class LoginLimiter:
    """Failed sign-ins per user name and per client address, in a sliding window."""

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def retry_after(self, user: str, address: str) -> int:
        """Seconds until a sign-in may be tried again; 0: it may be tried now."""
        now = self._clock()
        wait = 0.0
        with self._lock:
            for key in (f"user:{user}", f"addr:{address}"):
                q = self._recent(key, now)
                if len(q) >= self.max_failures:
                    wait = max(wait, self.window_s - (now - q[0]))
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, user: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for key in (f"user:{user}", f"addr:{address}"):
                self._recent(key, now).append(now)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{user}", None)
