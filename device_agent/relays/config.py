"""The `relay:` section of the agent config: which board switches the amplifier, and when.

    relay:
      driver: lcus                 # lcus, ascii, modbus or none
      url: /dev/serial/by-id/usb-1a86_USB_Serial-if00-port0
      channel: 1
      warm_up: 3s                  # amplifier on this long before the first sample
      idle_off: 2m                 # amplifier off after this long without a play
      play_without_relay: true     # play anyway when the relay board fails

Options of one driver are refused under another (a `coil:` under `driver: lcus` is a
mistake, not something to ignore silently).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from protocol.durations import Duration
from protocol.l10n import N_, _

RelayDriver = Literal["lcus", "ascii", "modbus", "none"]

#: URL schemes pyserial's serial_for_url understands (a plain device path has none).
URL_SCHEMES = ("socket", "rfc2217", "loop", "spy", "alt", "hwgrep")

#: Options that belong to one driver only.
DRIVER_OPTIONS: dict[str, tuple[str, ...]] = {
    "lcus": ("channel", "status_query"),
    "ascii": (
        "on_command", "off_command", "status_command", "on_reply", "off_reply",
        "status_on", "status_off", "line_ending",
    ),
    "modbus": ("slave", "coil"),
}  # fmt: skip
_OWNER = {name: driver for driver, names in DRIVER_OPTIONS.items() for name in names}


def _port_url(value: str) -> str:
    scheme, sep, _rest = value.partition("://")
    if sep and scheme not in URL_SCHEMES:
        raise ValueError(_(
            "{scheme}:// is not a serial port: write a device such as /dev/ttyUSB0, or "
            "socket://host:port or rfc2217://host:port for a serial server", scheme=scheme,
        ))
    return value


def _ascii_text(value: str) -> str:
    if not value.isascii():
        raise ValueError(_("only ASCII characters can be sent to the board"))
    return value


def _line_ending(value: str) -> str:
    if not 1 <= len(value) <= 2:
        raise ValueError(_('write the line ending the board uses: "\\r\\n", "\\n" or "\\r"'))
    return value


def _show(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n]
    return "".join(parts) or "0s"


def _between(low: timedelta, high: timedelta, why: str) -> AfterValidator:
    def check(value: timedelta) -> timedelta:
        if not low <= value <= high:
            raise ValueError(_(
                "{value} is out of range: write {low} to {high} ({why})", value=_show(value),
                low=_show(low), high=_show(high), why=_(why),
            ))
        return value

    return AfterValidator(check)


AsciiText = Annotated[str, AfterValidator(_ascii_text)]
Command = Annotated[AsciiText, Field(min_length=1)]


class RelayConfig(BaseModel):
    """The amplifier relay."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    driver: RelayDriver = "none"
    """lcus (USB relay boards with A0 frames), ascii (text commands), modbus (Modbus RTU
    coils), or none (no relay: the amplifier is always on)."""
    url: Annotated[str, Field(min_length=1), AfterValidator(_port_url)] | None = None
    """The board's serial port: /dev/ttyUSB0, /dev/serial/by-id/..., socket://host:port
    or rfc2217://host:port."""
    baudrate: Annotated[int, Field(ge=300, le=4_000_000)] = 9600
    """Serial speed; LCUS boards and most Modbus relay boards use 9600."""
    reply_timeout_s: Annotated[float, Field(gt=0, le=30)] = 1.0
    """How long to wait for the board's reply, in seconds."""

    channel: Annotated[int, Field(ge=1, le=255)] = 1
    """lcus: the relay channel the amplifier is wired to (1 is the first)."""
    status_query: bool = False
    """lcus: ask the board for its state (byte FF, answered with "CH1: ON"); most boards
    do not answer, and then the state shown is the last one commanded."""

    on_command: Command = "RELAY ON"
    """ascii: the line that switches the relay on (the line ending is added)."""
    off_command: Command = "RELAY OFF"
    """ascii: the line that switches the relay off."""
    status_command: Command | None = "RELAY?"
    """ascii: the line that asks for the relay's state; null if the board cannot say."""
    on_reply: Command | None = "OK"
    """ascii: the board's answer to on_command; null if it does not answer."""
    off_reply: Command | None = "OK"
    """ascii: the board's answer to off_command; null if it does not answer."""
    status_on: Command = "ON"
    """ascii: the answer to status_command when the relay is on."""
    status_off: Command = "OFF"
    """ascii: the answer to status_command when the relay is off."""
    line_ending: Annotated[AsciiText, AfterValidator(_line_ending)] = "\r\n"
    """ascii: ends every line sent and received ("\\r\\n", "\\n" or "\\r")."""

    slave: Annotated[int, Field(ge=1, le=247)] = 1
    """modbus: the board's slave id (address), set by DIP switches or its manual."""
    coil: Annotated[int, Field(ge=0, le=0xFFFF)] = 0
    """modbus: the coil address as sent on the wire; relay 1 is coil 0 on most boards."""

    warm_up: Annotated[
        Duration, _between(timedelta(0), timedelta(minutes=1), N_("amplifiers warm up in seconds"))
    ] = timedelta(seconds=3)
    """How long the amplifier is on before the first sample of a play."""
    idle_off: Annotated[
        Duration, _between(timedelta(0), timedelta(hours=24), N_("a day at most"))
    ] = (
        timedelta(minutes=2)
    )
    """How long after the last play the amplifier is switched off."""
    play_without_relay: bool = True
    """When the relay board fails: true plays anyway (the fault is reported), false
    reports the play as failed."""
    retry_max: Annotated[
        Duration, _between(timedelta(seconds=1), timedelta(hours=1), N_("retries start at 1s"))
    ] = timedelta(minutes=1)
    """Longest wait between attempts to reach a failed relay board (1 s, doubling)."""

    @field_validator(*_OWNER, mode="after")
    @classmethod
    def _belongs_to_the_driver(cls, value: object, info: ValidationInfo) -> object:
        """An option of another driver is a mistake (only options written are checked)."""
        driver = info.data.get("driver")
        owner = _OWNER[info.field_name or ""]
        if driver not in (None, "none", owner):
            raise ValueError(_(
                "{field} is for the {owner} driver, not {driver}: remove it or "
                "set driver: {owner}", field=info.field_name, owner=owner, driver=driver,
            ))
        return value

    @model_validator(mode="after")
    def _fits_the_driver(self) -> RelayConfig:
        if self.driver == "none":
            return self
        if self.url is None:
            raise ValueError(_(
                "the {driver} relay needs its port: add `url: /dev/ttyUSB0` (or "
                "socket://host:port for a serial server)", driver=self.driver,
            ))
        return self
