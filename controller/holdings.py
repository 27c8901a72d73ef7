"""Which cluster holds which content, so that audio already held is not sent again.

Learnt from the agents' `delivered` events: a play's items (its content hashes, in the
plays table) are held, verified, by the cluster that reported it delivered. The table
`holdings` (cluster, sha256, since) lives in the controller's store beside the plays.

A holding can go stale: the agent's cache may evict the content (least recently used,
beyond its quota) or the box may be reinstalled. That costs a little time, never a
play: an agent given a play whose audio it lacks asks for the chunks (`request` topic),
gets them on its own topic, reports the play delivered, and holds the audio again. A
request does not drop the holding: anyone who can publish on the broker can send one,
and a forged request must not make the next play of that audio go out again in full.

The table is pruned, so that it does not grow with every bulletin ever delivered:
holdings of clusters taken out of the fleet go, and so do holdings of content that no
play names any more (none still to start, none whose latest start is within
`UNUSED_FOR`), unless learnt within that time. Should such content be played again, it
is sent again: a few seconds of a cluster's link, once. `record_delivered` prunes at most
once every `PRUNE_EVERY`, by the injected clock; `prune()` does it at once.

`content_status()` is the per-cluster view shown by `loa-controller fleet`: how many of
the contents of the plays still to start on a cluster it holds.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select

from controller.store import Store, utc
from controller.store.schema import clusters as fleet_clusters
from controller.store.schema import holdings, plays
from protocol.clock import Clock, SystemClock
from protocol.messages import Event

# Content no play has named for this long is assumed gone from the agents' caches (1 GB
# by default: about 90 hours of 24 kb/s Opus, three months at an hour of new audio a
# day), and its holdings are dropped.
UNUSED_FOR = timedelta(days=90)
PRUNE_EVERY = timedelta(hours=1)
# Rows deleted per statement (SQLite limits the parameters of one statement).
DELETE_BATCH = 500

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContentStatus:
    """The content of the plays still to start on one cluster, and which of it it holds."""

    scheduled: tuple[str, ...]  # content hashes, in play start order
    held: frozenset[str]

    @property
    def missing(self) -> list[str]:
        return [sha for sha in self.scheduled if sha not in self.held]


class Holdings:
    """The holdings table: read by the distributor, written by the intake. Thread-safe."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        unused_for: timedelta = UNUSED_FOR,
        prune_every: timedelta = PRUNE_EVERY,
    ) -> None:
        """clock: for the pruning done by record_delivered (the system clock by default).
        unused_for: how long content no play names keeps its holdings. prune_every: how
        often record_delivered prunes (the first time: on its first delivery)."""
        self._engine = store.engine
        self._write = threading.Lock()
        self._clock = clock or SystemClock()
        self._unused_for = unused_for
        self._prune_every = prune_every
        self._next_prune: datetime | None = None

    def record_delivered(self, events: Iterable[Event]) -> int:
        """Note the content of each play reported `delivered` as held by its cluster;
        return how many holdings were new."""
        delivered = [(ev.cluster, ev.play_id, ev.at) for ev in events
                     if ev.kind == "delivered" and ev.play_id]
        if not delivered:
            return 0
        with self._engine.connect() as conn:
            items = {
                pid: list(json.loads(raw))
                for pid, raw in conn.execute(
                    select(plays.c.play_id, plays.c["items"]).where(
                        plays.c.play_id.in_({pid for _, pid, _ in delivered})
                    )
                )
            }
        wanted: dict[tuple[str, str], datetime] = {}
        for cluster, pid, at in delivered:
            for sha in items.get(pid or "", []):
                wanted.setdefault((cluster, sha), at)
        added = self._add(wanted)
        now = self._clock.now()
        if self._next_prune is None or now >= self._next_prune:
            self._next_prune = now + self._prune_every
            self.prune(now)
        return added

    def add(self, cluster: str, sha256s: Iterable[str], since: datetime) -> int:
        """Note that cluster holds these contents (tests and tools)."""
        return self._add({(cluster, sha): since for sha in sha256s})

    def _add(self, wanted: dict[tuple[str, str], datetime]) -> int:
        if not wanted:
            return 0
        clusters = {c for c, _ in wanted}
        with self._write, self._engine.begin() as conn:
            known = {
                (c, s) for c, s in conn.execute(
                    select(holdings.c.cluster, holdings.c.sha256).where(
                        holdings.c.cluster.in_(clusters),
                        holdings.c.sha256.in_({s for _, s in wanted}),
                    )
                )
            }
            fresh = [
                {"cluster": c, "sha256": s, "since": utc(at)}
                for (c, s), at in wanted.items() if (c, s) not in known
            ]
            if fresh:
                conn.execute(insert(holdings), fresh)
        return len(fresh)

    def forget(self, cluster: str, sha256: str) -> bool:
        """The cluster does not hold this content after all (tools; a chunk request alone
        never calls it)."""
        with self._write, self._engine.begin() as conn:
            gone = conn.execute(
                delete(holdings).where(holdings.c.cluster == cluster, holdings.c.sha256 == sha256)
            )
        return bool(gone.rowcount)

    def prune(self, now: datetime) -> int:
        """Drop the holdings nothing will use: those of clusters no longer in the fleet,
        and those of content that no play still to start, or with a latest start less
        than `unused_for` before now, names (unless learnt since then). Return how many
        went."""
        cutoff = utc(now - self._unused_for)
        dropped = 0
        with self._write, self._engine.begin() as conn:
            in_fleet = {
                r[0] for r in conn.execute(
                    select(fleet_clusters.c.id).where(fleet_clusters.c.in_fleet)
                )
            }
            holders = {r[0] for r in conn.execute(select(holdings.c.cluster).distinct())}
            gone = sorted(holders - in_fleet)
            named: set[str] = set()
            for (raw,) in conn.execute(
                select(plays.c["items"]).where(plays.c.latest_start > cutoff)
            ):
                named.update(json.loads(raw))
            unused = sorted({
                r[0] for r in conn.execute(
                    select(holdings.c.sha256).distinct().where(holdings.c.since < cutoff)
                )
            } - named)
            for start in range(0, len(gone), DELETE_BATCH):
                dropped += conn.execute(delete(holdings).where(
                    holdings.c.cluster.in_(gone[start:start + DELETE_BATCH])
                )).rowcount
            for start in range(0, len(unused), DELETE_BATCH):
                dropped += conn.execute(delete(holdings).where(
                    holdings.c.sha256.in_(unused[start:start + DELETE_BATCH]),
                    holdings.c.since < cutoff,
                )).rowcount
        if dropped:
            log.info(
                "pruned %d content holdings: of %d clusters out of the fleet, and of %d "
                "contents no play has named since %s", dropped, len(gone), len(unused),
                cutoff.date().isoformat(),
            )
        return dropped

    def held_by(self, sha256s: Collection[str], clusters: Collection[str]) -> dict[str, set[str]]:
        """For each content hash, which of these clusters hold it."""
        found: dict[str, set[str]] = {sha: set() for sha in sha256s}
        if not sha256s or not clusters:
            return found
        wanted = set(clusters)
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(holdings.c.sha256, holdings.c.cluster).where(
                    holdings.c.sha256.in_(set(sha256s))
                )
            )
            for sha, cluster in rows:
                if cluster in wanted:
                    found[sha].add(cluster)
        return found

    def held(self, cluster: str) -> set[str]:
        """Every content hash this cluster is known to hold."""
        with self._engine.connect() as conn:
            return {
                r[0] for r in conn.execute(
                    select(holdings.c.sha256).where(holdings.c.cluster == cluster)
                )
            }

    def content_status(
        self, now: datetime, clusters: Sequence[str] = ()
    ) -> dict[str, ContentStatus]:
        """Per cluster targeted by a play still to start (latest start after now): the
        content of those plays and which of it the cluster holds. clusters: only these
        (all when empty)."""
        only = set(clusters)
        scheduled: dict[str, list[str]] = {}
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(plays.c["items"], plays.c.clusters)
                .where(plays.c.latest_start > utc(now))
                .order_by(plays.c.start_at)
            )
            for raw_items, raw_clusters in rows:
                items = list(json.loads(raw_items))
                for cluster in json.loads(raw_clusters):
                    if only and cluster not in only:
                        continue
                    mine = scheduled.setdefault(cluster, [])
                    mine.extend(sha for sha in items if sha not in mine)
            if not scheduled:
                return {}
            held: dict[str, set[str]] = {}
            every = {sha for shas in scheduled.values() for sha in shas}
            for cluster, sha in conn.execute(
                select(holdings.c.cluster, holdings.c.sha256).where(
                    holdings.c.sha256.in_(every)
                )
            ):
                held.setdefault(cluster, set()).add(sha)
        return {
            cluster: ContentStatus(tuple(shas), frozenset(held.get(cluster, set()) & set(shas)))
            for cluster, shas in scheduled.items()
        }


def content_view(status: ContentStatus | None, heartbeat: dict[str, Any] | None) -> dict[str, Any]:
    """One cluster's content, for `loa-controller fleet --json`: how many contents its
    plays still to start need, how many it holds, which it lacks, and the downloads under
    way in its latest heartbeat (of content it still lacks)."""
    missing = status.missing if status is not None else []
    transfers = []
    for raw in (heartbeat or {}).get("transfers") or []:
        sha, held, chunks = raw.get("sha256"), int(raw.get("held", 0)), int(raw.get("chunks", 0))
        if chunks <= 0 or (status is not None and sha not in missing):
            continue  # completed since that heartbeat, or not for a scheduled play
        transfers.append({
            "sha256": sha, "held": held, "chunks": chunks,
            "percent": int(100 * min(held, chunks) / chunks),
        })
    return {
        "scheduled": len(status.scheduled) if status is not None else 0,
        "held": len(status.scheduled) - len(missing) if status is not None else 0,
        "missing": missing,
        "transfers": transfers,
    }


def describe_content(view: dict[str, Any]) -> str:
    """The content column of `loa-controller fleet`: "3/3 held", "2/3 held, 1 downloading
    40%", or "-" when no play still to start names any content for the cluster."""
    parts = []
    if view["scheduled"]:
        parts.append(f"{view['held']}/{view['scheduled']} held")
    transfers = view["transfers"]
    if transfers:
        held = sum(t["held"] for t in transfers)
        chunks = sum(t["chunks"] for t in transfers)
        parts.append(f"{len(transfers)} downloading {int(100 * held / chunks)}%")
    return ", ".join(parts) or "-"
