"""The relay config as a technician writes it: located errors saying what to write."""

from __future__ import annotations

from datetime import timedelta
from textwrap import dedent

from pydantic import BaseModel, ConfigDict

from device_agent.relays import RelayConfig
from protocol.config_errors import Problem
from protocol.validation import validate
from protocol.yamlload import load_yaml_text


class AgentSection(BaseModel):
    """The relay config embedded as the agent config will embed it."""

    model_config = ConfigDict(extra="forbid")
    relay: RelayConfig = RelayConfig()


def load(text: str) -> AgentSection | list[Problem]:
    data, where = load_yaml_text(dedent(text).lstrip("\n"), "agent.yaml")
    return validate(AgentSection, data, where)


def problems(text: str) -> list[str]:
    result = load(text)
    assert isinstance(result, list), "expected problems"
    return [str(p) for p in result]


def test_no_relay_section_means_no_relay() -> None:
    result = load("{}\n")
    assert isinstance(result, AgentSection)
    assert result.relay.driver == "none"
    assert result.relay.url is None


def test_an_lcus_board() -> None:
    result = load("""
        relay:
          driver: lcus
          url: /dev/serial/by-id/usb-1a86_USB_Serial-if00-port0
          channel: 2
          warm_up: 5s
          idle_off: 10m
          play_without_relay: false
    """)
    assert isinstance(result, AgentSection)
    relay = result.relay
    assert (relay.driver, relay.channel, relay.baudrate) == ("lcus", 2, 9600)
    assert relay.warm_up == timedelta(seconds=5)
    assert relay.idle_off == timedelta(minutes=10)
    assert relay.play_without_relay is False


def test_ascii_strings_stay_text() -> None:
    """ON and OFF are text, not YAML 1.1 booleans; the line ending is written escaped."""
    result = load("""
        relay:
          driver: ascii
          url: socket://10.0.0.7:4001
          on_command: AT+ON
          status_on: ON
          status_off: OFF
          on_reply: null
          line_ending: "\\n"
    """)
    assert isinstance(result, AgentSection)
    relay = result.relay
    assert (relay.status_on, relay.status_off) == ("ON", "OFF")
    assert relay.on_reply is None
    assert relay.line_ending == "\n"


def test_a_driver_needs_its_port() -> None:
    assert problems("""
        relay:
          driver: modbus
    """) == [
        "agent.yaml:2:3: relay: the modbus relay needs its port: add `url: /dev/ttyUSB0` (or "
        "socket://host:port for a serial server)"
    ]


def test_an_option_of_another_driver_is_refused() -> None:
    assert problems("""
        relay:
          driver: lcus
          url: /dev/ttyUSB0
          coil: 3
          on_command: "ON"
    """) == [
        "agent.yaml:4:9: coil: coil is for the modbus driver, not lcus: remove it or set "
        "driver: modbus",
        "agent.yaml:5:15: on_command: on_command is for the ascii driver, not lcus: remove it "
        "or set driver: ascii",
    ]


def test_a_misspelt_option_gets_a_suggestion() -> None:
    [problem] = problems("""
        relay:
          driver: lcus
          url: /dev/ttyUSB0
          chanel: 2
    """)
    assert problem.startswith("agent.yaml:4:3: ")
    assert "did you mean 'channel'?" in problem


def test_a_url_that_is_no_serial_port() -> None:
    [problem] = problems("""
        relay:
          driver: lcus
          url: http://10.0.0.7/
    """)
    assert problem.startswith("agent.yaml:3:8: ")
    assert "http:// is not a serial port" in problem


def test_durations_need_a_unit_and_stay_in_range() -> None:
    found = problems("""
        relay:
          warm_up: 3
          idle_off: 48h
          retry_max: 0s
    """)
    assert len(found) == 3
    assert found[0].startswith("agent.yaml:2:12: ")
    assert "3 has no unit: write e.g. 3s" in found[0]
    assert found[1] == (
        "agent.yaml:3:13: idle_off: 48h is out of range: write 0s to 24h (a day at most)"
    )
    assert found[2].startswith("agent.yaml:4:14: retry_max: 0s is out of range: write 1s to 1h")


def test_values_out_of_range_say_the_range() -> None:
    found = problems("""
        relay:
          driver: modbus
          url: /dev/ttyUSB0
          slave: 0
          line_ending: ""
    """)
    assert [p.split(": ", 1)[0] for p in found] == ["agent.yaml:4:10", "agent.yaml:5:16"]
    assert "write the line ending the board uses" in found[1]


def test_non_ascii_commands_are_refused() -> None:
    [problem] = problems("""
        relay:
          driver: ascii
          url: /dev/ttyUSB0
          on_command: "BẬT"
    """)
    assert "only ASCII characters" in problem


def test_driver_none_keeps_the_rest_for_later() -> None:
    """A technician disables the relay without deleting its settings."""
    result = load("""
        relay:
          driver: none
          url: /dev/ttyUSB0
          channel: 2
    """)
    assert isinstance(result, AgentSection)
    assert result.relay.driver == "none"
