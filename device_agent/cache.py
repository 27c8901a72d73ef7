"""The content cache: audio on the SD card by SHA-256, reassembled from chunks and verified.

Layout under the cache directory:

    <sha256>.opus                         complete, verified content (what the player plays)
    partial/<sha256>.<size>.<chunk>.part  a download whose manifest is known: the content's
                                          bytes, each chunk written at its place, followed
                                          by one byte per chunk (1: held)
    partial/<sha256>/<index>              chunks that came before any play command named
                                          their content (and `count`: how many it has)

A play command carries the manifest (`ContentRef`: hash, size, chunk size and count) of
each item; `expect(ref)` tells the cache about it. Usually the command comes first and
its chunks follow: each is written in place into one file, which costs no file system
metadata update per chunk. Chunks may also arrive before the command (they travel on
another topic); those are kept one file each and moved into the download when the
manifest arrives.

Early chunks are what anyone who can publish on a content topic can send, so each one
costs O(1) (running totals, no sums over what is kept) and they are bounded four ways:
a budget per content (`max_early_content_bytes`: further chunks of it are refused), per
topic they came on (`max_early_topic_bytes` and `max_early_topic_contents`: a flood on
one group's topic drops that topic's oldest early content, not another's), in all
(`max_early_bytes` and `max_early_contents`, oldest dropped first), and in time
(`early_ttl`: content no play command named for that long is dropped). Every chunk
counts at least a file system block, and a content two more (its folder and its count);
the counts of contents bound the memory their bookkeeping takes (a flood of one-chunk
contents is small on disk, not in memory). A play has at most 64 items.

Once every chunk is in, the size and SHA-256 are checked against the signed manifest and
the content is moved into place atomically (the hash is taken as the chunks arrive, in
order; only chunks that came out of order are read back): a forged or damaged chunk can
make a download fail (it is then discarded and fetched again), never make a speaker
play it.

Quota: complete content beyond a size (the agent's `cache_max_mb`) is evicted least
recently used first, never what `keep` names (the audio of plays still scheduled or
playing). A use is a delivery (the content completed, or a play command named content
already held) or a play starting (`touch`); the times are kept in a state document of
the agent's database (`uses`), not in file access times, which SD cards are mounted
without. Content without a recorded use counts as used when its file was written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from device_agent.localdb import StateDocument
from protocol.chunks import Chunk
from protocol.clock import Clock, SystemClock
from protocol.messages import ContentRef
from protocol.ratelimit import LogLimiter

module_log = logging.getLogger(__name__)

DEFAULT_MAX_EARLY_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_EARLY_TOPIC_BYTES = 64 * 1024 * 1024
# An hour of speech at 24 kb/s is 11 MB.
DEFAULT_MAX_EARLY_CONTENT_BYTES = 32 * 1024 * 1024
# A play command follows its chunks within seconds; what waits longer waits for nothing.
DEFAULT_EARLY_TTL = timedelta(minutes=30)
# Early contents kept, from one topic and in all.
DEFAULT_MAX_EARLY_TOPIC_CONTENTS = 128
DEFAULT_MAX_EARLY_CONTENTS = 512
# Every stored early chunk costs at least a file system block, however small its data.
BLOCK = 4096
# A content's folder and its `count` file.
EARLY_CONTENT_COST = 2 * BLOCK
# The last uses of content go to disk at most this often (and when the agent stops).
USES_SAVE_EVERY_S = 60.0

ChunkOutcome = Literal[
    "stored",  # kept; more chunks are needed
    "duplicate",  # already held (the chunk, or the whole content)
    "complete",  # this chunk completed the content, which verified and is now playable
    "corrupt",  # this chunk completed the content, which failed verification: discarded
    "refused",  # does not fit the manifest (count or length); dropped
]

CompletionListener = Callable[[str], None]


@dataclass
class _Early:
    """Chunks of a content no play command has named yet, one file each."""

    count: int
    topic: str  # where its first chunk came from ("" when loaded from disk)
    touched: datetime  # its latest chunk
    sizes: dict[int, int] = field(default_factory=dict)
    cost: int = EARLY_CONTENT_COST  # counted against the budgets: see the module docstring


@dataclass
class _Download:
    """A content whose manifest is known, filling one .part file."""

    sha256: str
    size: int
    chunk_size: int
    chunks: int
    held: set[int] = field(default_factory=set)
    # The .part file, open while the download lasts (not reopened for every chunk).
    fd: int | None = None
    # SHA-256 of the chunks before `hashed` (chunks in order are hashed as they come, so
    # the content need not be read back to verify it).
    hasher: Any = field(default_factory=hashlib.sha256)
    hashed: int = 0

    def expected_length(self, index: int) -> int:
        if index < self.chunks - 1:
            return self.chunk_size
        return self.size - self.chunk_size * (self.chunks - 1)

    def fits(self, ref: ContentRef) -> bool:
        return (self.size, self.chunk_size, self.chunks) == (ref.size, ref.chunk_size, ref.chunks)


class Cache:
    """Content by SHA-256 on disk; thread-safe; listeners hear of each completed content."""

    def __init__(
        self,
        directory: Path,
        *,
        max_early_bytes: int = DEFAULT_MAX_EARLY_BYTES,
        max_early_topic_bytes: int = DEFAULT_MAX_EARLY_TOPIC_BYTES,
        max_early_content_bytes: int = DEFAULT_MAX_EARLY_CONTENT_BYTES,
        max_early_topic_contents: int = DEFAULT_MAX_EARLY_TOPIC_CONTENTS,
        max_early_contents: int = DEFAULT_MAX_EARLY_CONTENTS,
        early_ttl: timedelta = DEFAULT_EARLY_TTL,
        durable: bool = True,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        uses: StateDocument | None = None,
        clock: Clock | None = None,
    ) -> None:
        """durable: sync completed content to the SD card before it counts as held.
        uses: where the last use of each content is kept (None: in memory only).
        max_early_*, early_ttl: the bounds on chunks no play command named yet."""
        self._log = log or module_log
        self._refusals = LogLimiter(self._log)
        self._clock = clock or SystemClock()
        self._uses_doc = uses
        self._uses: dict[str, float] = {}
        saved = uses.load() if uses is not None else None
        if isinstance(saved, dict):
            self._uses = {
                sha: float(at) for sha, at in saved.items()
                if isinstance(sha, str) and isinstance(at, int | float)
            }
        self.directory = directory
        self._dir_prefix = f"{directory}{os.sep}"
        self._uses_saved_at = -USES_SAVE_EVERY_S
        # Bytes of complete content as last counted plus what completed since (None: not
        # counted yet): an upper bound unless files are added behind the agent's back.
        self._held_bytes: int | None = None
        self._uses_dirty = False
        self._partial_dir = directory / "partial"
        self._partial_dir.mkdir(parents=True, exist_ok=True)
        self._max_early_bytes = max_early_bytes
        self._max_early_topic_bytes = min(max_early_topic_bytes, max_early_bytes)
        self._max_early_content_bytes = min(max_early_content_bytes, self._max_early_topic_bytes)
        self._max_early_contents = max_early_contents
        self._max_early_topic_contents = min(max_early_topic_contents, max_early_contents)
        self._early_ttl = early_ttl
        self._durable = durable
        self._lock = threading.Lock()
        self._manifests: dict[str, ContentRef] = {}
        self._downloads: dict[str, _Download] = {}
        # Early content, least recently touched first; and the same per topic.
        self._early: OrderedDict[str, _Early] = OrderedDict()
        self._early_by_topic: dict[str, OrderedDict[str, None]] = {}
        self._early_bytes = 0
        self._early_topic_bytes: dict[str, int] = {}
        self._early_dropped = 0  # early contents dropped (budget or age), since the start
        self._listeners: list[CompletionListener] = []
        self._load()

    # --- queries ----------------------------------------------------------------------------

    def path(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.opus"

    def has(self, sha256: str) -> bool:
        # Asked for every chunk and every look at a play: a plain stat, no Path objects.
        return os.path.isfile(f"{self._dir_prefix}{sha256}.opus")

    def missing(self, ref: ContentRef) -> list[int]:
        """Indexes of the chunks of ref not held yet ([] when the content is complete)."""
        if self.has(ref.sha256):
            return []
        with self._lock:
            download = self._downloads.get(ref.sha256)
            early = self._early.get(ref.sha256)
            if download is not None and download.fits(ref):
                held = download.held
            elif early is not None and early.count == ref.chunks:
                held = set(early.sizes)
            else:
                held = set()
            return [i for i in range(ref.chunks) if i not in held]

    def manifest(self, sha256: str) -> ContentRef | None:
        with self._lock:
            return self._manifests.get(sha256)

    def held_bytes(self) -> int:
        """Disk taken by complete content."""
        return sum(size for _sha, size, _mtime in self._held())

    def transfers(self) -> list[tuple[str, int, int]]:
        """Downloads under way: (sha256, chunks held, chunk count), oldest first."""
        with self._lock:
            return [(d.sha256, len(d.held), d.chunks) for d in self._downloads.values()]

    def last_use(self, sha256: str) -> float | None:
        """When this content was last delivered or played (epoch seconds), if recorded."""
        with self._lock:
            return self._uses.get(sha256)

    def early_bytes(self) -> int:
        """Disk taken by chunks that came before their play command (as budgeted)."""
        with self._lock:
            return self._early_bytes

    def early_stats(self) -> tuple[int, int, int]:
        """Early contents kept, their chunks, and early contents dropped since the start."""
        with self._lock:
            chunks = sum(len(e.sizes) for e in self._early.values())
            return len(self._early), chunks, self._early_dropped

    def downloading(self, sha256: str) -> bool:
        """Whether a play command named this content and it is not complete yet."""
        return sha256 in self._downloads  # one dict lookup: safe without the lock

    def add_listener(self, listener: CompletionListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: CompletionListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # --- changes ----------------------------------------------------------------------------

    def expect(self, ref: ContentRef) -> bool:
        """Learn a manifest from a play command; True if the content is (now) complete."""
        if self.has(ref.sha256):
            self.touch([ref.sha256])  # a cache hit: delivered from what is held
            return True
        with self._lock:
            self._manifests[ref.sha256] = ref
            download = self._downloads.get(ref.sha256)
            if download is not None and not download.fits(ref):
                self._log.warning(
                    "content %s: a new manifest differs from the one being downloaded; "
                    "starting its download again", ref.sha256[:12],
                )
                self._drop_download(ref.sha256)
                download = None
            if download is None:
                download = self._start_download(ref)
            outcome = self._finish_if_complete(download)
        if outcome == "complete":
            self._notify(ref.sha256)
        return outcome == "complete"

    def add_chunk(self, chunk: Chunk, topic: str = "") -> ChunkOutcome:
        """Store one chunk; join and verify the content when it was the last one missing.
        topic: where it came from (the early-chunk budget is kept per topic)."""
        with self._lock:
            # A download under way is content not complete yet: no look at the disk.
            download = self._downloads.get(chunk.sha256)
            if download is not None:
                outcome = self._write(download, chunk)
                if outcome == "stored":
                    outcome = self._finish_if_complete(download)
            elif self.has(chunk.sha256):
                return "duplicate"
            else:
                outcome = self._keep_early(chunk, topic)
        if outcome == "complete":
            self._notify(chunk.sha256)
        return outcome

    def expire_early(self) -> int:
        """Drop early content no chunk came for within early_ttl; how many went."""
        with self._lock:
            return self._expire_early(self._clock.now())

    def touch(self, sha256s: Iterable[str]) -> None:
        """Record a use (delivery, play start) of these contents, for eviction order."""
        at = self._clock.now().timestamp()
        with self._lock:
            for sha in sha256s:
                self._uses[sha] = at
            self._save_uses()

    def prune(self, keep: Iterable[str], max_content_bytes: int) -> list[str]:
        """Drop downloads nothing needs any more, then evict beyond max_content_bytes
        (see `evict`), never anything in keep (content of plays still to come)."""
        keep = set(keep)
        with self._lock:
            for sha in [s for s in self._downloads if s not in keep]:
                self._drop_download(sha)
                self._manifests.pop(sha, None)
        return self.evict(keep, max_content_bytes, exact=True)

    def evict(
        self, keep: Iterable[str], max_content_bytes: int, *, exact: bool = False
    ) -> list[str]:
        """Remove complete content, least recently used first, until what is held fits in
        max_content_bytes; never anything in keep. Returns the hashes removed.

        Unless exact, the folder is not listed while the bytes held as last counted,
        plus the content completed since, fit (so a completion costs no listing)."""
        known = self._held_bytes
        if not exact and known is not None and known <= max_content_bytes:
            return []
        keep = set(keep)
        held = self._held()
        total = sum(size for _sha, size, _mtime in held)
        self._held_bytes = total
        if total <= max_content_bytes:
            return []
        with self._lock:
            order = sorted(held, key=lambda h: (self._uses.get(h[0], h[2]), h[0]))
        removed: list[str] = []
        for sha, size, _mtime in order:
            if total <= max_content_bytes:
                break
            if sha in keep:
                continue
            self.path(sha).unlink(missing_ok=True)
            total -= size
            removed.append(sha)
            self._log.info(
                "removed content %s from the cache (%d bytes, least recently used; quota %d MB)",
                sha[:12], size, max_content_bytes // (1024 * 1024),
            )
        self._held_bytes = total
        if removed:
            with self._lock:
                for sha in removed:
                    self._uses.pop(sha, None)
                self._save_uses()
        if total > max_content_bytes:
            self._log.warning(
                "the cache holds %d MB, over its quota of %d MB, all of it audio of plays "
                "still scheduled: kept; raise cache_max_mb if this lasts",
                total // (1024 * 1024), max_content_bytes // (1024 * 1024),
            )
        return removed

    def _held(self) -> list[tuple[str, int, float]]:
        """(sha256, size, mtime) of every complete content."""
        held = []
        for path in self.directory.glob("*.opus"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            held.append((path.stem, stat.st_size, stat.st_mtime))
        return held

    def _save_uses(self) -> None:
        """Keep the last uses (lock held): at most every USES_SAVE_EVERY_S, the rest by
        `flush`. They only order eviction, so a power cut may lose the latest few."""
        self._uses_dirty = True
        self._write_uses(force=False)

    def flush(self, *, force: bool = True) -> None:
        """Save the uses not saved yet (force=False: only once USES_SAVE_EVERY_S passed)."""
        with self._lock:
            self._write_uses(force=force)

    def _write_uses(self, *, force: bool) -> None:
        """Write the uses if changed and (unless force) USES_SAVE_EVERY_S has passed (lock
        held)."""
        if not self._uses_dirty or self._uses_doc is None:
            return
        now = time.monotonic()
        if not force and now - self._uses_saved_at < USES_SAVE_EVERY_S:
            return
        self._uses_doc.save(self._uses)
        self._uses_saved_at = now
        self._uses_dirty = False

    def close(self) -> None:
        """Close the files of downloads under way (they resume from disk next time)."""
        with self._lock:
            for download in self._downloads.values():
                self._close(download)

    # --- downloads of known manifests (lock held) -------------------------------------------

    def _part_path(self, download: _Download) -> Path:
        d = download
        return self._partial_dir / f"{d.sha256}.{d.size}.{d.chunk_size}.part"

    def _start_download(self, ref: ContentRef) -> _Download:
        download = _Download(ref.sha256, ref.size, ref.chunk_size, ref.chunks)
        fd = os.open(self._part_path(download), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, ref.size + ref.chunks)
        except OSError:
            os.close(fd)
            raise
        download.fd = fd  # kept open for the chunks to come
        self._downloads[ref.sha256] = download
        early = self._forget_early(ref.sha256)
        if early is not None:
            self._adopt(download, early)
        return download

    def _adopt(self, download: _Download, early: _Early) -> None:
        """Move chunks that came before the manifest into its download."""
        folder = self._partial_dir / download.sha256
        if early.count == download.chunks:
            for index in sorted(early.sizes):
                data = (folder / str(index)).read_bytes()
                self._write(download, Chunk(download.sha256, index, early.count, data))
        else:
            self._log.warning(
                "discarding %d early chunks of content %s: they said %d chunks, the manifest %d",
                len(early.sizes), download.sha256[:12], early.count, download.chunks,
            )
        shutil.rmtree(folder, ignore_errors=True)

    def _write(self, download: _Download, chunk: Chunk) -> ChunkOutcome:
        sha = download.sha256
        if chunk.count != download.chunks:
            self._refusals.warning(
                "chunks that do not fit their manifest",
                "chunk %d of content %s says %d chunks, its manifest %d; dropped",
                chunk.index, sha[:12], chunk.count, download.chunks,
            )
            return "refused"
        expected = download.expected_length(chunk.index)
        if len(chunk.data) != expected:
            self._refusals.warning(
                "chunks that do not fit their manifest",
                "chunk %d of content %s has %d bytes, its manifest says %d; dropped",
                chunk.index, sha[:12], len(chunk.data), expected,
            )
            return "refused"
        if chunk.index in download.held:
            return "duplicate"
        if download.fd is None:
            download.fd = os.open(self._part_path(download), os.O_RDWR)
        os.pwrite(download.fd, chunk.data, chunk.index * download.chunk_size)
        os.pwrite(download.fd, b"\x01", download.size + chunk.index)  # after the data it marks
        download.held.add(chunk.index)
        if chunk.index == download.hashed:
            download.hasher.update(chunk.data)
            download.hashed += 1
            self._hash_held(download)
        return "stored"

    def _hash_held(self, download: _Download) -> None:
        """Hash on from the file the chunks held beyond `hashed` (they came out of order)."""
        while download.hashed in download.held and download.hashed < download.chunks:
            index = download.hashed
            assert download.fd is not None
            data = os.pread(
                download.fd, download.expected_length(index), index * download.chunk_size
            )
            download.hasher.update(data)
            download.hashed += 1

    def _close(self, download: _Download) -> None:
        if download.fd is not None:
            os.close(download.fd)
            download.fd = None

    def _finish_if_complete(self, download: _Download) -> ChunkOutcome:
        if len(download.held) < download.chunks:
            return "stored"
        sha = download.sha256
        part = self._part_path(download)
        try:
            if download.fd is None:
                download.fd = os.open(part, os.O_RDWR)
            self._hash_held(download)  # what came out of order (or before a restart)
            digest = download.hasher
            os.ftruncate(download.fd, download.size)
            if self._durable:
                os.fsync(download.fd)
        except OSError as exc:
            self._log.error(
                "could not read back content %s (%s); discarded, will fetch it again",
                sha[:12], exc,
            )
            self._restart_download(download)
            return "corrupt"
        if digest.hexdigest() != sha:
            self._log.warning(
                "content %s failed verification after joining its %d chunks (SHA-256 "
                "differs): a chunk was damaged or forged; discarded, will fetch it again",
                sha[:12], download.chunks,
            )
            self._restart_download(download)
            return "corrupt"
        self._close(download)
        os.replace(part, self.path(sha))
        if self._held_bytes is not None:
            self._held_bytes += download.size
        del self._downloads[sha]
        self._uses[sha] = self._clock.now().timestamp()  # delivered: a use
        self._save_uses()
        self._log.info("content %s complete and verified (%d bytes)", sha[:12], download.size)
        return "complete"

    def _restart_download(self, download: _Download) -> None:
        self._close(download)
        self._part_path(download).unlink(missing_ok=True)
        del self._downloads[download.sha256]
        ref = self._manifests.get(download.sha256)
        if ref is not None:
            self._start_download(ref)

    def _drop_download(self, sha256: str) -> None:
        download = self._downloads.pop(sha256, None)
        if download is not None:
            self._close(download)
            self._part_path(download).unlink(missing_ok=True)

    # --- early chunks (lock held) -----------------------------------------------------------

    def _keep_early(self, chunk: Chunk, topic: str) -> ChunkOutcome:
        """Keep a chunk no play command named yet: O(1) whatever is kept already."""
        now = self._clock.now()
        self._expire_early(now)
        sha = chunk.sha256
        early = self._early.get(sha)
        if early is not None and early.count != chunk.count:
            self._refusals.warning(
                "early chunks that contradict the ones before them",
                "chunk %d of content %s says %d chunks, earlier ones said %d; dropped",
                chunk.index, sha[:12], chunk.count, early.count,
            )
            return "refused"
        if early is not None and chunk.index in early.sizes:
            self._touch_early(sha, early, now)
            return "duplicate"
        cost = max(len(chunk.data), BLOCK)
        if (early.cost if early is not None else EARLY_CONTENT_COST) + cost > (
            self._max_early_content_bytes
        ):
            self._refusals.warning(
                "early chunks beyond the budget of their content",
                "content %s: its chunks that came before any play command named it exceed "
                "%s; chunk %d dropped (it is asked for again if a play needs it)",
                sha[:12], _size(self._max_early_content_bytes), chunk.index,
            )
            return "refused"
        folder = self._partial_dir / sha
        if early is None:
            early = _Early(count=chunk.count, topic=topic, touched=now)
            folder.mkdir(exist_ok=True)
            (folder / "count").write_text(str(chunk.count))
            self._early[sha] = early
            self._early_by_topic.setdefault(topic, OrderedDict())[sha] = None
            self._early_bytes += early.cost
            self._early_topic_bytes[topic] = self._early_topic_bytes.get(topic, 0) + early.cost
        self._touch_early(sha, early, now)
        (folder / str(chunk.index)).write_bytes(chunk.data)
        early.sizes[chunk.index] = len(chunk.data)
        early.cost += cost
        self._early_bytes += cost
        self._early_topic_bytes[early.topic] += cost
        self._keep_within_budget(early.topic)
        return "stored"

    def _touch_early(self, sha: str, early: _Early, now: datetime) -> None:
        early.touched = now
        self._early.move_to_end(sha)
        self._early_by_topic[early.topic].move_to_end(sha)

    def _forget_early(self, sha: str) -> _Early | None:
        """Take a content out of the early bookkeeping (its files stay)."""
        early = self._early.pop(sha, None)
        if early is None:
            return None
        self._early_bytes -= early.cost
        mine = self._early_by_topic[early.topic]
        del mine[sha]
        left = self._early_topic_bytes[early.topic] - early.cost
        if mine:
            self._early_topic_bytes[early.topic] = left
        else:  # no entry kept for a topic with nothing early: bounded by what is kept
            del self._early_by_topic[early.topic]
            del self._early_topic_bytes[early.topic]
        return early

    def _drop_early(self, sha: str) -> _Early | None:
        early = self._forget_early(sha)
        if early is not None:
            shutil.rmtree(self._partial_dir / sha, ignore_errors=True)
            self._early_dropped += 1
        return early

    def _keep_within_budget(self, topic: str) -> None:
        """Drop the oldest early content of this topic while the topic is over its budget,
        then the oldest of all while all of it is over the total budget."""
        dropped = 0
        mine = self._early_by_topic.get(topic)
        while mine and (self._early_topic_bytes[topic] > self._max_early_topic_bytes
                        or len(mine) > self._max_early_topic_contents):
            self._drop_early(next(iter(mine)))
            dropped += 1
            mine = self._early_by_topic.get(topic)
        while self._early and (self._early_bytes > self._max_early_bytes
                               or len(self._early) > self._max_early_contents):
            self._drop_early(next(iter(self._early)))
            dropped += 1
        if dropped:
            self._refusals.warning(
                "early content dropped beyond the budgets",
                "chunks that came before their play command exceed their budget (%s or %d "
                "contents on %s, %s or %d contents in all): dropped the oldest %d contents "
                "of them", _size(self._max_early_topic_bytes), self._max_early_topic_contents,
                topic or "(from disk)", _size(self._max_early_bytes), self._max_early_contents,
                dropped,
            )

    def _expire_early(self, now: datetime) -> int:
        """Drop early content untouched for early_ttl: the oldest first, O(what goes)."""
        limit = now - self._early_ttl
        gone = 0
        while self._early:
            sha, early = next(iter(self._early.items()))
            if early.touched > limit:
                break
            self._drop_early(sha)
            gone += 1
        if gone:
            self._refusals.info(
                "early content expired",
                "dropped %d contents whose chunks came more than %d min ago and that no play "
                "command has named since", gone, int(self._early_ttl.total_seconds() // 60),
            )
        return gone

    # --- the rest ---------------------------------------------------------------------------

    def _notify(self, sha256: str) -> None:
        for listener in self._listeners:
            try:
                listener(sha256)
            except Exception:
                self._log.exception("a listener failed on completed content %s", sha256[:12])

    def _load(self) -> None:
        """Index the downloads and early chunks the previous run left."""
        entries = sorted(self._partial_dir.iterdir(), key=lambda p: p.stat().st_mtime)
        for entry in entries:
            if entry.is_dir():
                self._load_early(entry)
            elif entry.suffix == ".part":
                self._load_download(entry)
            else:
                entry.unlink(missing_ok=True)
        self._keep_within_budget("")  # budgets may have been lowered since

    def _load_early(self, folder: Path) -> None:
        sha = folder.name
        try:
            count = int((folder / "count").read_text())
        except (OSError, ValueError):
            count = 0
        sizes: dict[int, int] = {}
        if len(sha) == 64 and count > 0 and not self.has(sha):
            for piece in folder.iterdir():
                if piece.name.isdigit() and int(piece.name) < count:
                    sizes[int(piece.name)] = piece.stat().st_size
        if not sizes:
            shutil.rmtree(folder, ignore_errors=True)
            return
        early = _Early(count=count, topic="", touched=self._clock.now(), sizes=sizes)
        early.cost += sum(max(size, BLOCK) for size in sizes.values())
        self._early[sha] = early
        self._early_by_topic.setdefault("", OrderedDict())[sha] = None
        self._early_bytes += early.cost
        self._early_topic_bytes[""] = self._early_topic_bytes.get("", 0) + early.cost

    def _load_download(self, part: Path) -> None:
        try:
            sha, size_text, chunk_text = part.name.removesuffix(".part").split(".")
            size, chunk_size = int(size_text), int(chunk_text)
            chunks = max(1, -(-size // chunk_size))
            if len(sha) != 64 or self.has(sha) or part.stat().st_size != size + chunks:
                raise ValueError("stale or damaged")
            with part.open("rb") as fh:
                fh.seek(size)
                marks = fh.read(chunks)
        except (OSError, ValueError):
            part.unlink(missing_ok=True)
            return
        held = {i for i, mark in enumerate(marks) if mark == 1}
        self._downloads[sha] = _Download(sha, size, chunk_size, chunks, held)


def _size(count: int) -> str:
    return f"{count // (1024 * 1024)} MB" if count >= 1024 * 1024 else f"{count // 1024} KB"
