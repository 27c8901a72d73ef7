"""Priority end to end: the real controller sends, a real agent process plays (file
output, real ffmpeg), on a real mosquitto. A higher level interrupts a lower one within
500 ms of being published (so within 500 ms of arriving), measured on the agent's own
event times; equal and lower levels wait; a stop ends playback at once; a play that
asks for it is replayed after the interruption.

All processes share this machine's clock, so the agent's `at` and the test's publish
time are comparable.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import MosquittoBroker, require, wait_until
from fleet_rig import FleetRig

from protocol.messages import Level

pytestmark = pytest.mark.slow

ME = "pre-01"
LIMIT_S = 0.5


@pytest.fixture
def rig(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[FleetRig]:
    require("ffmpeg", shutil.which("ffmpeg") is not None, "apt-get install ffmpeg")
    r = FleetRig(tmp_path, mosquitto_broker, [ME])
    r.start_controller()
    r.start_agent(ME)
    r.wait_online(ME)
    try:
        yield r
    finally:
        r.close()


INTERRUPTING: list[tuple[Level, Level]] = [
    ("normal", "priority"), ("normal", "emergency"), ("priority", "emergency"),
]


def test_each_higher_level_interrupts_a_lower_one_within_500_ms(rig: FleetRig) -> None:
    long_audio = rig.audio(30, freq=330)
    short_audio = rig.audio(0.5, freq=880)
    latencies: list[str] = []
    for lower, higher in INTERRUPTING:
        low = rig.send(long_audio, level=lower)
        rig.wait_kind(low.play_id, ME, "playing")
        published = datetime.now(UTC)
        high = rig.send(short_audio, level=higher)
        rig.wait_kind(low.play_id, ME, "interrupted")
        rig.wait_kind(high.play_id, ME, "finished")
        cut = (rig.at(low.play_id, ME, "interrupted") - published).total_seconds()
        started = (rig.at(high.play_id, ME, "playing") - published).total_seconds()
        latencies.append(f"{lower}->{higher}: interrupted after {cut * 1000:.0f} ms, "
                         f"{higher} playing after {started * 1000:.0f} ms")
        assert cut < LIMIT_S, latencies[-1]
        assert started < LIMIT_S, latencies[-1]
        reason = next(e["reason"] for e in rig.events(low.play_id, ME)
                      if e["kind"] == "interrupted")
        assert reason.startswith(f"preempted by {high.bulletin} ({higher})")
        assert rig.kinds(low.play_id, ME).count("playing") == 1  # not replayed: not asked
    print("\n".join(latencies))


@pytest.mark.parametrize(("playing", "arriving"), [
    ("normal", "normal"), ("priority", "normal"), ("emergency", "priority"),
    ("emergency", "emergency"),
])
def test_an_equal_or_lower_level_waits_its_turn(
    rig: FleetRig, playing: Level, arriving: Level
) -> None:
    first = rig.send(rig.audio(1.5, freq=330), level=playing)
    rig.wait_kind(first.play_id, ME, "playing")
    second = rig.send(rig.audio(0.3, freq=880), level=arriving)
    rig.wait_kind(second.play_id, ME, "finished")
    assert rig.kinds(first.play_id, ME)[-1] == "finished"
    assert rig.at(second.play_id, ME, "playing") >= rig.at(first.play_id, ME, "finished")


def test_a_stop_command_ends_playback_at_once(rig: FleetRig) -> None:
    play = rig.send(rig.audio(30, freq=330), level="priority")
    rig.wait_kind(play.play_id, ME, "playing")
    published = datetime.now(UTC)
    rig.ctl.distributor.send_stop(play.play_id, [ME])
    rig.wait_kind(play.play_id, ME, "interrupted")
    cut = (rig.at(play.play_id, ME, "interrupted") - published).total_seconds()
    print(f"stop: interrupted after {cut * 1000:.0f} ms")
    assert cut < LIMIT_S
    reason = next(e["reason"] for e in rig.events(play.play_id, ME) if e["kind"] == "interrupted")
    assert reason == "stopped by the controller"


def test_an_interrupted_play_that_asks_for_it_is_replayed_afterwards(rig: FleetRig) -> None:
    news = rig.send(rig.audio(2.0, freq=330), level="normal", replay=True, name="tin-sang")
    rig.wait_kind(news.play_id, ME, "playing")
    alert = rig.send(rig.audio(0.5, freq=880), level="emergency", name="canh-bao")
    rig.wait_kind(alert.play_id, ME, "finished")
    rig.wait_kind(news.play_id, ME, "finished", timeout=20)
    assert rig.kinds(news.play_id, ME) == [
        "received", "delivered", "playing", "interrupted", "playing", "finished",
    ]
    assert rig.at(news.play_id, ME, "playing", nth=1) >= rig.at(alert.play_id, ME, "finished")
    wait_until(lambda: len(rig.wavs(news.play_id, ME)) == 2, 5, "a WAV for each airing")
    assert len(rig.wavs(alert.play_id, ME)) == 1
