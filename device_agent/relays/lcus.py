"""LCUS-type USB relay boards (a CH340 USB-serial chip, 9600 baud, 1 to 8 relays).

Each command is 4 bytes: `A0 <channel> <state> <checksum>`, checksum being the low byte
of A0 + channel + state. Channel 1 on is `A0 01 01 A2`, off is `A0 01 00 A1`.

These boards do not acknowledge commands, so a dead board is only noticed when its port
disappears. `state()` returns the last state this driver commanded, unless
`status_query` is set: some boards answer the single byte `FF` with one line per
channel, "CH1: ON" / "CH1:OFF".
"""

from __future__ import annotations

import re

from device_agent.relays.interface import RelayError
from device_agent.relays.serialport import RelayPort

HEADER = 0xA0
STATUS_QUERY = b"\xff"
_STATUS_LINE = re.compile(rb"CH\s*(\d+)\s*:\s*(ON|OFF)", re.IGNORECASE)
#: Status lines read at most (one per channel; the biggest boards have 8).
MAX_STATUS_LINES = 16


def frame(channel: int, on: bool) -> bytes:
    """The command switching one channel."""
    state = 1 if on else 0
    return bytes([HEADER, channel, state, (HEADER + channel + state) & 0xFF])


class LcusRelay:
    """One channel of an LCUS board."""

    def __init__(
        self,
        url: str,
        channel: int = 1,
        *,
        baudrate: int = 9600,
        reply_timeout_s: float = 1.0,
        status_query: bool = False,
    ) -> None:
        if not 1 <= channel <= 255:
            raise ValueError(f"LCUS channel {channel} is out of range: write 1 to 255")
        self.channel = channel
        self.status_query = status_query
        self._commanded: bool | None = None
        self._port = RelayPort(
            url, baudrate, reply_timeout_s, f"LCUS relay board (channel {channel})"
        )

    def switch(self, on: bool) -> None:
        self._port.send(frame(self.channel, on))
        self._commanded = on

    def state(self) -> bool | None:
        if not self.status_query:
            return self._commanded
        port = self._port
        action = "the status query"
        port.send(STATUS_QUERY)
        heard = b""
        for _ in range(MAX_STATUS_LINES):
            line = port.read_line(b"\n", STATUS_QUERY)
            heard += line
            if not line:
                break
            match = _STATUS_LINE.search(line)
            if match is None:
                raise port.bad_reply(STATUS_QUERY, action, heard, 'expected lines like "CH1: ON"')
            if int(match.group(1)) == self.channel:
                return match.group(2).upper() == b"ON"
        if not heard:
            raise RelayError(
                f"{port.what} on {port.url} did not answer {action} within "
                f"{port.reply_timeout_s:g} s (sent FF): this board may not support it; set "
                "relay.status_query: false"
            )
        raise port.bad_reply(
            STATUS_QUERY,
            action,
            heard,
            f"no line for channel {self.channel}: check relay.channel",
        )

    def close(self) -> None:
        self._port.close()
