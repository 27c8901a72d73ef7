"""The content cache: audio on the SD card by SHA-256, reassembled from chunks and verified.

Layout under the cache directory:

    <sha256>.opus              complete, verified content (what the player plays)
    partial/<sha256>/<index>   chunks received so far, one file each

A play command carries the manifest (`ContentRef`: hash, size, chunk size and count) of
each item; `expect(ref)` tells the cache about it. Chunks may arrive before the command
(they travel on another topic), so chunks of a hash nobody announced yet are kept too,
within a budget (`max_partial_bytes`, oldest dropped first). Once every chunk of a known
manifest is in, the pieces are joined, the size and SHA-256 checked against the signed
manifest, and the result moved into place atomically: a forged or damaged chunk can make
a download fail (it is then discarded and fetched again), never make a speaker play it.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from protocol.chunks import Chunk
from protocol.messages import ContentRef

module_log = logging.getLogger(__name__)

DEFAULT_MAX_PARTIAL_BYTES = 256 * 1024 * 1024
# Every stored chunk costs at least a file system block, however small its data.
BLOCK = 4096

ChunkOutcome = Literal[
    "stored",  # kept; more chunks are needed
    "duplicate",  # already held (the chunk, or the whole content)
    "complete",  # this chunk completed the content, which verified and is now playable
    "corrupt",  # this chunk completed the content, which failed verification: discarded
    "refused",  # does not fit the manifest (count or length); dropped
]

CompletionListener = Callable[[str], None]


@dataclass
class _Partial:
    count: int
    sizes: dict[int, int] = field(default_factory=dict)
    order: int = 0  # larger: touched more recently

    @property
    def cost(self) -> int:
        return sum(max(size, BLOCK) for size in self.sizes.values())


def _expected_length(ref: ContentRef, index: int) -> int:
    if index < ref.chunks - 1:
        return ref.chunk_size
    return ref.size - ref.chunk_size * (ref.chunks - 1)


class Cache:
    """Content by SHA-256 on disk; thread-safe; listeners hear of each completed content."""

    def __init__(
        self,
        directory: Path,
        *,
        max_partial_bytes: int = DEFAULT_MAX_PARTIAL_BYTES,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        self._log = log or module_log
        self.directory = directory
        self._partial_dir = directory / "partial"
        self._partial_dir.mkdir(parents=True, exist_ok=True)
        self._max_partial_bytes = max_partial_bytes
        self._lock = threading.Lock()
        self._manifests: dict[str, ContentRef] = {}
        self._partials: dict[str, _Partial] = {}
        self._listeners: list[CompletionListener] = []
        self._order = itertools.count(1)
        self._load()

    # --- queries ----------------------------------------------------------------------------

    def path(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.opus"

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def missing(self, ref: ContentRef) -> list[int]:
        """Indexes of the chunks of ref not held yet ([] when the content is complete)."""
        if self.has(ref.sha256):
            return []
        with self._lock:
            partial = self._partials.get(ref.sha256)
            held = set(partial.sizes) if partial and partial.count == ref.chunks else set()
        return [i for i in range(ref.chunks) if i not in held]

    def manifest(self, sha256: str) -> ContentRef | None:
        with self._lock:
            return self._manifests.get(sha256)

    def partial_bytes(self) -> int:
        with self._lock:
            return sum(p.cost for p in self._partials.values())

    def add_listener(self, listener: CompletionListener) -> None:
        self._listeners.append(listener)

    # --- changes ----------------------------------------------------------------------------

    def expect(self, ref: ContentRef) -> bool:
        """Learn a manifest from a play command; True if the content is (now) complete."""
        if self.has(ref.sha256):
            return True
        with self._lock:
            self._manifests[ref.sha256] = ref
            partial = self._partials.get(ref.sha256)
            if partial is not None:
                self._drop_misfits(ref, partial)
            outcome = self._assemble_if_complete(ref)
        if outcome == "complete":
            self._notify(ref.sha256)
        return outcome == "complete"

    def add_chunk(self, chunk: Chunk) -> ChunkOutcome:
        """Store one chunk; join and verify the content when it was the last one missing."""
        if self.has(chunk.sha256):
            return "duplicate"
        with self._lock:
            outcome = self._store(chunk)
        if outcome == "complete":
            self._notify(chunk.sha256)
        return outcome

    # --- internals (called with the lock held) ---------------------------------------------

    def _store(self, chunk: Chunk) -> ChunkOutcome:
        sha = chunk.sha256
        ref = self._manifests.get(sha)
        partial = self._partials.get(sha)
        if ref is not None:
            if chunk.count != ref.chunks:
                self._log.warning(
                    "chunk %d of content %s says %d chunks, its manifest %d; dropped",
                    chunk.index, sha[:12], chunk.count, ref.chunks,
                )
                return "refused"
            expected = _expected_length(ref, chunk.index)
            if len(chunk.data) != expected:
                self._log.warning(
                    "chunk %d of content %s has %d bytes, its manifest says %d; dropped",
                    chunk.index, sha[:12], len(chunk.data), expected,
                )
                return "refused"
        if partial is not None and partial.count != chunk.count:
            self._log.warning(
                "chunk %d of content %s says %d chunks, earlier ones said %d; dropped",
                chunk.index, sha[:12], chunk.count, partial.count,
            )
            return "refused"
        if partial is None:
            partial = self._partials[sha] = _Partial(count=chunk.count)
        partial.order = next(self._order)
        if chunk.index in partial.sizes:
            return "duplicate"
        folder = self._partial_dir / sha
        if not folder.is_dir():
            folder.mkdir()
            (folder / "count").write_text(str(chunk.count))
        target = folder / str(chunk.index)
        tmp = folder / f"{chunk.index}.tmp"
        tmp.write_bytes(chunk.data)
        os.replace(tmp, target)
        partial.sizes[chunk.index] = len(chunk.data)
        if ref is not None:
            return self._assemble_if_complete(ref)
        self._keep_within_budget(keep=sha)
        return "stored"

    def _drop_misfits(self, ref: ContentRef, partial: _Partial) -> None:
        """Chunks kept before the manifest was known that cannot belong to it."""
        if partial.count != ref.chunks:
            self._log.warning(
                "discarding %d early chunks of content %s: they said %d chunks, the manifest %d",
                len(partial.sizes), ref.sha256[:12], partial.count, ref.chunks,
            )
            self._discard(ref.sha256)
            return
        for index, size in list(partial.sizes.items()):
            if size != _expected_length(ref, index):
                (self._partial_dir / ref.sha256 / str(index)).unlink(missing_ok=True)
                del partial.sizes[index]

    def _assemble_if_complete(self, ref: ContentRef) -> ChunkOutcome:
        partial = self._partials.get(ref.sha256)
        if partial is None or len(partial.sizes) < ref.chunks:
            return "stored"
        folder = self._partial_dir / ref.sha256
        final = self.path(ref.sha256)
        tmp = self.directory / f".{ref.sha256}.assembling"
        digest = hashlib.sha256()
        size = 0
        try:
            with tmp.open("wb") as out:
                for index in range(ref.chunks):
                    data = (folder / str(index)).read_bytes()
                    digest.update(data)
                    size += len(data)
                    out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            self._log.error(
                "could not join the chunks of content %s (%s); discarded, will fetch again",
                ref.sha256[:12], exc,
            )
            self._discard(ref.sha256)
            return "corrupt"
        if size != ref.size or digest.hexdigest() != ref.sha256:
            tmp.unlink(missing_ok=True)
            self._log.warning(
                "content %s failed verification after joining %d chunks (%d bytes, expected "
                "%d; SHA-256 %s): a chunk was damaged or forged; discarded, will fetch again",
                ref.sha256[:12], ref.chunks, size, ref.size,
                "matches" if digest.hexdigest() == ref.sha256 else "differs",
            )
            self._discard(ref.sha256)
            return "corrupt"
        os.replace(tmp, final)
        shutil.rmtree(folder, ignore_errors=True)
        del self._partials[ref.sha256]
        self._manifests.pop(ref.sha256, None)
        self._log.info("content %s complete and verified (%d bytes)", ref.sha256[:12], size)
        return "complete"

    def _discard(self, sha256: str) -> None:
        shutil.rmtree(self._partial_dir / sha256, ignore_errors=True)
        self._partials.pop(sha256, None)

    def _keep_within_budget(self, keep: str) -> None:
        total = sum(p.cost for p in self._partials.values())
        if total <= self._max_partial_bytes:
            return
        # Oldest first; chunks nobody has announced go before those of known manifests.
        victims = sorted(
            (sha for sha in self._partials if sha != keep),
            key=lambda sha: (sha in self._manifests, self._partials[sha].order),
        )
        victims.append(keep)
        for sha in victims:
            if total <= self._max_partial_bytes:
                break
            cost = self._partials[sha].cost
            self._log.warning(
                "partial downloads exceed %d MB: dropping %d chunks of content %s%s",
                self._max_partial_bytes // (1024 * 1024), len(self._partials[sha].sizes),
                sha[:12], "" if sha in self._manifests else " (no play command names it yet)",
            )
            self._discard(sha)
            total -= cost

    def _notify(self, sha256: str) -> None:
        for listener in self._listeners:
            try:
                listener(sha256)
            except Exception:
                self._log.exception("a listener failed on completed content %s", sha256[:12])

    def _load(self) -> None:
        """Rebuild the index of partial downloads left by the previous run."""
        for stale in self.directory.glob(".*.assembling"):
            stale.unlink(missing_ok=True)
        folders = sorted(
            (p for p in self._partial_dir.iterdir() if p.is_dir()),
            key=lambda p: p.stat().st_mtime,
        )
        for folder in folders:
            sha = folder.name
            if len(sha) != 64 or self.has(sha):
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                count = int((folder / "count").read_text())
            except (OSError, ValueError):
                shutil.rmtree(folder, ignore_errors=True)
                continue
            sizes: dict[int, int] = {}
            for piece in folder.iterdir():
                if piece.name.isdigit() and int(piece.name) < count:
                    sizes[int(piece.name)] = piece.stat().st_size
                elif piece.name != "count":
                    piece.unlink(missing_ok=True)
            if sizes:
                self._partials[sha] = _Partial(count=count, sizes=sizes, order=next(self._order))
            else:
                shutil.rmtree(folder, ignore_errors=True)
