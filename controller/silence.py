"""Which clusters have gone silent: nothing heard from them for 1.5 × their keepalive.

The broker's Last Will says `offline` when a connection closes or goes quiet, but only at
the broker's next keepalive check (mosquitto 2.0 looks every few seconds). The agent's
heartbeat carries its MQTT keepalive and comes at least once per keepalive, so a cluster
from which nothing (heartbeat, event, state) has come for 1.5 × that keepalive is
silent: frozen, powered off, or behind a dead 4G link.

One deadline per cluster in a heap, re-armed lazily: hearing from a cluster is a dict
update, and a deadline that comes due is checked against the last time the cluster was
heard before it counts. The heap never holds more than one entry per cluster, so 1,000
clusters cost a few hundred kilobytes and a sweep looks only at the deadlines due.
Clusters whose heartbeat carries no keepalive (agents older than the field) are left to
the Last Will. Not thread-safe: the intake's writer thread owns it.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import datetime, timedelta

#: Silent after this many keepalives without a message (as MQTT brokers count).
SILENT_AFTER_KEEPALIVES = 1.5


@dataclass(frozen=True)
class Silent:
    """A cluster found silent: when it was last heard and its keepalive."""

    cluster: str
    last_heard: datetime
    keepalive_s: float

    @property
    def limit_s(self) -> float:
        return SILENT_AFTER_KEEPALIVES * self.keepalive_s

    def reason(self, now: datetime) -> str:
        silent = (now - self.last_heard).total_seconds()
        return (
            f"nothing heard for {silent:.1f} s (more than 1.5 × its keepalive of "
            f"{self.keepalive_s:g} s)"
        )


class SilenceWatch:
    """Deadlines of the clusters being watched."""

    def __init__(self) -> None:
        self._keepalive: dict[str, float] = {}  # from each cluster's latest heartbeat
        self._heard: dict[str, datetime] = {}  # watched clusters: when last heard
        self._heap: list[tuple[datetime, str]] = []
        self._armed: set[str] = set()  # clusters with an entry in the heap

    def heard(self, cluster: str, at: datetime, keepalive_s: float | None = None) -> None:
        """Something came from cluster at `at` (a heartbeat tells its keepalive)."""
        if keepalive_s is not None:
            self._keepalive[cluster] = keepalive_s
        keepalive = self._keepalive.get(cluster)
        if keepalive is None:
            return
        self._heard[cluster] = at
        if cluster not in self._armed:
            self._push(cluster, at, keepalive)

    def forget(self, cluster: str) -> None:
        """Stop watching cluster until it is heard again (it is offline already)."""
        self._heard.pop(cluster, None)

    def next_due(self) -> datetime | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now: datetime, listening_since: datetime | None = None) -> list[Silent]:
        """The clusters silent at `now`; they are no longer watched until heard again.

        listening_since: when the controller's link to the broker last came up. Nothing
        could be heard before that, so a cluster is silent only once it has had its full
        time after it; its `last_heard` stays what was heard."""
        found: list[Silent] = []
        while self._heap and self._heap[0][0] <= now:
            _, cluster = heapq.heappop(self._heap)
            self._armed.discard(cluster)
            last = self._heard.get(cluster)
            if last is None:  # forgotten
                continue
            keepalive = self._keepalive[cluster]
            basis = max(last, listening_since) if listening_since is not None else last
            if basis + _limit(keepalive) > now:  # heard (or listening again) since
                self._push(cluster, basis, keepalive)
                continue
            del self._heard[cluster]
            found.append(Silent(cluster, last, keepalive))
        return found

    def _push(self, cluster: str, last: datetime, keepalive_s: float) -> None:
        heapq.heappush(self._heap, (last + _limit(keepalive_s), cluster))
        self._armed.add(cluster)


def _limit(keepalive_s: float) -> timedelta:
    return timedelta(seconds=SILENT_AFTER_KEEPALIVES * keepalive_s)
