"""A live session and the plays share one output by level, as plays do among themselves:
an emergency interrupts a rebroadcast, which then resumes live (not where it was); a
live emergency interrupts a normal play. Real threads and the system clock; the output
is the test's (FakeOutput: it plays until the test says so, and counts live packets)."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from agent_support import FakeOutput, Keys, command, content, play_body
from conftest import wait_until

from device_agent.live import (
    HAND_SLOTS,
    LOOKAHEAD_S,
    OPEN_AHEAD_S,
    Amplifier,
    LiveChannel,
    LiveSession,
    PlayerControl,
)
from device_agent.player import Player, PlayRecord
from protocol import live as frames
from protocol.clock import SystemClock
from protocol.messages import ContentRef, EventKind, Level, LiveBody

CLUSTER = "c-live-02"


class HeldCache:
    def __init__(self) -> None:
        self.held: set[str] = set()

    def has(self, sha256: str) -> bool:
        return sha256 in self.held

    def path(self, sha256: str) -> Path:
        return Path(f"/nonexistent/{sha256}.opus")

    def missing(self, ref: ContentRef) -> list[int]:
        return []


@dataclass
class World:
    keys: Keys = field(default_factory=Keys)
    clock: SystemClock = field(default_factory=SystemClock)
    output: FakeOutput = field(default_factory=FakeOutput)
    cache: HeldCache = field(default_factory=HeldCache)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reports: list[tuple[str, str, str | None, float | None]] = field(default_factory=list)
    channel: LiveChannel | None = None
    player: Player | None = None
    feeders: list[threading.Thread] = field(default_factory=list)

    def report(self, kind: EventKind, play_id: str, reason: str | None,
               seconds: float | None) -> None:  # fmt: skip
        with self.lock:
            self.reports.append((kind, play_id, reason, seconds))

    def kinds(self, play_id: str) -> list[str]:
        with self.lock:
            return [k for k, p, _r, _s in self.reports if p == play_id]

    def of(self, play_id: str, kind: str) -> tuple[str | None, float | None]:
        with self.lock:
            for k, p, r, s in self.reports:
                if p == play_id and k == kind:
                    return r, s
        raise AssertionError(f"no {kind} for {play_id}: {self.reports}")

    def channel_with(self, amplifier: Amplifier) -> LiveChannel:
        """The world's live channel again, with a relay to switch."""
        assert self.channel is not None
        assert self.player is not None
        old = self.channel
        self.channel = LiveChannel(
            self.output, self.clock, lambda: [self.keys.private.public_key()],
            old._player, old._report, keep_handed=True, amplifier=amplifier,
        )
        return self.channel

    def ticking(self, condition: object) -> bool:
        """The agent's worker ticks the player after every message: so does the test."""
        assert self.player is not None
        self.player.tick()
        return bool(condition() if callable(condition) else condition)

    def live(self, level: Level, seconds: float) -> LiveSession:
        """A live session starting now, its frames fed as a real-time source would."""
        assert self.channel is not None
        now = self.clock.now()
        body = LiveBody(
            session_id=uuid.uuid4().hex, source="rebroadcast", bulletin=f"live {level}",
            level=level, origin=now, delay_ms=600, ends_by=now + timedelta(minutes=5),
            idle_end_s=2,
        )  # fmt: skip
        session = self.channel.start(command(self.keys.signer, body, now, clusters=[CLUSTER]))
        assert session is not None
        slots = int(seconds * 1000 / frames.SLOT_MS)
        channel = self.channel

        def feed() -> None:
            for first in range(0, slots, 10):
                due = body.origin + timedelta(milliseconds=frames.SLOT_MS * (first + 10))
                threading.Event().wait(max(0.0, (due - self.clock.now()).total_seconds()))
                payload = frames.encode(
                    self.keys.signer.sign_raw, body.session_id, first // 10, first,
                    [b"\x01" * 60] * 10, end=first + 10 >= slots,
                )
                channel.frame("loa/v1/cluster/c-live-02/live", payload)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        self.feeders.append(feeder)
        return session


@pytest.fixture
def world() -> Iterator[World]:
    w = World()

    def play_report(kind: EventKind, record: PlayRecord, reason: str | None) -> None:
        w.report(kind, record.play_id, reason, None)

    player = Player(w.output, w.cache, w.clock, None, report=play_report,
                    request_chunks=lambda ref, missing: None)  # fmt: skip
    w.player = player

    def done(session: LiveSession) -> None:
        assert w.channel is not None
        w.channel.ended(session)
        player.live_done(session)

    w.channel = LiveChannel(
        w.output, w.clock, lambda: [w.keys.private.public_key()],
        PlayerControl(claim=player.live_claim, done=done, released=player.live_released),
        lambda kind, s, reason, seconds: w.report(kind, s.session_id, reason, seconds),
        keep_handed=True,
    )
    yield w
    w.channel.close()
    player.close()


def test_an_emergency_interrupts_a_rebroadcast_which_resumes_live(world: World) -> None:
    session = world.live("normal", 4.0)
    wait_until(lambda: world.ticking(lambda: "playing" in world.kinds(session.session_id)), 5,
               "the rebroadcast on air")  # fmt: skip
    audio = content()
    world.cache.held.add(audio.ref.sha256)
    assert world.player is not None
    now = world.clock.now()
    world.player.accept(command(world.keys.signer, play_body(
        "flood", [audio.ref], now, level="emergency"), now, clusters=[CLUSTER]))
    wait_until(lambda: world.ticking(lambda: "flood" in world.output.started), 5,
               "the emergency on the output")  # fmt: skip
    assert world.player.live_on_air() is None
    threading.Event().wait(1.0)  # a second of the rebroadcast passes under the emergency
    world.output.finish("flood")
    wait_until(lambda: world.ticking(lambda: "finished" in world.kinds(session.session_id)), 10,
               "the end of the rebroadcast")  # fmt: skip

    assert world.kinds("flood") == ["received", "delivered", "playing", "finished"]
    assert world.kinds(session.session_id) == ["playing", "gap", "finished"], world.reports
    reason, seconds = world.of(session.session_id, "gap")
    assert reason is not None
    assert "preempted by bulletin flood (emergency)" in reason
    assert seconds is not None
    assert 0.6 < seconds < 2.0  # a second, in whole hand-overs of HAND_SLOTS
    _why, aired = world.of(session.session_id, "finished")
    assert aired is not None
    assert abs(aired + seconds - 4.0) < 0.3
    # Live, not where it was: the slots under the emergency were never handed over, and
    # every slot handed over went out on its time (capture + delay), before and after.
    assert session.handed is not None
    slots = [slot for slot, _at in session.handed]
    assert slots == sorted(slots)
    assert len(set(slots)) == len(slots)
    assert max(b - a for a, b in itertools.pairwise(slots)) > 40
    for slot, at in session.handed:
        early = session.due(slot).timestamp() - at
        assert -0.1 < early <= LOOKAHEAD_S + (HAND_SLOTS - 1) * 0.02 + 0.01, (slot, early)


def test_a_live_emergency_interrupts_a_normal_play(world: World) -> None:
    audio = content()
    world.cache.held.add(audio.ref.sha256)
    assert world.player is not None
    now = world.clock.now()
    world.player.accept(command(world.keys.signer, play_body(
        "news", [audio.ref], now), now, clusters=[CLUSTER]))
    wait_until(lambda: world.ticking(lambda: "news" in world.output.started), 5,
               "the news on the output")  # fmt: skip
    session = world.live("emergency", 1.0)
    wait_until(lambda: world.ticking(lambda: "finished" in world.kinds(session.session_id)), 10,
               "the end of the live emergency")  # fmt: skip
    assert world.kinds("news")[-1] == "interrupted"
    assert "the live session live emergency" in (world.of("news", "interrupted")[0] or "")
    assert world.kinds(session.session_id) == ["playing", "finished"]


class WarmingAmplifier:
    """An amplifier whose relay takes warm_up_s: when it was switched on, and off."""

    def __init__(self, warm_up_s: float) -> None:
        self.warm_up_s = warm_up_s
        self.on_at: list[float] = []
        self.finished = 0

    def power_on_for_play(self, stop: threading.Event | None = None) -> bool:
        self.on_at.append(time.time())
        threading.Event().wait(self.warm_up_s)  # the relay's warm-up, as the real one waits
        return True

    def play_finished(self) -> None:
        self.finished += 1


def test_the_amplifier_is_switched_on_its_warm_up_before_the_first_sound(world: World) -> None:
    amplifier = WarmingAmplifier(0.5)
    assert world.channel is not None
    world.channel = world.channel_with(amplifier)
    session = world.live("normal", 1.0)
    wait_until(lambda: world.ticking(lambda: "finished" in world.kinds(session.session_id)), 10,
               "the end of the session")  # fmt: skip
    first_due = session.due(0).timestamp()
    assert len(amplifier.on_at) == 1
    # Its warm-up ahead, and the time to open the output.
    assert first_due - 0.5 - OPEN_AHEAD_S - 0.1 < amplifier.on_at[0] < first_due - 0.5
    assert amplifier.finished == 1
    assert world.kinds(session.session_id) == ["playing", "finished"]
    assert session.handed is not None
    assert session.handed[0][0] == 0  # the first slot went out: nothing lost to the warm-up
