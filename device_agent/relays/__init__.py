"""Relay boards that switch a cluster's amplifier: one small interface, one file per driver.

- `interface.py`: `Relay` (switch, state, close) and `RelayError`;
- `config.py`: `RelayConfig`, the `relay:` section of the agent config;
- `serialport.py`: the serial edge (pyserial's `serial_for_url`), shared by the drivers;
- `lcus.py`, `ascii.py`, `modbus.py`: one driver each.

Importing this package does not import pyserial: `open_relay` loads the driver it needs.
A new driver is a module with a class satisfying `Relay`, a name in `RelayDriver`, its
options in `DRIVER_OPTIONS`, and a branch in `open_relay`.
"""

from __future__ import annotations

from device_agent.relays.config import RelayConfig, RelayDriver
from device_agent.relays.interface import Relay, RelayError

__all__ = ["Relay", "RelayConfig", "RelayDriver", "RelayError", "open_relay"]


def open_relay(config: RelayConfig) -> Relay:
    """Open the port of the configured board; RelayError when it cannot be opened."""
    if config.driver == "none" or config.url is None:
        raise ValueError("no relay is configured (relay.driver: none)")
    if config.driver == "lcus":
        from device_agent.relays.lcus import LcusRelay

        return LcusRelay(
            config.url,
            config.channel,
            baudrate=config.baudrate,
            reply_timeout_s=config.reply_timeout_s,
            status_query=config.status_query,
        )
    if config.driver == "ascii":
        from device_agent.relays.ascii import AsciiRelay

        return AsciiRelay(
            config.url,
            baudrate=config.baudrate,
            reply_timeout_s=config.reply_timeout_s,
            on_command=config.on_command,
            off_command=config.off_command,
            status_command=config.status_command,
            on_reply=config.on_reply,
            off_reply=config.off_reply,
            status_on=config.status_on,
            status_off=config.status_off,
            line_ending=config.line_ending,
        )
    from device_agent.relays.modbus import ModbusRelay

    return ModbusRelay(
        config.url,
        slave=config.slave,
        coil=config.coil,
        baudrate=config.baudrate,
        reply_timeout_s=config.reply_timeout_s,
    )
