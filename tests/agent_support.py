"""Test doubles and builders for the device agent tests: a controllable output, signed
commands built the way the controller builds them, and content cut into chunks."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.output import CountingSink, LiveSink, PlayOutcome
from protocol import chunks
from protocol.messages import (
    Address,
    Command,
    CommandBody,
    ContentRef,
    EventKind,
    Level,
    PlayBody,
)
from protocol.signing import Signer, Verifier

CHUNK_SIZE = 1024


class Keys:
    """The controller's key pair for one test, and a stranger's."""

    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        self.signer = Signer(self.private)
        self.verifier = Verifier(self.private.public_key())
        self.stranger = Signer(Ed25519PrivateKey.generate())


def command(
    signer: Signer,
    body: CommandBody,
    now: datetime,
    *,
    clusters: list[str] | None = None,
    groups: list[str] | None = None,
    ttl: timedelta = timedelta(hours=1),
    command_id: str | None = None,
) -> Command:
    return signer.command(
        body, Address(clusters=clusters or [], groups=groups or []), now, ttl, command_id
    )


@dataclass(frozen=True)
class Content:
    data: bytes
    ref: ContentRef

    def frames(self) -> list[bytes]:
        return list(chunks.split(self.data, self.ref.chunk_size))

    def decoded(self) -> list[chunks.Chunk]:
        return [chunks.decode(frame) for frame in self.frames()]


def content(size: int = 3 * CHUNK_SIZE + 100, duration_s: float = 1.0) -> Content:
    data = os.urandom(size)
    ref = ContentRef(
        sha256=chunks.sha256_hex(data),
        size=size,
        duration_s=duration_s,
        chunk_size=CHUNK_SIZE,
        chunks=chunks.chunk_count(size, CHUNK_SIZE),
    )
    return Content(data, ref)


def play_body(
    play_id: str,
    items: list[ContentRef],
    start_at: datetime,
    *,
    level: Level = "normal",
    window: timedelta = timedelta(minutes=5),
    bulletin: str | None = None,
) -> PlayBody:
    return PlayBody(
        play_id=play_id,
        bulletin=bulletin or f"bulletin {play_id}",
        level=level,
        start_at=start_at,
        latest_start=start_at + window,
        items=items,
    )


class FakeOutput:
    """An output that plays until the test says it is done (or the player stops it)."""

    name: str = "fake"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started: list[str] = []  # play ids, in the order they started
        self.volumes: list[int] = []  # the volume each of them was asked to play at
        self._release: dict[str, str | None] = {}  # play id -> error (None: completed)

    def play(
        self,
        items: list[Path],
        duration_s: float,
        label: str,
        stop: threading.Event,
        volume: int = 100,
    ) -> PlayOutcome:
        play_id = label.rsplit(" ", 1)[-1]
        with self._lock:
            self.started.append(play_id)
            self.volumes.append(volume)
        while True:
            with self._lock:
                if play_id in self._release:
                    error = self._release.pop(play_id)
                    if error:
                        return PlayOutcome(completed=False, played_s=0.5, error=error)
                    return PlayOutcome(completed=True, played_s=duration_s)
            if stop.wait(0.005):
                return PlayOutcome(completed=False, played_s=0.1)

    def open_live(self, label: str, pre_skip: int, volume: int = 100) -> LiveSink:
        return CountingSink()

    def finish(self, play_id: str, error: str | None = None) -> None:
        with self._lock:
            self._release[play_id] = error

    def check(self) -> str | None:
        return None


@dataclass
class Reported:
    kind: EventKind
    play_id: str | None
    reason: str | None


@dataclass
class Reports:
    """Collects what the player reports, thread-safely."""

    items: list[Reported] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: EventKind, play_id: str | None, reason: str | None) -> None:
        with self.lock:
            self.items.append(Reported(kind, play_id, reason))

    def kinds(self, play_id: str) -> list[str]:
        with self.lock:
            return [r.kind for r in self.items if r.play_id == play_id]

    def reason(self, play_id: str, kind: str) -> str | None:
        with self.lock:
            for r in self.items:
                if r.play_id == play_id and r.kind == kind:
                    return r.reason
        return None
