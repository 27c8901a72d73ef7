"""Which controller leads: several `loa-controller run` on one store, one of them leading.

Only the leader schedules, dispatches, takes in events and talks to the broker; the
others serve the web app and the API (their sends forwarded to the leader:
controller/web/standby.py) and stand by. Leadership is a lease in the store
(controller/store/leases.py: one row; holder, its web URL, term, expiry on the
database's clock):

- every controller claims the lease: the leader renews it every `ttl / 3`; a standby
  looks at it every `poll_s` (at most 1 s) and takes it once it has expired (the term
  goes up by one). The claim is a compare-and-set on the term: never two holders.
- the leader fences itself: if no renewal has succeeded for `ttl - margin` on its own
  monotonic clock (counted from when the last good renewal was *asked*, so before the
  database set the expiry), it steps down at once, whatever the database does. A
  renewal that hangs does not hold this back: a watchdog thread of its own does it.
  The lease it held expires `ttl` after that renewal on the database's clock, at least
  `margin` later: the old leader has stopped before another can start.
- a leader that stops cleanly lets the lease go (its expiry set to now), so a standby
  takes over at its next look instead of waiting for the expiry.
- having stepped down, this object no longer claims: the process starts again as a
  standby (controller.main.run re-executes itself), so nothing of the old leadership
  (threads, broker session) lingers in the new one.

Why a lease row and not PostgreSQL's advisory lock alone: a session lock is released
when the server notices the leader's connection gone, which proves neither that the
leader's process stopped (a partition, a killed backend) nor comes with a deadline the
leader itself can keep; the lease gives both, on SQLite as on PostgreSQL. A failover
after kill -9 takes at most ttl + poll_s + the new leader's start (docs/operations.md).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from controller.store.leases import Lease

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(seconds=10)
MAX_POLL_S = 1.0

Role = Literal["leader", "standby", "stepped-down"]


class Leases(Protocol):
    """Where the lease is kept (controller.store.leases.LeaseRepository)."""

    def current(self) -> Lease | None: ...
    def claim(self, holder: str, url: str, ttl: timedelta) -> Lease | None: ...
    def release(self, holder: str, term: int) -> bool: ...


def holder_id() -> str:
    """This process as a lease holder: host:pid:random (a restarted process differs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class LeaderView:
    """Who leads, as this controller sees it: for /readyz, /metrics, `fleet`, the pages."""

    me: str
    role: Role
    leader: str | None  # the holder of a lease still valid; None: nobody leads now
    url: str  # the leader's web app ("" if it has none, or nobody leads)
    since: datetime | None  # when the leader took the lease
    term: int


class Leadership:
    """Claims the lease on a thread of its own; tells when this controller leads or not.

    on_elected runs on the claiming thread: it must return at once (hand the start of
    the leader's work to another thread). on_deposed runs once, on whichever thread saw
    the leadership end; it must stop the leader's work at once.
    """

    def __init__(
        self,
        leases: Leases,
        *,
        ttl: timedelta = DEFAULT_TTL,
        url: str = "",
        holder: str | None = None,
        on_elected: Callable[[int], None] = lambda _term: None,
        on_deposed: Callable[[str], None] = lambda _why: None,
        monotonic: Callable[[], float] = time.monotonic,
        poll_s: float | None = None,
    ) -> None:
        self._leases = leases
        self._ttl = ttl
        self._ttl_s = ttl.total_seconds()
        self.margin_s = self._ttl_s / 5
        self.renew_s = self._ttl_s / 3
        self.poll_s = poll_s if poll_s is not None else min(MAX_POLL_S, self._ttl_s / 10)
        self.url = url
        self.me = holder or holder_id()
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._mono = monotonic
        self._lock = threading.Condition()
        self._role: Role = "standby"
        self._term = 0
        self._deadline = 0.0  # monotonic: step down when this passes without a renewal
        self._last_error = ""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- what others ask --------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True only while the lease is held and its last renewal is recent enough."""
        with self._lock:
            return self._role == "leader" and self._mono() < self._deadline

    @property
    def role(self) -> Role:
        with self._lock:
            return self._role

    @property
    def term(self) -> int:
        with self._lock:
            return self._term

    def view(self) -> LeaderView:
        """Who leads now, read from the store (a failure to read: nobody known)."""
        try:
            lease = self._leases.current()
        except Exception as exc:  # the store unreachable: say so, do not fail the page
            log.debug("could not read the lease: %s", exc)
            lease = None
        role = self.role
        if lease is None or lease.expired:
            return LeaderView(self.me, role, None, "", None, lease.term if lease else 0)
        return LeaderView(self.me, role, lease.holder, lease.url, lease.acquired_at, lease.term)

    # --- running ----------------------------------------------------------------------------

    def start(self) -> None:
        for name, target in (("leadership", self._run), ("leadership-watchdog", self._watch)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, release: bool = True) -> None:
        """Stop claiming; a leader lets the lease go (release) for a standby to take it."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
            was_leader, term = self._role == "leader", self._term
            self._role = "stepped-down"
        for thread in self._threads:
            thread.join(self._ttl_s)
        if was_leader and release:
            try:
                if self._leases.release(self.me, term):
                    log.info("let the leadership go (term %d): a standby takes over now", term)
            except Exception as exc:  # the store gone: the lease expires on its own
                log.warning("could not let the leadership go (%s); it expires within %.0f s",
                            exc, self._ttl_s)

    def claim_once(self) -> None:
        """One claim, and what follows from it (the thread's step; tests call it)."""
        asked = self._mono()
        try:
            lease = self._leases.claim(self.me, self.url, self._ttl)
        except Exception as exc:  # the store unreachable: the watchdog decides when to stop
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.warning("could not claim the leadership lease: %s", self._last_error)
            return
        elected = None
        deposed = None
        with self._lock:
            if self._role == "stepped-down":
                return
            ours = lease is not None and lease.holder == self.me
            if ours and lease is not None:
                if self._role == "leader" and lease.term != self._term:
                    deposed = f"the lease passed to term {lease.term} meanwhile"
                else:
                    if self._role != "leader":
                        elected = lease.term
                    self._role, self._term = "leader", lease.term
                    self._deadline = asked + self._ttl_s - self.margin_s
                    self._last_error = ""
                    self._lock.notify_all()
            elif self._role == "leader" and lease is not None:
                deposed = f"{lease.holder} holds the lease now (term {lease.term})"
        if deposed is not None:
            self._depose(deposed)
        elif elected is not None:
            log.info("this controller (%s) now leads (term %d): it schedules, dispatches "
                     "and takes in events", self.me, elected)
            self._on_elected(elected)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.claim_once()
            if self.role == "stepped-down":
                return
            self._stop.wait(self.renew_s if self.role == "leader" else self.poll_s)

    def _watch(self) -> None:
        with self._lock:
            while not self._stop.is_set() and self._role != "stepped-down":
                if self._role == "leader":
                    left = self._deadline - self._mono()
                    if left <= 0:
                        break
                    self._lock.wait(min(left, MAX_POLL_S))
                else:
                    self._lock.wait(MAX_POLL_S)
            else:
                return
        self._depose(
            f"no renewal of the lease for {self._ttl_s - self.margin_s:.1f} s"
            + (f" (last error: {self._last_error})" if self._last_error else "")
        )

    def check(self) -> None:
        """Step down now if the deadline passed (the watchdog's test, callable directly)."""
        with self._lock:
            late = self._role == "leader" and self._mono() >= self._deadline
        if late:
            self._depose(f"no renewal of the lease for {self._ttl_s - self.margin_s:.1f} s")

    def _depose(self, why: str) -> None:
        with self._lock:
            if self._role != "leader":
                return
            self._role = "stepped-down"
            term = self._term
            self._lock.notify_all()
        self._stop.set()
        log.warning("this controller (%s) steps down from leading (term %d): %s; it stops "
                    "scheduling, dispatching and taking in events now", self.me, term, why)
        self._on_deposed(why)
