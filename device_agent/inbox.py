"""The audio chunks waiting for the agent's worker, the ones a play waits for first.

Anyone who can publish on a content topic the agent reads can send it chunks, as many
as the link carries, so chunks wait here rather than in the worker's mailbox: the
commands in the mailbox are handled first, and a flood of chunks never delays a
command (device_agent/agent.py takes chunks a slice of time at a time, after what the
mailbox holds).

Chunks wait in two tiers:

1. *wanted*: chunks of content a play command named and that is not complete yet (a
   download under way in the cache), in arrival order. These are what a play waits for.
2. *unsure*: every other chunk (early chunks of a command still on its way, duplicates
   of content already held, forgeries), grouped by the content they claim to be part
   of, oldest content first. When a play command names a content, its group moves to
   the wanted tier at once (`promote`), so its chunks do not wait behind a flood either.

Bounds: every chunk counts its size and CHUNK_OVERHEAD bytes (tiny chunks cost memory
too). The unsure tier holds at most `max_unsure_bytes`: a new chunk is always taken, and
the oldest content's chunks are dropped (and counted) to make room, so a flood pushes
out its own older chunks, never the newest ones (those of a command that has just
arrived are among them). Wanted chunks wait within `max_bytes`, beyond which a new one
is dropped. A dropped chunk of a play is asked for again when the play notices it
missing.

The network thread calls `put`; the worker calls `take`, `end_slice` and `promote`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from protocol.chunks import HEADER_SIZE

#: Chunks of plays waiting beyond this (64 MB) are dropped: a small box's memory is bounded.
MAX_QUEUED_BYTES = 64 * 1024 * 1024
#: Other chunks waiting: beyond this, the oldest are dropped.
MAX_UNSURE_BYTES = 4 * 1024 * 1024
#: What a waiting chunk costs beyond its bytes (the objects that hold it).
CHUNK_OVERHEAD = 256


@dataclass(frozen=True)
class Arrival:
    """What `put` did with a chunk."""

    accepted: bool  # False: dropped (over a budget)
    wanted: bool  # a chunk of content a play waits for
    wake: bool  # the worker has no slice of chunks scheduled: schedule one


@dataclass(frozen=True)
class Waiting:
    """A chunk taken by the worker."""

    topic: str
    payload: bytes
    wanted: bool


@dataclass
class DropCounts:
    wanted: int = 0
    unsure: int = 0


class ChunkInbox:
    """Two tiers of waiting chunks (see the module docstring); thread-safe."""

    def __init__(
        self,
        downloading: Callable[[str], bool],
        *,
        max_bytes: int = MAX_QUEUED_BYTES,
        max_unsure_bytes: int = MAX_UNSURE_BYTES,
    ) -> None:
        """downloading(sha256): whether a play command named that content and it is not
        complete (Cache.downloading: cheap, and safe from the network thread)."""
        self._downloading = downloading
        self._max_bytes = max_bytes
        self._max_unsure_bytes = max_unsure_bytes
        self._lock = threading.Lock()
        self._wanted: deque[tuple[str, bytes]] = deque()
        self._wanted_bytes = 0
        # content (raw SHA-256 of the header) -> its chunks, oldest content first
        self._unsure: OrderedDict[bytes, list[tuple[str, bytes]]] = OrderedDict()
        self._unsure_bytes = 0
        self._scheduled = False
        self._dropped = DropCounts()

    def put(self, topic: str, payload: bytes) -> Arrival:
        """Queue a chunk (network thread): never blocks on the disk or the worker."""
        cost = len(payload) + CHUNK_OVERHEAD
        digest = bytes(payload[4:HEADER_SIZE - 8]) if len(payload) >= HEADER_SIZE else b""
        with self._lock:
            wanted = bool(digest) and self._downloading(digest.hex())
            if wanted:
                if self._wanted_bytes + cost > self._max_bytes:
                    self._dropped.wanted += 1
                    return Arrival(False, True, False)
                self._wanted.append((topic, payload))
                self._wanted_bytes += cost
            else:
                if cost > self._max_unsure_bytes:
                    self._dropped.unsure += 1
                    return Arrival(False, False, False)
                while self._unsure_bytes + cost > self._max_unsure_bytes:
                    _, oldest = self._unsure.popitem(last=False)
                    self._unsure_bytes -= sum(len(p) + CHUNK_OVERHEAD for _t, p in oldest)
                    self._dropped.unsure += len(oldest)
                group = self._unsure.get(digest)
                if group is None:
                    self._unsure[digest] = [(topic, payload)]
                else:
                    group.append((topic, payload))
                self._unsure_bytes += cost
            wake = not self._scheduled
            self._scheduled = True
        return Arrival(True, wanted, wake)

    def promote(self, sha256: str) -> int:
        """A play command named this content: its chunks waiting in the unsure tier go to
        the wanted tier (worker thread); how many moved."""
        try:
            digest = bytes.fromhex(sha256)
        except ValueError:
            return 0
        with self._lock:
            group = self._unsure.pop(digest, None)
            if group is None:
                return 0
            for topic, payload in group:
                cost = len(payload) + CHUNK_OVERHEAD
                self._unsure_bytes -= cost
                self._wanted_bytes += cost
                self._wanted.append((topic, payload))
            return len(group)

    def take(self) -> Waiting | None:
        """The next chunk for the worker: wanted ones first; None when nothing waits."""
        with self._lock:
            if self._wanted:
                topic, payload = self._wanted.popleft()
                self._wanted_bytes -= len(payload) + CHUNK_OVERHEAD
                return Waiting(topic, payload, True)
            if not self._unsure:
                return None
            digest, group = next(iter(self._unsure.items()))
            topic, payload = group.pop(0)
            if not group:
                del self._unsure[digest]
            self._unsure_bytes -= len(payload) + CHUNK_OVERHEAD
            return Waiting(topic, payload, False)

    def end_slice(self) -> bool:
        """The worker ends a slice of chunks: True if more wait (it schedules another
        slice); False if none do (the next `put` wakes it)."""
        with self._lock:
            more = bool(self._wanted or self._unsure)
            self._scheduled = more
            return more

    def waiting(self) -> tuple[int, int]:
        """Bytes waiting in the wanted tier and in the unsure tier (as counted)."""
        with self._lock:
            return self._wanted_bytes, self._unsure_bytes

    def take_dropped(self) -> DropCounts:
        """Chunks dropped since the last call."""
        with self._lock:
            dropped, self._dropped = self._dropped, DropCounts()
            return dropped
