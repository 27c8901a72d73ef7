"""The amplifier on a simulated relay board behind a real pty: warm-up before the first
sample, idle-off, no off while playing, faults reported and retried with backoff, and
whether a play goes ahead without the relay."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from relay_sim import BoardProtocol, SerialServerBoard, SimulatedBoard

from device_agent.amplifier import Amplifier, amplifier_from_config
from device_agent.relays import Relay, RelayConfig, open_relay
from device_agent.relays.lcus import frame
from device_agent.relays.modbus import write_coil_request
from protocol.clock import ManualClock, SystemClock

START = datetime(2026, 5, 1, 5, 0, tzinfo=UTC)
IDLE_OFF_S = 60.0
REPLY_TIMEOUT_S = 0.3
COIL_ON = write_coil_request(1, 0, True)
COIL_OFF = write_coil_request(1, 0, False)
# Warm-up measured in real time: at least the warm-up, at most this much more (a loaded
# test machine schedules threads late; a wrong implementation is off by the whole warm-up).
WARM_UP_S = 0.4
LATE_TOLERANCE_S = 0.35


class Reports:
    """What the amplifier told the agent."""

    def __init__(self) -> None:
        self.faults: list[str] = []
        self.recovered = 0
        self.wakes = 0

    def fault(self, message: str) -> None:
        self.faults.append(message)

    def recover(self) -> None:
        self.recovered += 1

    def wake(self) -> None:
        self.wakes += 1


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def make_board(tmp_path: Path) -> Iterator[Callable[..., SimulatedBoard]]:
    boards: list[SimulatedBoard] = []

    def make(protocol: BoardProtocol = "modbus", **options: Any) -> SimulatedBoard:
        board = SimulatedBoard(protocol, tmp_path / f"ttyRELAY{len(boards)}", **options)
        boards.append(board)
        return board.start()

    yield make
    for board in boards:
        board.close()


def factory(board: SimulatedBoard, **options: Any) -> Callable[[], Relay]:
    config = RelayConfig.model_validate(
        {"driver": board.protocol, "url": board.url, "reply_timeout_s": REPLY_TIMEOUT_S, **options}
    )
    return lambda: open_relay(config)


def amplifier(
    board: SimulatedBoard,
    clock: ManualClock | SystemClock,
    reports: Reports,
    *,
    warm_up_s: float = 0.0,
    play_without_relay: bool = True,
    retry_max_s: float = 60.0,
    **options: Any,
) -> Amplifier:
    return Amplifier(
        factory(board, **options),
        clock,
        warm_up_s,
        IDLE_OFF_S,
        play_without_relay,
        on_fault=reports.fault,
        on_recovered=reports.recover,
        wake=reports.wake,
        retry_max_s=retry_max_s,
    )


def in_thread(call: Callable[[], bool]) -> tuple[threading.Thread, list[bool]]:
    """Run a power_on_for_play on a play's thread; its answer lands in the list."""
    answer: list[bool] = []
    thread = threading.Thread(target=lambda: answer.append(call()), daemon=True)
    thread.start()
    return thread, answer


# --- on, idle, off ---------------------------------------------------------------------------


def test_switches_on_for_a_play_and_off_after_the_idle_time(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports
) -> None:
    board = make_board()
    amp = amplifier(board, clock, reports)
    assert amp.state() == "unknown"
    assert amp.power_on_for_play() is True
    assert board.relay(0)
    assert amp.state() == "on"
    assert amp.tick() is None  # playing: nothing planned

    clock.advance(10)
    amp.play_finished()
    assert reports.wakes == 1  # the worker must look again: the idle time started
    assert amp.tick() == START + timedelta(seconds=10 + IDLE_OFF_S)
    clock.advance(IDLE_OFF_S - 1)
    amp.tick()
    assert board.relay(0)
    clock.advance(1)
    assert amp.tick() is None
    assert not board.relay(0)
    assert amp.state() == "off"
    assert board.requests() == [COIL_ON, COIL_OFF]
    assert reports.faults == []


def test_never_off_while_a_play_is_on(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports
) -> None:
    board = make_board()
    amp = amplifier(board, clock, reports)
    amp.power_on_for_play()
    amp.power_on_for_play()  # a second play overlapping the first (a preemption)
    clock.advance(timedelta(hours=2))
    assert amp.tick() is None
    amp.play_finished()
    clock.advance(timedelta(hours=2))
    assert amp.tick() is None
    assert board.relay(0)
    amp.play_finished()
    clock.advance(IDLE_OFF_S)
    amp.tick()
    assert not board.relay(0)


def test_a_play_within_the_idle_time_keeps_the_amplifier_on(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports
) -> None:
    board = make_board()
    amp = amplifier(board, clock, reports)
    amp.power_on_for_play()
    amp.play_finished()
    clock.advance(IDLE_OFF_S - 5)
    amp.power_on_for_play()
    amp.play_finished()
    clock.advance(IDLE_OFF_S - 5)  # idle since the second play only
    amp.tick()
    assert board.relay(0)
    assert COIL_OFF not in board.requests()
    clock.advance(5)
    amp.tick()
    assert not board.relay(0)


def test_an_amplifier_left_on_is_switched_off_once_idle_after_start(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports
) -> None:
    """The agent restarted while the relay was on (a crash mid-play)."""
    board = make_board()
    board.set_relay(0, True)
    amp = amplifier(board, clock, reports)
    assert amp.tick() == START + timedelta(seconds=IDLE_OFF_S)
    assert board.requests() == []
    clock.advance(IDLE_OFF_S)
    amp.tick()
    assert not board.relay(0)
    assert amp.state() == "off"


def test_a_wall_clock_going_back_restarts_the_idle_time(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports
) -> None:
    board = make_board()
    amp = amplifier(board, clock, reports)
    amp.power_on_for_play()
    amp.play_finished()
    clock.set(START - timedelta(hours=1))
    assert amp.tick() == START - timedelta(hours=1) + timedelta(seconds=IDLE_OFF_S)


def test_every_play_commands_the_relay_on_again(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports
) -> None:
    """A board that lost power between plays (its relay fell off) is switched on again."""
    board = make_board("lcus")
    amp = amplifier(board, clock, reports)
    amp.power_on_for_play()
    # The board takes the frame on its own thread: the brown-out must come after it.
    wait_until(lambda: board.relay(1), 5, "the relay switched on")
    amp.play_finished()
    board.set_relay(1, False)  # a brown-out
    amp.power_on_for_play()
    wait_until(lambda: board.relay(1), 5, "the relay switched on again")
    assert board.requests() == [frame(1, True), frame(1, True)]


# --- warm-up -------------------------------------------------------------------------------


def test_the_first_sample_waits_for_the_warm_up(
    make_board: Callable[..., SimulatedBoard], reports: Reports
) -> None:
    board = make_board("lcus")
    amp = amplifier(board, SystemClock(), reports, warm_up_s=WARM_UP_S)
    called = time.monotonic()
    assert amp.power_on_for_play() is True
    returned = time.monotonic()
    wait_until(board.received, 5, "the on frame at the board")
    switched = board.received()[0].at
    # The warm-up counts from the switch: the board heard it just before it started.
    assert WARM_UP_S - 0.05 <= returned - switched <= WARM_UP_S + LATE_TOLERANCE_S
    assert WARM_UP_S <= returned - called <= WARM_UP_S + LATE_TOLERANCE_S

    # Already on and warm: the next play starts at once.
    again = time.monotonic()
    amp.power_on_for_play()
    assert time.monotonic() - again < LATE_TOLERANCE_S


def test_the_warm_up_follows_the_injected_clock(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports
) -> None:
    board = make_board()
    amp = amplifier(board, clock, reports, warm_up_s=30.0)
    thread, answer = in_thread(amp.power_on_for_play)
    wait_until(lambda: board.relay(0), 5, "the relay on")
    thread.join(0.2)
    assert thread.is_alive(), "the play must not start before the warm-up"
    clock.advance(20)
    thread.join(0.2)
    assert thread.is_alive(), "10 s of warm-up are left"
    clock.advance(10)
    wait_until(lambda: not thread.is_alive(), 5, "the warm-up to end with the clock")
    assert answer == [True]

    # A play within the idle time finds the amplifier warm.
    amp.play_finished()
    clock.advance(IDLE_OFF_S / 2)
    started = time.monotonic()
    assert amp.power_on_for_play() is True
    assert time.monotonic() - started < LATE_TOLERANCE_S


def test_powered_on_ahead_a_play_starts_on_time(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports
) -> None:
    """The worker switches on warm_up before the start time; the play does not wait."""
    board = make_board()
    amp = amplifier(board, clock, reports, warm_up_s=30.0)
    amp.power_on_ahead()
    assert board.relay(0)
    assert amp.tick() == START + timedelta(seconds=IDLE_OFF_S)  # off if no play comes
    clock.advance(30)
    started = time.monotonic()
    assert amp.power_on_for_play() is True
    assert time.monotonic() - started < LATE_TOLERANCE_S
    assert amp.tick() is None  # playing

    # Ahead of a play that never comes: off after the idle time.
    amp.play_finished()
    clock.advance(IDLE_OFF_S)
    amp.tick()
    amp.power_on_ahead()
    clock.advance(IDLE_OFF_S - 1)
    amp.tick()
    assert board.relay(0)
    clock.advance(1)
    amp.tick()
    assert not board.relay(0)


def test_a_stop_during_the_warm_up_ends_it(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports
) -> None:
    board = make_board()
    amp = amplifier(board, clock, reports, warm_up_s=30.0)
    stop = threading.Event()
    thread, answer = in_thread(lambda: amp.power_on_for_play(stop))
    wait_until(lambda: board.relay(0), 5, "the relay on")
    stop.set()
    wait_until(lambda: not thread.is_alive(), 5, "the warm-up to end on stop")
    assert answer == [True]


def test_the_warm_up_never_lasts_longer_than_configured(
    make_board: Callable[..., SimulatedBoard], reports: Reports
) -> None:
    """Whatever the wall clock does (here: it stands still)."""
    board = make_board()
    amp = amplifier(board, ManualClock(START), reports, warm_up_s=WARM_UP_S)
    called = time.monotonic()
    amp.power_on_for_play()
    assert WARM_UP_S <= time.monotonic() - called <= WARM_UP_S + LATE_TOLERANCE_S


# --- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize("play_without_relay", [True, False])
def test_a_missing_board_is_reported_and_the_config_decides_the_play(
    make_board: Callable[..., SimulatedBoard],
    clock: ManualClock,
    reports: Reports,
    play_without_relay: bool,
) -> None:
    board = make_board()
    board.disappear()
    amp = amplifier(board, clock, reports, warm_up_s=30.0, play_without_relay=play_without_relay)
    started = time.monotonic()
    assert amp.power_on_for_play() is play_without_relay
    assert time.monotonic() - started < LATE_TOLERANCE_S  # no warm-up for a dead relay
    assert len(reports.faults) == 1
    assert f"cannot open the relay port {board.url}" in reports.faults[0]
    assert amp.fault == reports.faults[0]
    assert amp.state() == f"fault: {reports.faults[0]}"
    assert reports.wakes == 1  # the retry is due on the worker


@pytest.mark.parametrize("fault", ["silent", "garbage", "bad_crc", "exception"])
def test_every_board_fault_is_reported_never_raised_then_recovers(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports, fault: Any
) -> None:
    board = make_board()
    board.fault = fault
    amp = amplifier(board, clock, reports)
    assert amp.power_on_for_play() is True
    assert amp.state().startswith("fault: Modbus relay board (slave 1, coil 0)")
    assert reports.faults == [amp.fault]
    assert amp.tick() == START + timedelta(seconds=1)

    board.fault = "none"
    clock.advance(1)
    assert amp.tick() is None  # playing, and the relay works again
    assert board.relay(0)
    assert amp.state() == "on"
    assert reports.recovered == 1


def test_retries_back_off_and_reopen_the_port_when_the_board_is_back(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports
) -> None:
    board = make_board("lcus")
    amp = amplifier(board, clock, reports, retry_max_s=4.0)
    amp.power_on_for_play()
    wait_until(lambda: board.relay(1), 5, "the relay on")
    board.disappear()  # the USB plug pulled while playing

    amp.play_finished()
    clock.advance(IDLE_OFF_S)
    retry_at = amp.tick()  # switching off fails: the port is gone
    assert amp.fault is not None
    assert "the port failed while sending" in amp.fault
    waits = []
    for _ in range(4):
        assert retry_at is not None
        waits.append((retry_at - clock.now()).total_seconds())
        clock.set(retry_at)
        retry_at = amp.tick()  # the port cannot be opened either
    assert waits == [1.0, 2.0, 4.0, 4.0]
    assert reports.faults[0].startswith("LCUS relay board (channel 1)")
    assert f"cannot open the relay port {board.url}" in reports.faults[1]
    assert len(reports.faults) == 2  # reported when it changes, not on every retry

    board.reappear()
    assert retry_at is not None
    clock.set(retry_at)
    assert amp.tick() is None  # off, nothing more to do
    wait_until(lambda: board.requests()[-1:] == [frame(1, False)], 5, "off on the new port")
    assert amp.state() == "off"
    assert reports.recovered == 1


def test_a_serial_server_that_restarts_is_reconnected(clock: ManualClock, reports: Reports) -> None:
    board = SerialServerBoard("modbus").start()
    try:
        amp = amplifier(board, clock, reports)
        amp.power_on_for_play()
        board.disappear()
        amp.play_finished()
        clock.advance(IDLE_OFF_S)
        retry_at = amp.tick()
        assert amp.fault is not None
        assert board.url in amp.fault
        board.reappear()
        assert retry_at is not None
        clock.set(retry_at)
        assert amp.tick() is None
        assert amp.state() == "off"
        assert board.requests()[-1] == COIL_OFF
        assert reports.recovered == 1
    finally:
        board.close()


def test_a_fault_while_playing_is_retried_until_the_amplifier_is_on(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports
) -> None:
    board = make_board()
    board.disappear()
    amp = amplifier(board, clock, reports, warm_up_s=30.0)
    assert amp.power_on_for_play() is True  # plays without the relay
    board.reappear()
    clock.advance(1)
    assert amp.tick() is None
    assert board.relay(0)  # on mid-play, without a warm-up wait
    assert amp.state() == "on"


def test_after_a_fault_the_next_play_tries_at_once(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports
) -> None:
    """An urgent announcement does not wait for the retry backoff."""
    board = make_board()
    board.fault = "silent"
    amp = amplifier(board, clock, reports, play_without_relay=False)
    assert amp.power_on_for_play() is False
    amp.play_finished()
    board.fault = "none"
    assert amp.power_on_for_play() is True
    assert board.relay(0)


def test_a_driver_bug_is_a_fault_not_a_crash(clock: ManualClock, reports: Reports) -> None:
    class Broken:
        def switch(self, on: bool) -> None:
            raise ZeroDivisionError("oops")

        def state(self) -> bool | None:
            return None

        def close(self) -> None:
            raise OSError("gone")

    amp = Amplifier(
        Broken, clock, 0.0, IDLE_OFF_S, play_without_relay=False, on_fault=reports.fault
    )
    assert amp.power_on_for_play() is False
    assert reports.faults == ["unexpected error in the relay driver: ZeroDivisionError('oops')"]


def test_a_failing_callback_does_not_stop_the_amplifier(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock
) -> None:
    board = make_board()
    board.disappear()

    def broken(message: str) -> None:
        raise RuntimeError("outbox full")

    amp = Amplifier(factory(board), clock, 0.0, IDLE_OFF_S, True, on_fault=broken)
    assert amp.power_on_for_play() is True


# --- lifecycle and config ------------------------------------------------------------------


def test_close_switches_off_and_ends_everything(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports
) -> None:
    board = make_board()
    amp = amplifier(board, clock, reports)
    amp.power_on_for_play()
    amp.close()
    assert not board.relay(0)
    assert amp.tick() is None
    assert amp.power_on_for_play() is True  # shutting down: nothing switched
    assert board.requests() == [COIL_ON, COIL_OFF]


def test_importing_the_amplifier_does_not_load_pyserial() -> None:
    """Domain modules never import serial; the driver loads it when a port is opened."""
    code = (
        "import sys, device_agent.amplifier, device_agent.relays; sys.exit('serial' in sys.modules)"
    )
    root = Path(__file__).resolve().parent.parent
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


def test_no_relay_configured(clock: ManualClock) -> None:
    amp = amplifier_from_config(RelayConfig(), clock)
    assert amp.state() == "none"
    assert amp.power_on_for_play() is True
    amp.play_finished()
    assert amp.tick() is None
    amp.close()


def test_built_from_the_config(
    make_board: Callable[..., SimulatedBoard], clock: ManualClock, reports: Reports
) -> None:
    board = make_board("ascii")
    config = RelayConfig.model_validate(
        {"driver": "ascii", "url": board.url, "warm_up": "0s", "idle_off": "5m"}
    )
    amp = amplifier_from_config(config, clock, on_fault=reports.fault, wake=reports.wake)
    assert amp.power_on_for_play() is True
    assert board.relay(0)
    amp.play_finished()
    assert amp.tick() == START + timedelta(minutes=5)


def test_loop_url_smoke(clock: ManualClock) -> None:
    """loop:// answers a Modbus write with its echo: the whole path without a board."""
    config = RelayConfig(driver="modbus", url="loop://", warm_up=timedelta(0))
    amp = amplifier_from_config(config, clock)
    assert amp.power_on_for_play() is True
    assert amp.state() == "on"
    amp.play_finished()
    clock.advance(config.idle_off)
    amp.tick()
    assert amp.state() == "off"
    amp.close()
