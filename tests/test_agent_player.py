"""The player: start times, the three levels, stops, missing audio, restarts, replays
after an interruption, the volume, and the amplifier switched on in time.

Time is a ManualClock moved by the test; the output is a fake the test finishes by
hand, running on the player's real output thread.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_support import FakeOutput, Keys, Reports, command, content, play_body
from conftest import wait_until

from device_agent.localdb import LocalDatabase, StateTable
from device_agent.player import MAX_REPLAYS, REPLAY_WITHIN, AmplifierControl, Player, PlayRecord
from protocol.clock import ManualClock
from protocol.messages import LEVELS, Command, ContentRef, EventKind, Level, PlayBody

T0 = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)
ME = "hg-phung-hiep-07"


class FakeCache:
    """Audio held by hash; a ref is either wholly held or has `lacking` chunks missing."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.lacking: dict[str, int] = {}

    def has(self, sha256: str) -> bool:
        return sha256 in self.held

    def path(self, sha256: str) -> Path:
        return Path(f"/nonexistent/{sha256}.opus")

    def missing(self, ref: ContentRef) -> list[int]:
        if ref.sha256 in self.held:
            return []
        return list(range(self.lacking.get(ref.sha256, ref.chunks)))


class Rig:
    def __init__(self, state: StateTable | None) -> None:
        self.keys = Keys()
        self.clock = ManualClock(T0)
        self.output = FakeOutput()
        self.cache = FakeCache()
        self.reports = Reports()
        self.requests: list[tuple[str, list[int]]] = []
        self.state = state
        self.amplifier: AmplifierControl | None = None
        self.content_arrived: datetime | None = None
        self.bodies: dict[str, PlayBody] = {}  # what play() sent, by play id
        self.player = self.new_player()
        self._ids = itertools.count(1)

    def new_player(self) -> Player:
        return Player(
            self.output, self.cache, self.clock, self.state,
            report=self._report, request_chunks=self._request, request_interval_s=10,
            amplifier=self.amplifier, default_volume=80,
            content_activity=lambda: self.content_arrived,
        )

    def _report(self, kind: EventKind, record: PlayRecord, reason: str | None) -> None:
        self.reports.add(kind, record.play_id, reason)

    def _request(self, ref: ContentRef, missing: list[int]) -> None:
        self.requests.append((ref.sha256, missing))

    def play(
        self,
        play_id: str,
        start_in: float = 0,
        level: Level = "normal",
        held: bool = True,
        window: timedelta = timedelta(minutes=5),
        replay: bool = False,
        volume: int | None = None,
    ) -> Command:
        c = content()
        if held:
            self.cache.held.add(c.ref.sha256)
        start = self.clock.now() + timedelta(seconds=start_in)
        body = play_body(play_id, [c.ref], start, level=level, window=window)
        if replay or volume is not None:
            body = body.model_copy(update={"replay_if_interrupted": replay, "volume": volume})
        self.bodies[play_id] = body
        cmd = command(self.keys.signer, body, self.clock.now(), clusters=[ME])
        assert self.player.accept(cmd)
        return cmd

    def kinds(self, play_id: str) -> list[str]:
        return self.reports.kinds(play_id)

    def wait_for(self, play_id: str, kind: str) -> None:
        wait_until(
            lambda: kind in self.kinds(play_id), 5, f"{play_id} {kind} ({self.kinds(play_id)})"
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(LocalDatabase(tmp_path / "agent.sqlite").table("plays"))
    yield r
    r.player.close(1)


def test_received_delivered_playing_finished_at_the_start_time(rig: Rig) -> None:
    rig.play("p1", start_in=30)
    assert rig.kinds("p1") == ["received", "delivered"]
    rig.player.tick()
    assert rig.output.started == []
    rig.clock.advance(29.9)
    assert rig.player.tick() == T0 + timedelta(seconds=30)  # when to look again
    rig.clock.advance(0.1)
    rig.player.tick()
    assert rig.kinds("p1")[-1] == "playing"
    wait_until(lambda: rig.output.started == ["p1"], 5, "output to start")
    rig.output.finish("p1")
    rig.wait_for("p1", "finished")
    assert rig.kinds("p1") == ["received", "delivered", "playing", "finished"]


def test_a_play_is_saved_again_when_any_field_it_saves_changes(rig: Rig) -> None:
    # The saved text is kept until a saved field changes: the list of those fields must
    # be exactly what to_json() writes.
    from device_agent.player import _SAVED_FIELDS

    rig.play("p1", start_in=60)
    record = rig.player.record("p1")
    assert record is not None
    assert set(record.to_json()) == _SAVED_FIELDS
    before = record.saved_text()
    record.replays += 1
    assert record.saved_text() != before


def test_delivered_only_when_all_audio_is_held(rig: Rig) -> None:
    rig.play("p1", start_in=60, held=False)
    assert rig.kinds("p1") == ["received"]
    sha = rig.bodies["p1"].items[0].sha256
    rig.cache.held.add(sha)
    assert rig.player.content_ready(sha)
    rig.player.tick()  # what the agent does next: the report goes out with the save
    assert rig.kinds("p1") == ["received", "delivered"]
    rig.player.content_ready(sha)
    rig.player.tick()
    assert rig.kinds("p1").count("delivered") == 1


PAIRS = list(itertools.product(LEVELS, LEVELS))


@pytest.mark.parametrize(("running", "arriving"), PAIRS, ids=[f"{a}-then-{b}" for a, b in PAIRS])
def test_a_higher_level_interrupts_an_equal_or_lower_one_waits(
    rig: Rig, running: Level, arriving: Level
) -> None:
    rig.play("a", level=running)
    rig.player.tick()
    wait_until(lambda: rig.output.started == ["a"], 5, "first play to start")
    rig.clock.advance(5)
    rig.play("b", level=arriving)
    rig.player.tick()
    if LEVELS.index(arriving) > LEVELS.index(running):
        rig.wait_for("a", "interrupted")
        assert rig.reports.reason("a", "interrupted") == f"preempted by bulletin b ({arriving})"
        rig.wait_for("b", "playing")
        wait_until(lambda: rig.output.started == ["a", "b"], 5, "second play to start")
    else:
        assert rig.kinds("b") == ["received", "delivered"]
        assert rig.output.started == ["a"]
        rig.output.finish("a")
        rig.wait_for("a", "finished")
        rig.wait_for("b", "playing")
    rig.output.finish("b")
    rig.wait_for("b", "finished")


def test_waiting_plays_go_by_level_then_start_time(rig: Rig) -> None:
    rig.play("first", level="normal")
    rig.player.tick()
    rig.clock.advance(1)
    rig.play("normal-early", level="normal")
    rig.clock.advance(1)
    rig.play("normal-late", level="normal")
    rig.play("emergency-cut-short", level="emergency")
    rig.player.tick()
    rig.wait_for("first", "interrupted")
    rig.wait_for("emergency-cut-short", "playing")
    rig.play("priority", level="priority")
    rig.player.tick()
    for play_id in ("emergency-cut-short", "priority", "normal-early", "normal-late"):
        rig.wait_for(play_id, "playing")
        rig.output.finish(play_id)
        rig.wait_for(play_id, "finished")
    assert rig.output.started == [
        "first", "emergency-cut-short", "priority", "normal-early", "normal-late",
    ]


def test_a_waiting_play_is_missed_when_its_latest_start_passes(rig: Rig) -> None:
    rig.play("long")
    rig.player.tick()
    rig.play("short-window", window=timedelta(seconds=30))
    rig.clock.advance(30)
    rig.player.tick()
    assert "missed" not in rig.kinds("short-window")  # at latest_start it may still start
    rig.clock.advance(0.01)
    rig.player.tick()
    assert rig.kinds("short-window")[-1] == "missed"
    reason = rig.reports.reason("short-window", "missed")
    assert reason is not None
    assert reason.startswith("output busy with bulletin long (normal)")


def test_audio_that_never_came_is_requested_ahead_of_the_start_then_missed(rig: Rig) -> None:
    rig.play("p1", start_in=30, held=False, window=timedelta(seconds=25))
    ref = rig.bodies["p1"].items[0]
    rig.cache.lacking[ref.sha256] = 3
    rig.player.tick()
    assert rig.requests == []  # its chunks may be on their way
    rig.clock.advance(2)
    assert rig.player.tick() == rig.clock.now() + timedelta(seconds=1)  # wakes for it
    rig.clock.advance(1)
    rig.player.tick()
    # Stalled for 3 s, 27 s before the start: asked for now, not at the start.
    assert rig.requests == [(ref.sha256, [0, 1, 2])]
    rig.clock.advance(5)
    rig.player.tick()
    assert len(rig.requests) == 1  # not again before request_interval
    rig.clock.advance(5)
    rig.player.tick()
    assert len(rig.requests) == 2
    rig.clock.advance(50)
    rig.player.tick()
    assert rig.kinds("p1") == ["received", "missed"]
    expected = f"audio incomplete: 3 of {ref.chunks} chunks missing"
    assert rig.reports.reason("p1", "missed") == expected
    assert rig.output.started == []


def test_audio_completing_in_the_window_still_plays(rig: Rig) -> None:
    rig.play("p1", held=False)
    sha = rig.bodies["p1"].items[0].sha256
    rig.player.tick()
    assert rig.requests == []  # its chunks may be on their way: no request yet
    rig.clock.advance(3)
    rig.player.tick()
    assert rig.requests
    rig.clock.advance(20)
    rig.cache.held.add(sha)
    rig.player.content_ready(sha)
    rig.player.tick()
    assert rig.kinds("p1") == ["received", "delivered", "playing"]


def test_chunks_arriving_but_still_queued_count_as_progress(rig: Rig) -> None:
    # The link is busy delivering (chunks reach the agent's queue) while the cache has not
    # caught up yet: no request, or the controller would send the same bytes twice.
    rig.play("p1", start_in=60, held=False)
    ref = rig.bodies["p1"].items[0]
    rig.cache.lacking[ref.sha256] = ref.chunks
    rig.player.tick()
    for _ in range(5):
        rig.clock.advance(2)
        rig.content_arrived = rig.clock.now()
        rig.player.tick()
    assert rig.requests == []
    rig.clock.advance(3)  # the link went quiet for the stall time
    rig.player.tick()
    assert rig.requests == [(ref.sha256, list(range(ref.chunks)))]


def test_chunks_still_arriving_are_waited_for_not_requested(rig: Rig) -> None:
    rig.play("urgent", held=False, level="emergency")
    ref = rig.bodies["urgent"].items[0]
    rig.cache.lacking[ref.sha256] = ref.chunks
    rig.player.tick()  # the agent ticks after every message, this command's included
    for left in range(ref.chunks - 1, 0, -1):
        rig.clock.advance(2.5)
        rig.cache.lacking[ref.sha256] = left
        assert rig.player.tick() == rig.clock.now() + timedelta(seconds=3)
    assert rig.requests == []
    rig.clock.advance(3)
    rig.player.tick()
    assert rig.requests == [(ref.sha256, [0])]


def test_stop_a_playing_play_and_a_scheduled_one(rig: Rig) -> None:
    rig.play("now")
    rig.play("later", start_in=600)
    rig.player.tick()
    wait_until(lambda: rig.output.started == ["now"], 5, "play to start")
    assert rig.player.stop("now") == 1
    rig.wait_for("now", "interrupted")
    assert rig.reports.reason("now", "interrupted") == "stopped by the controller"
    assert rig.player.stop("later") == 1
    assert rig.reports.reason("later", "interrupted") == "stopped before it started"
    assert rig.player.stop("later") == 0
    assert rig.player.stop("unknown") == 0
    rig.clock.advance(600)
    rig.player.tick()
    assert rig.output.started == ["now"]


def test_stop_everything_spares_plays_not_yet_due(rig: Rig) -> None:
    rig.play("a")
    rig.play("b")
    rig.play("tomorrow", start_in=86400)
    rig.player.tick()
    rig.wait_for("a", "playing")
    wait_until(lambda: rig.output.started == ["a"], 5, "first play to reach the output")
    assert rig.player.stop(None) == 2
    rig.wait_for("a", "interrupted")
    assert rig.reports.reason("b", "interrupted") == "stopped before it started"
    assert rig.player.status().queue[0].play_id == "tomorrow"
    assert rig.output.started == ["a"]


def test_a_play_id_received_again_is_not_scheduled_twice(rig: Rig) -> None:
    cmd = rig.play("p1")
    rig.player.tick()
    rig.output.finish("p1")
    rig.wait_for("p1", "finished")
    again = command(rig.keys.signer, cmd.body, rig.clock.now(), clusters=[ME])
    assert not rig.player.accept(again)
    rig.player.tick()
    assert rig.output.started == ["p1"]
    assert rig.kinds("p1").count("received") == 1


def test_output_error_is_reported_failed(rig: Rig) -> None:
    rig.play("p1")
    rig.player.tick()
    wait_until(lambda: rig.output.started == ["p1"], 5, "play to start")
    rig.output.finish("p1", error="ALSA: device hw:1 not found")
    rig.wait_for("p1", "failed")
    reason = rig.reports.reason("p1", "failed")
    assert reason is not None
    assert "ALSA: device hw:1 not found" in reason


def test_a_command_arriving_after_its_latest_start_is_missed(rig: Rig) -> None:
    c = content()
    rig.cache.held.add(c.ref.sha256)
    body = play_body("late", [c.ref], T0 - timedelta(minutes=10))
    cmd = command(rig.keys.signer, body, T0 - timedelta(minutes=10), clusters=[ME])
    rig.player.accept(cmd)
    assert rig.kinds("late") == ["received", "delivered", "missed"]
    rig.player.tick()
    assert rig.output.started == []


def test_status_shows_the_current_play_and_the_queue(rig: Rig) -> None:
    rig.play("now", level="priority")
    rig.play("later", start_in=60)
    rig.player.tick()
    status = rig.player.status()
    assert status.current is not None
    assert status.current.play_id == "now"
    assert status.current.level == "priority"
    assert [v.play_id for v in status.queue] == ["later"]


def test_a_restart_keeps_the_schedule_and_never_replays(rig: Rig) -> None:
    rig.play("done")
    rig.play("cut-off", start_in=1)
    rig.play("next", start_in=3600)
    rig.player.tick()
    rig.output.finish("done")
    rig.wait_for("done", "finished")
    rig.clock.advance(1)
    rig.player.tick()
    rig.wait_for("cut-off", "playing")
    wait_until(lambda: "cut-off" in rig.output.started, 5, "cut-off to reach the output")
    # The process dies while cut-off plays (no close(): as after kill -9 or power loss).
    restarted = rig.new_player()
    rig.player = restarted
    assert rig.kinds("cut-off")[-1] == "interrupted"
    reason = rig.reports.reason("cut-off", "interrupted")
    assert reason is not None
    assert "during the play" in reason
    rig.player.tick()
    rig.clock.advance(3600)
    rig.player.tick()
    rig.wait_for("next", "playing")
    wait_until(lambda: rig.output.started[-1] == "next", 5, "next to reach the output")
    assert rig.output.started.count("done") == 1
    assert rig.output.started.count("cut-off") == 1


def test_plays_missed_while_the_agent_was_off_say_so(rig: Rig) -> None:
    rig.play("while-off", start_in=60, window=timedelta(minutes=2))
    rig.clock.advance(timedelta(hours=2))
    rig.player = rig.new_player()
    rig.player.tick()
    reason = rig.reports.reason("while-off", "missed")
    assert reason is not None
    assert reason.startswith("agent was not running")


def test_finished_plays_are_forgotten_after_their_retention(rig: Rig) -> None:
    rig.play("old", window=timedelta(minutes=1))
    rig.player.tick()
    rig.output.finish("old")
    rig.wait_for("old", "finished")
    assert rig.player.record("old") is not None
    rig.clock.advance(timedelta(days=2))
    rig.player.tick()
    assert rig.player.record("old") is None


# --- replay after an interruption ---------------------------------------------------------


def interrupt(rig: Rig, play_id: str, by: str, level: Level = "emergency") -> None:
    rig.play(by, level=level)
    rig.player.tick()
    rig.wait_for(play_id, "interrupted")
    rig.wait_for(by, "playing")


def test_an_interrupted_play_that_asks_for_it_plays_again_afterwards(rig: Rig) -> None:
    rig.play("news", replay=True)
    rig.player.tick()
    wait_until(lambda: rig.output.started == ["news"], 5, "news to start")
    interrupt(rig, "news", "storm")
    reason = rig.reports.reason("news", "interrupted")
    assert reason is not None
    assert reason.startswith("preempted by bulletin storm (emergency); it plays again")
    assert [v.play_id for v in rig.player.status().queue] == ["news"]
    rig.output.finish("storm")
    rig.wait_for("storm", "finished")
    wait_until(lambda: rig.output.started == ["news", "storm", "news"], 5, "the replay")
    rig.output.finish("news")
    rig.wait_for("news", "finished")
    assert rig.kinds("news") == [
        "received", "delivered", "playing", "interrupted", "playing", "finished",
    ]


def test_a_play_that_does_not_ask_is_not_replayed(rig: Rig) -> None:
    rig.play("news")
    rig.player.tick()
    wait_until(lambda: rig.output.started == ["news"], 5, "news to start")
    interrupt(rig, "news", "storm", level="priority")
    rig.output.finish("storm")
    rig.wait_for("storm", "finished")
    rig.player.tick()
    assert rig.output.started == ["news", "storm"]
    assert rig.kinds("news")[-1] == "interrupted"


def test_a_stopped_play_is_never_replayed(rig: Rig) -> None:
    rig.play("news", replay=True)
    rig.player.tick()
    wait_until(lambda: rig.output.started == ["news"], 5, "news to start")
    rig.player.stop("news")
    rig.wait_for("news", "interrupted")
    rig.player.tick()
    assert rig.player.status().queue == []
    assert rig.output.started == ["news"]


def test_a_replay_still_owed_survives_a_restart(rig: Rig) -> None:
    rig.play("news", replay=True)
    rig.player.tick()
    wait_until(lambda: rig.output.started == ["news"], 5, "news to start")
    interrupt(rig, "news", "storm")
    # The agent restarts while the emergency plays: the replay is still owed.
    restarted = rig.new_player()
    rig.player = restarted
    rig.player.tick()
    rig.wait_for("news", "playing")
    assert rig.kinds("storm")[-1] == "interrupted"  # cut off by the restart, not replayed
    rig.output.finish("news")
    rig.wait_for("news", "finished")
    assert rig.output.started == ["news", "storm", "news"]


def test_a_replay_is_missed_when_the_output_stays_busy_too_long(rig: Rig) -> None:
    rig.play("news", replay=True, window=timedelta(minutes=1))
    rig.player.tick()
    wait_until(lambda: rig.output.started == ["news"], 5, "news to start")
    interrupt(rig, "news", "long-alert")
    rig.clock.advance(REPLAY_WITHIN + timedelta(seconds=1))
    rig.player.tick()
    reason = rig.reports.reason("news", "missed")
    assert reason is not None
    assert reason.startswith("not played again after its interruption")
    assert "long-alert" in reason


def test_replays_stop_after_the_limit(rig: Rig) -> None:
    rig.play("news", replay=True)
    rig.player.tick()
    wait_until(lambda: rig.output.started == ["news"], 5, "news to start")
    for n in range(MAX_REPLAYS + 1):
        interrupt(rig, "news", f"alert-{n}")
        rig.output.finish(f"alert-{n}")
        rig.wait_for(f"alert-{n}", "finished")
        rig.player.tick()
    assert rig.kinds("news").count("interrupted") == MAX_REPLAYS + 1
    assert rig.output.started.count("news") == MAX_REPLAYS + 1
    assert rig.player.status().current is None


# --- volume ------------------------------------------------------------------------------


def test_the_command_volume_or_else_the_default_goes_to_the_output(rig: Rig) -> None:
    rig.play("quiet", volume=40)
    rig.player.tick()
    wait_until(lambda: rig.output.started == ["quiet"], 5, "quiet to start")
    status = rig.player.status()
    assert status.current is not None
    assert status.current.volume == 40
    rig.output.finish("quiet")
    rig.wait_for("quiet", "finished")
    rig.play("default")
    rig.player.tick()
    wait_until(lambda: rig.output.started == ["quiet", "default"], 5, "default to start")
    assert rig.output.volumes == [40, 80]
    rig.output.finish("default")


# --- the amplifier -----------------------------------------------------------------------


class FakeAmplifier:
    """Records when the player switches it on and lets go of it (by the rig's clock)."""

    def __init__(self, clock: ManualClock, warm_up_s: float, powered: bool = True) -> None:
        self._clock = clock
        self.warm_up_s = warm_up_s
        self.fault: str | None = None if powered else "no reply from /dev/ttyUSB0"
        self._powered = powered
        self.lock = threading.Lock()
        self.calls: list[tuple[str, datetime]] = []

    def power_on_for_play(self, stop: threading.Event | None = None) -> bool:
        with self.lock:
            self.calls.append(("on", self._clock.now()))
        return self._powered

    def play_finished(self) -> None:
        with self.lock:
            self.calls.append(("finished", self._clock.now()))

    def ons(self) -> list[datetime]:
        with self.lock:
            return [at for what, at in self.calls if what == "on"]

    def balanced(self) -> bool:
        with self.lock:
            kinds = [what for what, _ in self.calls]
        return kinds.count("on") == kinds.count("finished")


def with_amplifier(rig: Rig, amplifier: FakeAmplifier) -> None:
    rig.player.close(1)
    rig.amplifier = amplifier
    rig.player = rig.new_player()


def test_the_amplifier_goes_on_its_warm_up_before_a_scheduled_play(rig: Rig) -> None:
    amplifier = FakeAmplifier(rig.clock, warm_up_s=3)
    with_amplifier(rig, amplifier)
    rig.play("p1", start_in=10)
    assert rig.player.tick() == T0 + timedelta(seconds=7)  # the warm-up, not the start
    rig.clock.advance(6.9)
    rig.player.tick()
    assert amplifier.ons() == []
    rig.clock.advance(0.1)
    assert rig.player.tick() == T0 + timedelta(seconds=10)
    wait_until(lambda: amplifier.ons() == [T0 + timedelta(seconds=7)], 5, "the warm-up")
    rig.clock.advance(3)
    rig.player.tick()
    wait_until(lambda: rig.output.started == ["p1"], 5, "p1 to start")
    assert amplifier.ons()[-1] == T0 + timedelta(seconds=10)  # on (again) for the play
    rig.output.finish("p1")
    rig.wait_for("p1", "finished")
    wait_until(amplifier.balanced, 5, "every power_on_for_play matched by play_finished")


def test_a_failed_relay_fails_the_play_when_the_config_says_so(rig: Rig) -> None:
    amplifier = FakeAmplifier(rig.clock, warm_up_s=0, powered=False)
    with_amplifier(rig, amplifier)
    rig.play("p1")
    rig.player.tick()
    rig.wait_for("p1", "failed")
    reason = rig.reports.reason("p1", "failed")
    assert reason is not None
    assert "no reply from /dev/ttyUSB0" in reason
    assert "play_without_relay: false" in reason
    assert rig.output.started == []
    assert amplifier.balanced()


def test_playing_without_a_failed_relay_says_so_in_the_result(rig: Rig) -> None:
    amplifier = FakeAmplifier(rig.clock, warm_up_s=0)
    amplifier.fault = "no reply from /dev/ttyUSB0"  # failing, but allowed to play
    with_amplifier(rig, amplifier)
    rig.play("p1")
    rig.player.tick()
    wait_until(lambda: rig.output.started == ["p1"], 5, "p1 to start")
    rig.output.finish("p1")
    rig.wait_for("p1", "finished")
    reason = rig.reports.reason("p1", "finished")
    assert reason is not None
    assert reason.startswith("played without the amplifier relay")


def test_the_schedule_is_saved_a_play_a_row(tmp_path: Path) -> None:
    db = LocalDatabase(tmp_path / "agent.sqlite")
    rig = Rig(db.table("plays"))
    rig.play("a", start_in=3600)
    rig.play("b", start_in=7200)
    saved = dict(db.table("plays").load())
    assert sorted(saved) == ["a", "b"]
    rows_written = db._db.total_changes  # SQLite's count of rows written
    assert rig.player.stop("a") == 1
    assert db._db.total_changes - rows_written == 1  # a's row, not b's
    after = dict(db.table("plays").load())
    assert '"interrupted"' in after["a"]
    assert after["b"] == saved["b"]
    # A play forgotten after its keep time leaves the table.
    rig.clock.advance(3 * 86400)
    rig.player.tick()
    assert "a" not in dict(db.table("plays").load())
    rig.player.close(1)


def test_a_schedule_saved_as_one_document_is_moved_to_rows(tmp_path: Path) -> None:
    db = LocalDatabase(tmp_path / "agent.sqlite")
    rig = Rig(db.table("plays"))
    rig.play("later", start_in=3600)
    text = dict(db.table("plays").load())["later"]
    rig.player.close(1)
    # As an earlier version saved it: one document, no rows.
    db.document("plays").save_text(f'{{"plays":[{text}]}}')
    db.write("DELETE FROM records")
    moved = Rig(db.table("plays"))
    assert [v.play_id for v in moved.player.status().queue] == ["later"]
    assert list(dict(db.table("plays").load())) == ["later"]
    assert db.document("plays").load() is None
    moved.player.close(1)


def test_a_damaged_row_is_skipped_and_dropped(tmp_path: Path) -> None:
    db = LocalDatabase(tmp_path / "agent.sqlite")
    rig = Rig(db.table("plays"))
    rig.play("good", start_in=3600)
    rig.player.close(1)
    db.table("plays").save({"broken": '{"not": "a play"}'})
    again = Rig(db.table("plays"))
    assert [v.play_id for v in again.player.status().queue] == ["good"]
    again.play("next", start_in=7200)
    assert sorted(dict(db.table("plays").load())) == ["good", "next"]
    again.player.close(1)
