"""Modbus RTU relay boards: the relay is a coil of a slave on an RS-485 line (or behind a
serial server).

- switch: function 05 (write single coil), value FF00 for on, 0000 for off; the board
  answers with an echo of the request;
- state: function 01 (read coils), one coil; the answer's first data bit is its state;
- a refusal is an exception answer (function | 0x80) with a code, explained in the error.

Frames end with the Modbus CRC-16, low byte first; it is checked on every answer.
"""

from __future__ import annotations

from device_agent.relays.interface import RelayError
from device_agent.relays.serialport import RelayPort

WRITE_SINGLE_COIL = 0x05
READ_COILS = 0x01
EXCEPTION_FLAG = 0x80
COIL_ON = 0xFF00
COIL_OFF = 0x0000

#: Modbus exception codes: what they mean and what to try.
EXCEPTIONS: dict[int, str] = {
    0x01: "illegal function: the board does not take this function; check that it is a "
    "Modbus coil relay board (some boards want holding registers instead)",
    0x02: "illegal data address: the board has no coil {coil}; check relay.coil (relay 1 "
    "is coil 0 on most boards)",
    0x03: "illegal data value: the board refused the value written",
    0x04: "slave device failure: the board reports an internal fault; power-cycle it",
    0x05: "acknowledge: the board is still working on an earlier request; the agent tries again",
    0x06: "slave device busy: the agent tries again",
    0x08: "memory parity error: the board's memory is faulty; replace the board",
    0x0A: "gateway path unavailable: the serial gateway has no route to slave {slave}",
    0x0B: "gateway target device failed to respond: nothing answers as slave {slave} "
    "behind the gateway; check relay.slave and the RS-485 wiring",
}


def crc16(data: bytes) -> int:
    """The Modbus CRC-16 (polynomial A001 reflected, initial value FFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(body: bytes) -> bytes:
    """body followed by its CRC, low byte first."""
    return body + crc16(body).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def write_coil_request(slave: int, coil: int, on: bool) -> bytes:
    value = COIL_ON if on else COIL_OFF
    return with_crc(
        bytes([slave, WRITE_SINGLE_COIL]) + coil.to_bytes(2, "big") + value.to_bytes(2, "big")
    )


def read_coil_request(slave: int, coil: int) -> bytes:
    return with_crc(bytes([slave, READ_COILS]) + coil.to_bytes(2, "big") + (1).to_bytes(2, "big"))


def exception_meaning(code: int, slave: int, coil: int) -> str:
    meaning = EXCEPTIONS.get(code, "a code this driver does not know; see the board's manual")
    return f"exception {code:02X}, {meaning.format(slave=slave, coil=coil)}"


class ModbusRelay:
    """One coil of one Modbus RTU slave."""

    def __init__(
        self,
        url: str,
        *,
        slave: int = 1,
        coil: int = 0,
        baudrate: int = 9600,
        reply_timeout_s: float = 1.0,
    ) -> None:
        if not 1 <= slave <= 247:
            raise ValueError(f"Modbus slave id {slave} is out of range: write 1 to 247")
        if not 0 <= coil <= 0xFFFF:
            raise ValueError(f"Modbus coil {coil} is out of range: write 0 to 65535")
        self.slave = slave
        self.coil = coil
        self._port = RelayPort(
            url, baudrate, reply_timeout_s, f"Modbus relay board (slave {slave}, coil {coil})"
        )

    def _transact(self, request: bytes, action: str) -> bytes:
        """Send a request; its checked answer (not an exception)."""
        port = self._port
        function = request[1]
        port.send(request)
        reply = port.read(2, request)
        if len(reply) < 2:
            raise port.no_reply(request, action, reply)
        if reply[0] != self.slave:
            raise port.bad_reply(
                request,
                action,
                reply + port.waiting(request),
                f"it starts with slave id {reply[0]}, not {self.slave}: check relay.slave, "
                "and that no other device on the line uses the same id",
            )
        if reply[1] == function | EXCEPTION_FLAG:
            length = 5  # slave, function, code, CRC
        elif reply[1] != function:
            raise port.bad_reply(
                request,
                action,
                reply + port.waiting(request),
                f"function {reply[1]:02X} is not {function:02X}",
            )
        elif function == READ_COILS:
            reply += port.read(1, request)
            if len(reply) < 3:
                raise port.no_reply(request, action, reply)
            length = 3 + reply[2] + 2  # slave, function, count, data, CRC
        else:
            length = len(request)  # an echo
        reply += port.read(length - len(reply), request)
        if len(reply) < length:
            raise port.no_reply(request, action, reply)
        if not crc_ok(reply):
            raise port.bad_reply(
                request,
                action,
                reply,
                f"its CRC is wrong (expected {crc16(reply[:-2]).to_bytes(2, 'little').hex(' ')})",
            )
        if reply[1] & EXCEPTION_FLAG:
            raise RelayError(
                f"{port.what} on {port.url} refused {action}: "
                f"{exception_meaning(reply[2], self.slave, self.coil)}"
            )
        return reply

    def switch(self, on: bool) -> None:
        request = write_coil_request(self.slave, self.coil, on)
        action = f"the switch-{'on' if on else 'off'} request (write coil)"
        reply = self._transact(request, action)
        if reply != request:
            raise self._port.bad_reply(request, action, reply, "not an echo of the request")

    def state(self) -> bool | None:
        request = read_coil_request(self.slave, self.coil)
        action = "the state query (read coils)"
        reply = self._transact(request, action)
        if reply[2] < 1:
            raise self._port.bad_reply(request, action, reply, "it holds no coil")
        return bool(reply[3] & 1)

    def close(self) -> None:
        self._port.close()
