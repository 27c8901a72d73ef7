"""The simulator's network side (scripts/sim_network.py) on its own: what only a simulated
fleet's links do. How its links read the wire is in tests/test_mqtt_wire.py, and the
Link behaviour they share with the production link in tests/test_mqtt_link.py."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import MosquittoBroker, wait_until
from sim_network import TESTED_PAHO, FleetLink, NetworkLoop, UntestedPaho, check_paho_version
from test_mqtt_link import CONNECT_TIMEOUT, Inbox, publish_until

from protocol.mqtt import BrokerAddress, MqttLink

ROOT = Path(__file__).resolve().parent.parent


def test_acknowledging_messages_on_a_shared_loop_changes_nothing_the_selector_watches(
    mosquitto_broker: MosquittoBroker,
) -> None:
    """Each QoS 1 message a link takes queues a PUBACK, which the loop writes once it has
    read every socket; the socket is not watched for writing in between (two epoll
    changes for each read, when the PUBACK is written at once anyway)."""
    loop = NetworkLoop()
    loop.start()
    changes: list[int] = []
    watch = loop._selector.modify

    def counted(fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        changes.append(events)
        return watch(fileobj, events, data)

    loop._selector.modify = counted  # type: ignore[method-assign]  # a spy on the real one
    sub = FleetLink(mosquitto_broker.address, "acks-sub", loop=loop)
    pub = MqttLink(mosquitto_broker.address, "acks-pub")
    inbox = Inbox()
    sub.subscribe("t/acks", inbox)
    try:
        for link in (sub, pub):
            link.start()
            assert link.wait_connected(CONNECT_TIMEOUT)
        publish_until(pub, "t/acks", b"probe", lambda: inbox.payloads("t/acks"))
        before = len(changes)
        for i in range(40):
            assert pub.wait_published("t/acks", i.to_bytes(2, "big"), qos=1, timeout=10)
        wait_until(lambda: len(inbox.payloads("t/acks")) >= 41, 10, "40 messages")
        assert changes[before:] == []
    finally:
        sub.stop()
        pub.stop()
        loop.stop()


def test_the_loop_keeps_the_socket_callbacks_a_client_already_had(
    mosquitto_broker: MosquittoBroker,
) -> None:
    loop = NetworkLoop()
    loop.start()
    link = FleetLink(mosquitto_broker.address, "callbacks", loop=loop)
    opened: list[int] = []
    client = link._client
    client.on_socket_open = lambda _c, _u, sock: opened.append(sock.fileno())
    try:
        link.start()
        assert link.wait_connected(CONNECT_TIMEOUT)
        assert len(opened) == 1
        sock = client.socket()
        assert sock is not None
        assert opened == [sock.fileno()]
    finally:
        link.stop()
        loop.stop()


def test_a_fleet_link_refuses_tls() -> None:
    loop = NetworkLoop()
    with pytest.raises(ValueError, match="plain TCP links only"):
        FleetLink(BrokerAddress("localhost", 8883, tls=True), "tls", loop=loop)


def test_a_paho_release_the_read_ahead_was_not_tested_with_is_refused_by_name() -> None:
    for version in TESTED_PAHO:
        check_paho_version(version)
    with pytest.raises(UntestedPaho) as refused:
        check_paho_version("2.3.0")
    message = str(refused.value)
    assert "paho-mqtt 2.3.0" in message
    for version in TESTED_PAHO:
        assert version in message


def test_importing_the_simulator_with_an_untested_paho_fails_at_import() -> None:
    """The check runs when the module is imported, before anything uses paho's internals."""
    code = (
        "import paho.mqtt\n"
        "paho.mqtt.__version__ = '9.9.9'\n"
        "import sim_network\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'scripts'}{os.pathsep}{ROOT}"},
    )
    assert result.returncode == 1
    assert "UntestedPaho" in result.stderr
    assert "paho-mqtt 9.9.9" in result.stderr
    assert f"tested with paho-mqtt {' and '.join(TESTED_PAHO)} only" in result.stderr
