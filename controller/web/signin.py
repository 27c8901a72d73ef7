"""Signing in: the one path the page (POST /login) and the API (POST /api/v1/login) take.

The name is normalised once (controller.users.normal_name) and that one form is what
the limit counts and what is looked up in the users file, so no spelling of a name has
a budget of its own. Then: the limit (controller.web.limiter), the password, the count
of a failure or the end of one, and a new session.

Refusals are logged at most once a minute (how many, and the last address), never with
the name typed (it may be a password typed in the wrong field).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from controller.users import User, UserDirectory, normal_name
from controller.web.limiter import SignInLimiter
from controller.web.security import Session, SessionStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignedIn:
    session: Session
    user: User


@dataclass(frozen=True)
class Refused:
    """401: wrong name or password; 429: too many failures, try again in retry_after s."""

    status: int
    retry_after: int = 0


class RefusalLog:
    """Sign-in refusals, logged at most once per `every_s` with how many there were."""

    def __init__(
        self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._every = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next = float("-inf")
        self._failed = 0
        self._held = 0
        # Since the start, for /metrics: sign-ins, wrong names or passwords, held back.
        self.signed_in = 0
        self.wrong = 0
        self.limited = 0

    def succeeded(self) -> None:
        with self._lock:
            self.signed_in += 1

    def note(self, refused: Refused, address: str) -> None:
        now = self._clock()
        with self._lock:
            if refused.status == 429:
                self._held += 1
                self.limited += 1
            else:
                self._failed += 1
                self.wrong += 1
            if now < self._next:
                return
            self._next = now + self._every
            failed, held = self._failed, self._held
            self._failed = self._held = 0
        log.warning(
            "sign-in refused: %d wrong name or password, %d held back by the limit, since "
            "the last report (latest from %s); see docs/web.md, Sign-in limit",
            failed, held, address,
        )


def sign_in(
    users: UserDirectory,
    limiter: SignInLimiter,
    sessions: SessionStore,
    *,
    name: str,
    password: str,
    address: str,
    refusals: RefusalLog | None = None,
) -> SignedIn | Refused:
    """Sign `name` in from `address` with `password`, within the limit."""
    name = normal_name(name)
    wait = limiter.retry_after(name, address)
    if wait:
        answer = Refused(429, wait)
    else:
        user = users.authenticate(name, password)
        if user is not None:
            limiter.succeeded(name, address)
            if refusals is not None:
                refusals.succeeded()
            return SignedIn(sessions.create(user.name), user)
        limiter.failed(name, address)
        answer = Refused(401)
    if refusals is not None:
        refusals.note(answer, address)
    return answer
