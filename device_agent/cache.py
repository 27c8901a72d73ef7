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
another topic); those are kept one file each, within a budget (`max_early_bytes`,
oldest dropped first), and moved into the download when the manifest arrives.

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
import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from device_agent.localdb import StateDocument
from protocol.chunks import Chunk
from protocol.clock import Clock, SystemClock
from protocol.messages import ContentRef

module_log = logging.getLogger(__name__)

DEFAULT_MAX_EARLY_BYTES = 256 * 1024 * 1024
# Every stored early chunk costs at least a file system block, however small its data.
BLOCK = 4096
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
    sizes: dict[int, int] = field(default_factory=dict)
    order: int = 0  # larger: touched more recently

    @property
    def cost(self) -> int:
        return sum(max(size, BLOCK) for size in self.sizes.values())


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
        durable: bool = True,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        uses: StateDocument | None = None,
        clock: Clock | None = None,
    ) -> None:
        """durable: sync completed content to the SD card before it counts as held.
        uses: where the last use of each content is kept (None: in memory only)."""
        self._log = log or module_log
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
        self._durable = durable
        self._lock = threading.Lock()
        self._manifests: dict[str, ContentRef] = {}
        self._downloads: dict[str, _Download] = {}
        self._early: dict[str, _Early] = {}
        self._listeners: list[CompletionListener] = []
        self._order = itertools.count(1)
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
        """Disk taken by chunks that came before their play command."""
        with self._lock:
            return sum(p.cost for p in self._early.values())

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

    def add_chunk(self, chunk: Chunk) -> ChunkOutcome:
        """Store one chunk; join and verify the content when it was the last one missing."""
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
                outcome = self._keep_early(chunk)
        if outcome == "complete":
            self._notify(chunk.sha256)
        return outcome

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
        early = self._early.pop(ref.sha256, None)
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
            self._log.warning(
                "chunk %d of content %s says %d chunks, its manifest %d; dropped",
                chunk.index, sha[:12], chunk.count, download.chunks,
            )
            return "refused"
        expected = download.expected_length(chunk.index)
        if len(chunk.data) != expected:
            self._log.warning(
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

    def _keep_early(self, chunk: Chunk) -> ChunkOutcome:
        sha = chunk.sha256
        early = self._early.get(sha)
        if early is not None and early.count != chunk.count:
            self._log.warning(
                "chunk %d of content %s says %d chunks, earlier ones said %d; dropped",
                chunk.index, sha[:12], chunk.count, early.count,
            )
            return "refused"
        folder = self._partial_dir / sha
        if early is None:
            early = self._early[sha] = _Early(count=chunk.count)
            folder.mkdir(exist_ok=True)
            (folder / "count").write_text(str(chunk.count))
        early.order = next(self._order)
        if chunk.index in early.sizes:
            return "duplicate"
        (folder / str(chunk.index)).write_bytes(chunk.data)
        early.sizes[chunk.index] = len(chunk.data)
        self._keep_within_budget(keep=sha)
        return "stored"

    def _keep_within_budget(self, keep: str) -> None:
        total = sum(p.cost for p in self._early.values())
        if total <= self._max_early_bytes:
            return
        victims = sorted((s for s in self._early if s != keep), key=lambda s: self._early[s].order)
        victims.append(keep)
        for sha in victims:
            if total <= self._max_early_bytes:
                break
            early = self._early.pop(sha)
            total -= early.cost
            shutil.rmtree(self._partial_dir / sha, ignore_errors=True)
            self._log.warning(
                "chunks that came before their play command exceed %d MB: dropped the %d "
                "chunks of content %s",
                self._max_early_bytes // (1024 * 1024), len(early.sizes), sha[:12],
            )

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
        if sizes:
            self._early[sha] = _Early(count=count, sizes=sizes, order=next(self._order))
        else:
            shutil.rmtree(folder, ignore_errors=True)

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
