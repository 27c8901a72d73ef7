"""Every cluster's membership on the broker: signed, retained, versioned, and kept there.

A cluster learns which groups it belongs to (so which group topics to listen to) from a
retained, signed `membership` command on its own membership topic. A retained message
can be overwritten by any client the broker lets write there, and is lost with a broker
that keeps no persistence, so the controller does not publish it once and trust it:

- each membership carries a `version`, the time (milliseconds since 1970, never less
  than the last version sent for the cluster plus one) at which the controller took in
  the fleet revision that gave it; an agent keeps the highest version it has verified;
- the signed command of each cluster is kept here and published again, the same bytes,
  after every (re)connection to the broker and every `interval_s` (config
  `membership_republish`, 10 minutes by default): an agent that already has it ignores
  the copy, a new or reinstalled box gets it, and a forged or emptied retained message
  is replaced within that time;
- it is signed again (same version, new id) once it is half way to its expiry.

`publish(changed)` is what a fleet reload calls for the clusters whose groups changed.
A thread of its own does the republishing; `on_reconnect`, registered with the
controller's reconnect hook (controller/reconnect.py), only wakes it, so the link's
network thread never signs or publishes two thousand messages.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.reconnect import Reconnection
from protocol import topics
from protocol.clock import Clock
from protocol.messages import Address, MembershipBody
from protocol.mqtt import Link
from protocol.signing import Signer

log = logging.getLogger(__name__)

MEMBERSHIP_TTL = timedelta(days=400)
DEFAULT_REPUBLISH_S = 600.0

#: (cluster, commune, groups), as `Controller.memberships()` lists them.
MembershipRow = tuple[str, str | None, list[str]]


@dataclass(frozen=True)
class _Signed:
    commune: str | None
    groups: tuple[str, ...]
    version: int
    payload: bytes
    signed_at: datetime


class MembershipPublisher:
    """Signs, publishes and republishes every cluster's membership (see module docstring)."""

    def __init__(
        self,
        link: Link,
        signer: Signer,
        clock: Clock,
        memberships: Callable[[], Sequence[MembershipRow]],
        *,
        interval_s: float = DEFAULT_REPUBLISH_S,
        after_reconnect: Callable[[], object] = lambda: None,
    ) -> None:
        """memberships: every cluster's (cluster, commune, groups) now. interval_s: how
        often every membership is published again (0: only after a reconnection).
        after_reconnect: the controller's other retained messages published again first,
        on this thread, after a reconnection (the key rotation, whose new key signs the
        memberships)."""
        self._after_reconnect = after_reconnect
        self._link = link
        self._signer = signer
        self._clock = clock
        self._memberships = memberships
        self._interval_s = interval_s
        self._lock = threading.Lock()  # one publishing at a time; guards _signed
        self._signed: dict[str, _Signed] = {}
        self._wake = threading.Event()
        self._wake_reason = ""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0  # times every membership was published (for tests and tools)

    def start(self) -> None:
        """Republish in the background (at the interval, and when `on_reconnect` says)."""
        self._thread = threading.Thread(target=self._run, name="memberships", daemon=True)
        self._thread.start()

    def on_reconnect(self, found: Reconnection) -> None:
        """A reconnect action: after every connection but the first (the controller's
        start publishes them all), publish every membership again, whatever the broker
        says it kept: a retained message overwritten meanwhile comes back too. Only wakes
        the publishing thread (this runs on the link's network thread)."""
        if found.first:
            return
        self._wake_reason = f"reconnected to the broker: {found.describe()}"
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def publish(self, changed: Sequence[MembershipRow]) -> None:
        """Publish these memberships now, each with a new version if it changed."""
        with self._lock:
            for row in changed:
                self._publish_one(row)

    def publish_all(self) -> int:
        """Publish every cluster's membership (a new version only where it changed, the
        kept command otherwise); forget clusters no longer listed. How many were sent."""
        rows = list(self._memberships())
        with self._lock:
            for row in rows:
                self._publish_one(row)
            listed = {cluster for cluster, _, _ in rows}
            for gone in [c for c in self._signed if c not in listed]:
                del self._signed[gone]
            self.rounds += 1
        return len(rows)

    def version_of(self, cluster: str) -> int | None:
        with self._lock:
            kept = self._signed.get(cluster)
            return kept.version if kept is not None else None

    # --- inside ------------------------------------------------------------------------------

    def _publish_one(self, row: MembershipRow) -> None:
        cluster, commune, groups = row
        now = self._clock.now()
        kept = self._signed.get(cluster)
        same = kept is not None and (kept.commune, kept.groups) == (commune, tuple(groups))
        if kept is None or not same:
            floor = kept.version + 1 if kept is not None else 0
            kept = self._sign(cluster, commune, groups, max(_millis(now), floor), now)
        elif now - kept.signed_at > MEMBERSHIP_TTL / 2:
            kept = self._sign(cluster, commune, groups, kept.version, now)
        self._signed[cluster] = kept
        self._link.publish(topics.cluster_topic(cluster, "membership"), kept.payload, retain=True)

    def _sign(
        self, cluster: str, commune: str | None, groups: list[str], version: int, now: datetime
    ) -> _Signed:
        body = MembershipBody(cluster=cluster, commune=commune, groups=groups, version=version)
        cmd = self._signer.command(body, Address(clusters=[cluster]), now, MEMBERSHIP_TTL)
        return _Signed(commune, tuple(groups), version, cmd.to_json(), now)

    def _run(self) -> None:
        while not self._stopping.is_set():
            woken = self._wake.wait(self._interval_s if self._interval_s > 0 else None)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                if woken:
                    self._after_reconnect()
                count = self.publish_all()
            except Exception as exc:  # the next round tries again
                log.error("could not publish the memberships again: %s", exc)
                continue
            log.log(
                logging.INFO if woken else logging.DEBUG,
                "published the memberships of %d clusters again (%s)",
                count, self._wake_reason if woken else f"every {self._interval_s:g} s",
            )


def _millis(when: datetime) -> int:
    return int(when.timestamp() * 1000)
