"""The serial edge of the relay drivers: the only module of the agent that imports pyserial.

Ports open through `serial.serial_for_url`, so the same driver talks to
- a local port: `/dev/ttyUSB0`, `/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0`;
- a serial server on the network: `socket://10.0.0.7:4001`, `rfc2217://10.0.0.7:4001`;
- a pseudo-terminal or `loop://` in tests.

Every failure becomes a RelayError saying which port, what was sent, what came back and
what to try; pyserial's own exceptions never leave this module.
"""

from __future__ import annotations

import contextlib
import errno

from device_agent.relays.interface import RelayError

#: Longest reply a driver reads: protects against a port that streams noise forever.
MAX_REPLY_BYTES = 256

CHECK_WIRING = (
    "check that the board has power, that its cable is plugged in, and that relay.url, "
    "relay.baudrate and the driver match the board"
)


def show_bytes(data: bytes) -> str:
    """Bytes as a technician compares them with a board's manual: hex, and text if any."""
    if not data:
        return "nothing"
    hexed = " ".join(f"{b:02X}" for b in data)
    if all(32 <= b < 127 or b in (9, 10, 13) for b in data):
        return f"{data.decode('ascii')!r} ({hexed})"
    return hexed


def _errno(exc: BaseException) -> int | None:
    """The OS error code behind an exception (pyserial wraps some without it)."""
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(seen, "errno", None)
        if isinstance(code, int):
            return code
        seen = seen.__cause__ or seen.__context__
    return None


def _open_problem(url: str, exc: BaseException) -> str:
    code = _errno(exc)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        advice = (
            "the port does not exist: plug the relay board in, look for its name with "
            "`ls -l /dev/serial/by-id/ /dev/ttyUSB* /dev/ttyACM*` and set relay.url to it"
        )
    elif code in (errno.EACCES, errno.EPERM):
        advice = (
            "permission denied: add the agent's user to the 'dialout' group "
            "(`usermod -aG dialout loa`) and restart the agent"
        )
    elif code == errno.EBUSY:
        advice = "the port is in use by another program: find it with `fuser -v` on the port"
    elif code == errno.ECONNREFUSED:
        advice = "the serial server refused the connection: check its address and port"
    elif isinstance(exc, ValueError):
        advice = (
            "relay.url is not understood: write a device (/dev/ttyUSB0) or "
            "socket://host:port or rfc2217://host:port"
        )
    else:
        advice = CHECK_WIRING
    return f"cannot open the relay port {url} ({exc}): {advice}"


class RelayPort:
    """One open serial port to a relay board.

    `what` names the board in messages, e.g. "LCUS relay board (channel 1)".
    """

    def __init__(self, url: str, baudrate: int, reply_timeout_s: float, what: str) -> None:
        import serial  # lazily: importing the relay package does not load pyserial

        self.url = url
        self.reply_timeout_s = reply_timeout_s
        self.what = what
        try:
            self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=reply_timeout_s)
        except Exception as exc:  # pyserial raises SerialException, OSError or ValueError
            raise RelayError(_open_problem(url, exc)) from exc

    def _fault(self, action: str, sent: bytes, exc: BaseException) -> RelayError:
        # termios.error carries (errno, text) in its args and prints as a tuple.
        args = exc.args
        detail = args[1] if len(args) == 2 and isinstance(args[1], str) else str(exc)
        return RelayError(
            f"{self.what} on {self.url}: the port failed while {action} (sent "
            f"{show_bytes(sent)}; {detail}): the board was probably unplugged or lost power; "
            f"{CHECK_WIRING}. The agent opens the port again on its next try"
        )

    def send(self, frame: bytes) -> None:
        """Drop what the board sent before (a late reply), write frame and wait until it is out."""
        try:
            self._port.reset_input_buffer()
            self._port.write(frame)
            self._port.flush()
        # SerialException, OSError, and termios.error (not an OSError) from tcdrain/tcflush
        # when the device is gone: every one is a port fault.
        except Exception as exc:
            raise self._fault("sending", frame, exc) from exc

    def read(self, size: int, sent: bytes) -> bytes:
        """Up to size bytes, fewer if the reply timeout passes first."""
        try:
            data: bytes = self._port.read(size)
        except Exception as exc:  # as in send: any exception here is a port fault
            raise self._fault("reading the reply", sent, exc) from exc
        return data

    def waiting(self, sent: bytes) -> bytes:
        """What has already arrived, without waiting (to show the rest of a bad reply)."""
        try:
            size = min(int(self._port.in_waiting), MAX_REPLY_BYTES)
            data: bytes = self._port.read(size) if size else b""
        except Exception as exc:  # as in send: any exception here is a port fault
            raise self._fault("reading the reply", sent, exc) from exc
        return data

    def read_line(self, ending: bytes, sent: bytes) -> bytes:
        """One reply line (ending included), or what arrived when the reply timeout passed."""
        try:
            data: bytes = self._port.read_until(ending, MAX_REPLY_BYTES)
        except Exception as exc:  # as in send: any exception here is a port fault
            raise self._fault("reading the reply", sent, exc) from exc
        return data

    def no_reply(self, sent: bytes, action: str, got: bytes = b"") -> RelayError:
        came = "nothing came back" if not got else f"only {show_bytes(got)} came back"
        return RelayError(
            f"{self.what} on {self.url} did not answer {action} within {self.reply_timeout_s:g} s "
            f"(sent {show_bytes(sent)}; {came}): {CHECK_WIRING}"
        )

    def bad_reply(self, sent: bytes, action: str, got: bytes, why: str) -> RelayError:
        return RelayError(
            f"{self.what} on {self.url} gave an answer to {action} that makes no sense (sent "
            f"{show_bytes(sent)}; got {show_bytes(got)}: {why}): check relay.baudrate, that "
            "the driver matches the board, and the cable (noise on long RS-485 lines)"
        )

    def close(self) -> None:
        # Closing a port whose device is gone may fail: there is nothing left to release.
        with contextlib.suppress(Exception):
            self._port.close()
