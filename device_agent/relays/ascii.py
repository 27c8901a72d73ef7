"""Relay boards driven by lines of text (many RS-232/RS-485 and microcontroller boards).

Every string is configurable. With the defaults:

    sent            answer
    RELAY ON\\r\\n    OK
    RELAY OFF\\r\\n   OK
    RELAY?\\r\\n      ON or OFF

Answers are compared without surrounding blanks and without regard to case. A board
that echoes each command before answering is understood (the echo is skipped). A
command whose expected answer is None is sent without waiting for one; without a status
command, `state()` returns the last state commanded.
"""

from __future__ import annotations

from device_agent.relays.serialport import RelayPort

#: Lines read at most for one answer: an echo and blank lines may come first.
MAX_LINES = 4


def _same(line: bytes, text: str) -> bool:
    return line.decode("ascii", errors="replace").strip().casefold() == text.strip().casefold()


class AsciiRelay:
    """A relay switched by text commands."""

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 9600,
        reply_timeout_s: float = 1.0,
        on_command: str = "RELAY ON",
        off_command: str = "RELAY OFF",
        status_command: str | None = "RELAY?",
        on_reply: str | None = "OK",
        off_reply: str | None = "OK",
        status_on: str = "ON",
        status_off: str = "OFF",
        line_ending: str = "\r\n",
    ) -> None:
        if not line_ending:
            raise ValueError("the line ending cannot be empty: write \\r\\n, \\n or \\r")
        self._ending = line_ending.encode("ascii")
        self._on = (on_command, on_reply)
        self._off = (off_command, off_reply)
        self._status = status_command
        self._status_on = status_on
        self._status_off = status_off
        self._commanded: bool | None = None
        self._port = RelayPort(url, baudrate, reply_timeout_s, "text relay board")

    def _ask(self, command: str, action: str) -> tuple[bytes, bytes]:
        """Send one command line; its answer line (the echo and blank lines skipped)."""
        sent = command.encode("ascii") + self._ending
        self._port.send(sent)
        heard = b""
        # Read up to the last character of the ending, so that a board ending its lines
        # with \n alone is understood when we send \r\n.
        for _ in range(MAX_LINES):
            line = self._port.read_line(self._ending[-1:], sent)
            heard += line
            if not line.endswith(self._ending[-1:]):
                raise self._port.no_reply(sent, action, heard)
            if line.strip() and not _same(line, command):
                return sent, line
        raise self._port.bad_reply(sent, action, heard, "only blank lines or echoes")

    def switch(self, on: bool) -> None:
        command, expected = self._on if on else self._off
        action = f"the command {command!r} (switch {'on' if on else 'off'})"
        if expected is None:
            self._port.send(command.encode("ascii") + self._ending)
        else:
            sent, line = self._ask(command, action)
            if not _same(line, expected):
                raise self._port.bad_reply(sent, action, line, f"expected {expected!r}")
        self._commanded = on

    def state(self) -> bool | None:
        if self._status is None:
            return self._commanded
        action = f"the command {self._status!r} (status)"
        sent, line = self._ask(self._status, action)
        if _same(line, self._status_on):
            return True
        if _same(line, self._status_off):
            return False
        raise self._port.bad_reply(
            sent, action, line, f"expected {self._status_on!r} or {self._status_off!r}"
        )

    def close(self) -> None:
        self._port.close()
