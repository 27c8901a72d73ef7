"""A simulated relay board on a real pseudo-terminal, for the relay tests.

The driver under test opens `board.url` (a symlink to the pty's slave side, as
/dev/serial/by-id/... is to /dev/ttyUSB0) through serial_for_url, exactly as in the
field. A thread plays the board on the master side: it records every byte it receives,
with the monotonic time it arrived, and answers as the protocol says:

- lcus: 4-byte `A0 ch state sum` frames switch a channel, no answer; the byte FF is
  answered with "CH1: ON\\r\\n" lines when `lcus_status` is set;
- ascii: "RELAY ON" / "RELAY OFF" answered "OK", "RELAY?" answered "ON" / "OFF";
  anything else "ERR"; optionally each line echoed first;
- modbus: write single coil (05) echoed, read coils (01) answered; a frame with a bad
  CRC or another slave id is ignored, as a real slave does.

Faults, settable at any time through `fault`: "silent" (the board hears nothing),
"garbage" (answers noise), "bad_crc" (modbus: right answer, wrong CRC), "exception"
(modbus: exception answer with `exception_code`). `disappear()` closes the pty (the USB
plug pulled: the port and its link vanish); `reappear()` plugs a new one in behind the
same link, with every relay off (the board lost power).

`SerialServerBoard` is the same board behind a serial server on loopback
(`socket://127.0.0.1:<port>`), as a Moxa NPort or ser2net puts an RS-485 line on the
network.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from device_agent.relays.modbus import crc16, with_crc

BoardProtocol = Literal["lcus", "ascii", "modbus"]
Fault = Literal["none", "silent", "garbage", "bad_crc", "exception"]

GARBAGE = b"\xde\xad\xbe\xef\x13\x37\r\n"


@dataclass(frozen=True)
class Received:
    """One request the board read, and when (time.monotonic())."""

    data: bytes
    at: float


class SimulatedBoard:
    """A relay board behind a pty; `url` is what the driver opens."""

    def __init__(
        self,
        protocol: BoardProtocol,
        link: Path,
        *,
        channels: int = 4,
        slave: int = 1,
        coils: int = 8,
        lcus_status: bool = False,
        ascii_echo: bool = False,
        ascii_ending: bytes = b"\r\n",
        exception_code: int = 0x02,
    ) -> None:
        self.protocol = protocol
        self.link = link
        self.slave = slave
        self.coils = coils
        self.lcus_status = lcus_status
        self.ascii_echo = ascii_echo
        self.ascii_ending = ascii_ending
        self.exception_code = exception_code
        self.fault: Fault = "none"
        count = channels if protocol == "lcus" else coils if protocol == "modbus" else 1
        first = 1 if protocol == "lcus" else 0
        self._lock = threading.Lock()
        self._relays = dict.fromkeys(range(first, first + count), False)
        self._received: list[Received] = []
        self._master: int | None = None
        self._slave_fd: int | None = None
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = os.pipe()
        self.plug_ins = 0

    # --- what tests see ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return str(self.link)

    def relay(self, number: int) -> bool:
        """A channel (lcus, from 1), a coil (modbus, from 0), or the relay (ascii: 0)."""
        with self._lock:
            return self._relays[number]

    def set_relay(self, number: int, on: bool) -> None:
        with self._lock:
            self._relays[number] = on

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def requests(self) -> list[bytes]:
        return [r.data for r in self.received()]

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> SimulatedBoard:
        """Plug the board in: a new pty behind the link, and the thread playing the board."""
        master, slave = os.openpty()
        tty.setraw(slave)  # the driver sets raw mode too; nothing is echoed before it does
        # The board keeps the slave side open, so that the master never reads EIO while the
        # driver has its port closed.
        self._master, self._slave_fd = master, slave
        self.link.unlink(missing_ok=True)
        self.link.symlink_to(os.ttyname(slave))
        self._thread = threading.Thread(target=self._run, args=(master,), daemon=True)
        self._thread.start()
        self.plug_ins += 1
        return self

    def disappear(self) -> None:
        """Pull the plug: the pty closes (the driver's reads and writes fail with EIO) and
        the port's link is gone (opening it fails with ENOENT)."""
        self._stop_thread()
        for fd in (self._master, self._slave_fd):
            if fd is not None:
                os.close(fd)
        self._master = self._slave_fd = None
        self.link.unlink(missing_ok=True)

    def reappear(self) -> None:
        """Plug a board in again behind the same link; it starts with every relay off."""
        with self._lock:
            self._relays = dict.fromkeys(self._relays, False)
        self.start()

    def close(self) -> None:
        self.disappear()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _stop_thread(self) -> None:
        if self._thread is None:
            return
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        assert not self._thread.is_alive(), "the simulated board did not stop"
        os.read(self._stop_r, 1)
        self._thread = None

    # --- the board ----------------------------------------------------------------------------

    def _run(self, master: int) -> bool:
        """Play the board on fd master until stopped (True) or the line is gone (False)."""
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(master, selectors.EVENT_READ)
            selector.register(self._stop_r, selectors.EVENT_READ)
            while True:
                ready = {key.fd for key, _ in selector.select()}
                if self._stop_r in ready:
                    return True
                try:
                    data = os.read(master, 1024)
                except OSError:
                    return False
                if not data:
                    return False
                buffer += data
                buffer = self._take(buffer, master)

    def _take(self, buffer: bytes, master: int) -> bytes:
        """Handle every complete request at the start of buffer; what is left."""
        while buffer:
            if self.protocol == "lcus":
                size = 1 if buffer[0] != 0xA0 else 4
            elif self.protocol == "modbus":
                size = 8
            else:
                end = buffer.find(b"\n")
                size = end + 1 if end >= 0 else 0
            if size == 0 or len(buffer) < size:
                return buffer
            request, buffer = buffer[:size], buffer[size:]
            with self._lock:
                self._received.append(Received(request, time.monotonic()))
            if self.fault == "silent":
                continue
            if self.fault == "garbage":
                os.write(master, GARBAGE)
                continue
            answer = self._answer(request)
            if answer:
                os.write(master, answer)
        return buffer

    def _answer(self, request: bytes) -> bytes:
        if self.protocol == "lcus":
            return self._lcus(request)
        if self.protocol == "ascii":
            return self._ascii(request)
        return self._modbus(request)

    def _lcus(self, request: bytes) -> bytes:
        if request == b"\xff":
            if not self.lcus_status:
                return b""
            with self._lock:
                lines = [f"CH{n}: {'ON' if on else 'OFF'}\r\n" for n, on in self._relays.items()]
            return "".join(lines).encode()
        if len(request) == 4 and (request[0] + request[1] + request[2]) & 0xFF == request[3]:
            with self._lock:
                if request[1] in self._relays and request[2] in (0, 1):
                    self._relays[request[1]] = request[2] == 1
        return b""

    def _ascii(self, request: bytes) -> bytes:
        command = request.strip().decode("ascii", errors="replace")
        with self._lock:
            if command == "RELAY ON":
                self._relays[0] = True
                reply = "OK"
            elif command == "RELAY OFF":
                self._relays[0] = False
                reply = "OK"
            elif command == "RELAY?":
                reply = "ON" if self._relays[0] else "OFF"
            else:
                reply = "ERR"
        echo = request if self.ascii_echo else b""
        return echo + reply.encode() + self.ascii_ending

    def _modbus(self, request: bytes) -> bytes:
        if crc16(request[:-2]) != int.from_bytes(request[-2:], "little"):
            return b""  # a slave ignores a damaged frame
        if request[0] != self.slave:
            return b""  # another slave's request
        function = request[1]
        address = int.from_bytes(request[2:4], "big")
        value = int.from_bytes(request[4:6], "big")
        if self.fault == "exception":
            reply = with_crc(bytes([self.slave, function | 0x80, self.exception_code]))
        elif function not in (0x01, 0x05):
            reply = with_crc(bytes([self.slave, function | 0x80, 0x01]))
        elif address not in self._relays or (function == 0x05 and value not in (0, 0xFF00)):
            code = 0x02 if address not in self._relays else 0x03
            reply = with_crc(bytes([self.slave, function | 0x80, code]))
        elif function == 0x05:
            with self._lock:
                self._relays[address] = value == 0xFF00
            reply = request
        else:
            with self._lock:
                bits = 1 if self._relays[address] else 0
            reply = with_crc(bytes([self.slave, 0x01, 0x01, bits]))
        if self.fault == "bad_crc":
            reply = reply[:-2] + bytes([reply[-2] ^ 0xFF, reply[-1]])
        return reply


class SerialServerBoard(SimulatedBoard):
    """The board behind a TCP serial server; `disappear()` is the server going down."""

    def __init__(self, protocol: BoardProtocol, **options: Any) -> None:
        super().__init__(protocol, Path("/nonexistent"), **options)
        self._listener: socket.socket | None = None
        self._tcp_port = 0

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self._tcp_port}"

    def start(self) -> SerialServerBoard:
        # The same port again after reappear(), as a serial server keeps its address.
        self._listener = socket.create_server(("127.0.0.1", self._tcp_port))
        self._tcp_port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, args=(self._listener,), daemon=True)
        self._thread.start()
        self.plug_ins += 1
        return self

    def _serve(self, listener: socket.socket) -> None:
        """One client at a time, as a serial server's port; a new one after a disconnect."""
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(self._stop_r, selectors.EVENT_READ)
            while True:
                ready = {key.fd for key, _ in selector.select()}
                if self._stop_r in ready:
                    return
                connection, _ = listener.accept()
                with connection:
                    if self._run(connection.fileno()):
                        return

    def disappear(self) -> None:
        self._stop_thread()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
