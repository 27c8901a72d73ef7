"""Relay drivers against a simulated board on a real pty: one contract for lcus, ascii and
modbus, then each fault, then what is particular to each protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from relay_sim import BoardProtocol, SerialServerBoard, SimulatedBoard

from device_agent.relays import Relay, RelayConfig, RelayError, open_relay
from device_agent.relays.ascii import AsciiRelay
from device_agent.relays.lcus import LcusRelay, frame
from device_agent.relays.modbus import (
    ModbusRelay,
    crc16,
    exception_meaning,
    read_coil_request,
    write_coil_request,
)

REPLY_TIMEOUT_S = 0.3

BoardFactory = Callable[..., SimulatedBoard]


@pytest.fixture
def make_board(tmp_path: Path) -> Iterator[BoardFactory]:
    """Boards plugged in behind tmp_path/ttyRELAY<n>; all closed after the test."""
    boards: list[SimulatedBoard] = []

    def make(protocol: BoardProtocol, **options: Any) -> SimulatedBoard:
        board = SimulatedBoard(protocol, tmp_path / f"ttyRELAY{len(boards)}", **options)
        boards.append(board)
        return board.start()

    yield make
    for board in boards:
        board.close()


def open_on(board: SimulatedBoard, **options: Any) -> Relay:
    config = RelayConfig.model_validate(
        {
            "driver": board.protocol,
            "url": board.url,
            "reply_timeout_s": REPLY_TIMEOUT_S,
            **options,
        }
    )
    return open_relay(config)


def act(relay: Relay, action: str) -> None:
    """Switch on, or ask the state."""
    if action == "switch":
        relay.switch(True)
    else:
        relay.state()


# Per case: the protocol, board options, relay options, the relay number on the board,
# the exact bytes of "on" and "off".
Case = tuple[BoardProtocol, dict[str, Any], dict[str, Any], int, bytes, bytes]
CASES: dict[str, Case] = {
    "lcus": (
        "lcus",
        {},
        {"channel": 2},
        2,
        bytes.fromhex("A0 02 01 A3"),
        bytes.fromhex("A0 02 00 A2"),
    ),
    "lcus-status": (
        "lcus",
        {"lcus_status": True},
        {"channel": 3, "status_query": True},
        3,
        bytes.fromhex("A0 03 01 A4"),
        bytes.fromhex("A0 03 00 A3"),
    ),
    "ascii": ("ascii", {}, {}, 0, b"RELAY ON\r\n", b"RELAY OFF\r\n"),
    "modbus": (
        "modbus",
        {"slave": 7},
        {"slave": 7, "coil": 3},
        3,
        write_coil_request(7, 3, True),
        write_coil_request(7, 3, False),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_switches_on_and_off_and_reports_state(make_board: BoardFactory, case: str) -> None:
    protocol, board_options, relay_options, number, on_frame, off_frame = CASES[case]
    board = make_board(protocol, **board_options)
    relay = open_on(board, **relay_options)
    try:
        relay.switch(True)
        wait_until(lambda: board.relay(number), 5, "the board's relay on")
        assert relay.state() is True
        relay.switch(False)
        wait_until(lambda: not board.relay(number), 5, "the board's relay off")
        assert relay.state() is False
        switches = [r for r in board.requests() if r in (on_frame, off_frame)]
        assert switches == [on_frame, off_frame]
    finally:
        relay.close()


@pytest.mark.parametrize("case", CASES)
def test_a_board_unplugged_after_opening_is_a_relay_error(
    make_board: BoardFactory, case: str
) -> None:
    protocol, board_options, relay_options, _, _, _ = CASES[case]
    board = make_board(protocol, **board_options)
    relay = open_on(board, **relay_options)
    board.disappear()
    with pytest.raises(RelayError) as raised:
        relay.switch(True)
    message = str(raised.value)
    assert board.url in message
    assert "unplugged or lost power" in message
    assert "sent" in message
    relay.close()
    relay.close()  # closing twice, or a port that is gone, is harmless


@pytest.mark.parametrize("driver", ["lcus", "ascii", "modbus"])
def test_a_missing_port_says_how_to_find_it(tmp_path: Path, driver: str) -> None:
    config = RelayConfig.model_validate({"driver": driver, "url": str(tmp_path / "ttyUSB9")})
    with pytest.raises(RelayError) as raised:
        open_relay(config)
    message = str(raised.value)
    assert f"cannot open the relay port {tmp_path / 'ttyUSB9'}" in message
    assert "/dev/serial/by-id/" in message
    assert "relay.url" in message


def test_an_unknown_url_scheme_is_a_relay_error() -> None:
    with pytest.raises(RelayError, match=r"relay\.url is not understood"):
        LcusRelay("nosuch://port")


def test_a_refused_serial_server_says_so() -> None:
    with pytest.raises(RelayError, match="serial server refused the connection"):
        ModbusRelay("socket://127.0.0.1:1")


# --- silent, garbage, bad CRC, exception ---------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "relay_options", "action"),
    [
        ("ascii", {}, "switch"),
        ("ascii", {}, "state"),
        ("modbus", {}, "switch"),
        ("modbus", {}, "state"),
        ("lcus", {"status_query": True}, "state"),
    ],
)
def test_a_silent_board_is_a_relay_error_naming_what_was_sent(
    make_board: BoardFactory, protocol: BoardProtocol, relay_options: dict[str, Any], action: str
) -> None:
    board = make_board(protocol)
    board.fault = "silent"
    relay = open_on(board, **relay_options)
    try:
        with pytest.raises(RelayError) as raised:
            act(relay, action)
        message = str(raised.value)
        assert "did not answer" in message
        assert f"within {REPLY_TIMEOUT_S:g} s" in message
        assert board.url in message
        assert "sent" in message
        wait_until(lambda: len(board.requests()) == 1, 5, "the request at the board")
    finally:
        relay.close()


def test_a_silent_lcus_board_cannot_be_noticed(make_board: BoardFactory) -> None:
    """LCUS boards never answer commands: only a vanished port is a fault (documented)."""
    board = make_board("lcus")
    board.fault = "silent"
    relay = open_on(board)
    try:
        relay.switch(True)
        assert relay.state() is True  # the last state commanded
    finally:
        relay.close()


def test_an_lcus_board_without_status_query_says_to_turn_it_off(make_board: BoardFactory) -> None:
    board = make_board("lcus", lcus_status=False)
    relay = open_on(board, status_query=True)
    try:
        with pytest.raises(RelayError, match=r"relay\.status_query: false"):
            relay.state()
    finally:
        relay.close()


@pytest.mark.parametrize(
    ("protocol", "relay_options", "action", "why"),
    [
        ("ascii", {}, "switch", "expected 'OK'"),
        ("ascii", {}, "state", "expected 'ON' or 'OFF'"),
        ("modbus", {}, "switch", "slave id 222, not 1"),
        ("modbus", {}, "state", "slave id 222, not 1"),
        ("lcus", {"status_query": True}, "state", 'lines like "CH1: ON"'),
    ],
)
def test_a_garbage_answer_is_a_relay_error_showing_it(
    make_board: BoardFactory,
    protocol: BoardProtocol,
    relay_options: dict[str, Any],
    action: str,
    why: str,
) -> None:
    board = make_board(protocol)
    board.fault = "garbage"
    relay = open_on(board, **relay_options)
    try:
        with pytest.raises(RelayError) as raised:
            act(relay, action)
        message = str(raised.value)
        assert "makes no sense" in message
        assert "DE AD BE EF" in message
        assert why in message
        assert "relay.baudrate" in message
    finally:
        relay.close()


@pytest.mark.parametrize("action", ["switch", "state"])
def test_a_modbus_answer_with_a_bad_crc_is_a_relay_error(
    make_board: BoardFactory, action: str
) -> None:
    board = make_board("modbus")
    board.fault = "bad_crc"
    relay = open_on(board)
    try:
        with pytest.raises(RelayError, match="its CRC is wrong"):
            act(relay, action)
    finally:
        relay.close()


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        (0x01, "illegal function"),
        (0x02, "the board has no coil 0; check relay.coil"),
        (0x04, "slave device failure"),
        (0x06, "slave device busy"),
        (0x0B, "nothing answers as slave 1"),
        (0x42, "a code this driver does not know"),
    ],
)
def test_a_modbus_exception_answer_is_explained(
    make_board: BoardFactory, code: int, meaning: str
) -> None:
    board = make_board("modbus", exception_code=code)
    board.fault = "exception"
    relay = open_on(board)
    try:
        with pytest.raises(RelayError) as raised:
            relay.switch(True)
        message = str(raised.value)
        assert f"exception {code:02X}" in message
        assert meaning in message
        assert board.url in message
    finally:
        relay.close()


def test_a_coil_the_board_lacks_is_refused_by_the_board(make_board: BoardFactory) -> None:
    board = make_board("modbus", coils=4)
    relay = open_on(board, coil=9)
    try:
        with pytest.raises(RelayError, match="illegal data address: the board has no coil 9"):
            relay.state()
    finally:
        relay.close()


def test_another_slave_id_gets_no_answer(make_board: BoardFactory) -> None:
    board = make_board("modbus", slave=1)
    relay = open_on(board, slave=2)
    try:
        with pytest.raises(RelayError, match="did not answer"):
            relay.switch(True)
    finally:
        relay.close()


def test_a_board_that_recovers_answers_again_on_the_same_port(make_board: BoardFactory) -> None:
    board = make_board("modbus")
    board.fault = "garbage"
    relay = open_on(board)
    try:
        with pytest.raises(RelayError):
            relay.switch(True)
        board.fault = "none"
        relay.switch(True)  # the noise left in the input is dropped before asking again
        assert relay.state() is True
    finally:
        relay.close()


# --- particular to each protocol -----------------------------------------------------------


def test_lcus_frames_carry_their_checksum() -> None:
    assert frame(1, True) == bytes.fromhex("A0 01 01 A2")
    assert frame(1, False) == bytes.fromhex("A0 01 00 A1")
    assert frame(8, True) == bytes.fromhex("A0 08 01 A9")


def test_lcus_state_before_any_command_is_unknown(make_board: BoardFactory) -> None:
    board = make_board("lcus")
    relay = open_on(board)
    try:
        assert relay.state() is None
    finally:
        relay.close()


def test_lcus_status_query_reads_the_board(make_board: BoardFactory) -> None:
    """The board's word, not the last command: a relay switched by hand shows."""
    board = make_board("lcus", lcus_status=True, channels=4)
    relay = open_on(board, channel=4, status_query=True)
    try:
        board.set_relay(4, True)
        assert relay.state() is True
        assert board.requests() == [b"\xff"]
    finally:
        relay.close()


def test_modbus_frames_and_crc() -> None:
    # The frames in every Modbus relay board's manual.
    assert write_coil_request(1, 0, True) == bytes.fromhex("01 05 00 00 FF 00 8C 3A")
    assert write_coil_request(1, 0, False) == bytes.fromhex("01 05 00 00 00 00 CD CA")
    assert read_coil_request(1, 0) == bytes.fromhex("01 01 00 00 00 01 FD CA")
    assert crc16(b"123456789") == 0x4B37  # the CRC-16/MODBUS check value
    assert "relay 1 is coil 0" in exception_meaning(2, 1, 5)


def test_modbus_state_reads_the_coil(make_board: BoardFactory) -> None:
    board = make_board("modbus", slave=3)
    relay = open_on(board, slave=3, coil=5)
    try:
        board.set_relay(5, True)
        assert relay.state() is True
        board.set_relay(5, False)
        assert relay.state() is False
    finally:
        relay.close()


def test_ascii_board_that_echoes_commands(make_board: BoardFactory) -> None:
    board = make_board("ascii", ascii_echo=True)
    relay = open_on(board)
    try:
        relay.switch(True)
        assert relay.state() is True
        assert board.relay(0)
    finally:
        relay.close()


def test_ascii_board_ending_lines_with_newline_alone(make_board: BoardFactory) -> None:
    board = make_board("ascii", ascii_ending=b"\n")
    relay = open_on(board)
    try:
        relay.switch(True)
        assert relay.state() is True
    finally:
        relay.close()


def test_ascii_strings_are_configurable(make_board: BoardFactory) -> None:
    """A board answering nothing to its commands; the strings come from the config."""
    board = make_board("ascii")
    board.fault = "silent"
    relay = open_on(
        board,
        on_command="AT+ON",
        off_command="AT+OFF",
        status_command=None,
        on_reply=None,
        off_reply=None,
        line_ending="\n",
    )
    try:
        relay.switch(True)
        relay.switch(False)
        assert relay.state() is False  # no status command: the last state commanded
        wait_until(lambda: len(board.requests()) == 2, 5, "both commands at the board")
        assert board.requests() == [b"AT+ON\n", b"AT+OFF\n"]
    finally:
        relay.close()


def test_an_ascii_reply_other_than_expected_is_shown(make_board: BoardFactory) -> None:
    board = make_board("ascii")
    relay = open_on(board, on_command="RELAY 1 ON")  # the board answers ERR to it
    try:
        with pytest.raises(RelayError) as raised:
            relay.switch(True)
        assert "got 'ERR\\r\\n'" in str(raised.value)
        assert "expected 'OK'" in str(raised.value)
    finally:
        relay.close()


# --- socket:// (a serial server on the network) --------------------------------------------


@pytest.mark.parametrize("protocol", ["modbus", "ascii"])
def test_a_board_behind_a_serial_server(protocol: BoardProtocol) -> None:
    board = SerialServerBoard(protocol).start()
    try:
        relay = open_relay(
            RelayConfig.model_validate(
                {"driver": protocol, "url": board.url, "reply_timeout_s": REPLY_TIMEOUT_S}
            )
        )
        relay.switch(True)
        assert board.relay(0)
        assert relay.state() is True
        board.disappear()  # the serial server goes down
        with pytest.raises(RelayError) as raised:
            relay.switch(False)
        assert board.url in str(raised.value)
        relay.close()
        with pytest.raises(RelayError, match="refused the connection"):
            open_relay(RelayConfig(driver=protocol, url=board.url))
        board.reappear()
        relay = open_relay(RelayConfig(driver=protocol, url=board.url))
        assert relay.state() is False  # the board came back with its relays off
        relay.close()
    finally:
        board.close()


# --- loop:// (no hardware, no pty) ---------------------------------------------------------


def test_loop_url_smoke() -> None:
    """loop:// hands back what is written: an LCUS board (no answer) works, a Modbus write
    is answered by its own echo, as a real board does; a read or a text command is not."""
    lcus = open_relay(RelayConfig(driver="lcus", url="loop://"))
    lcus.switch(True)
    assert lcus.state() is True
    lcus.close()

    modbus = open_relay(RelayConfig(driver="modbus", url="loop://", reply_timeout_s=0.2))
    modbus.switch(True)
    with pytest.raises(RelayError, match="makes no sense"):
        modbus.state()
    modbus.close()

    text = AsciiRelay("loop://", reply_timeout_s=0.2)
    with pytest.raises(RelayError, match="did not answer"):
        text.switch(True)  # its own echo is skipped, then nothing
    text.close()
