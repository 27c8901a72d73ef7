"""How a link reads the wire, against a scripted broker on a real socket.

Two readers: paho's own, in the link an agent and the controller run (`MqttLink`), and
the read-ahead of a simulated fleet's link (`FleetLink`, scripts/sim_network.py), which
frames packets itself and must behave as paho does. The scripted broker
(tests/scripted_broker.py) decides the bytes and the splits: packets cut at every byte,
several in one write, a length that never ends, a topic that is not UTF-8, a QoS that
does not exist, and packets the read-ahead hands to paho (a PINGRESP, a packet larger
than its buffer).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from conftest import wait_until
from scripted_broker import PINGRESP, ScriptedBroker, publish_packet
from sim_network import FleetLink, NetworkLoop
from test_mqtt_link import Inbox

from protocol.mqtt import MqttLink


@pytest.fixture(params=["paho", "read-ahead"])
def rig(request: pytest.FixtureRequest) -> Iterator[tuple[ScriptedBroker, MqttLink, Inbox]]:
    """A scripted broker and a connected link subscribed to t/#: the production link on
    its own thread, then a simulated fleet's link on a shared loop."""
    with ExitStack() as stack:
        broker = ScriptedBroker()
        stack.callback(broker.stop)
        link: MqttLink
        if request.param == "read-ahead":
            loop = NetworkLoop()
            loop.start()
            stack.callback(loop.stop)
            link = FleetLink(broker.address, "reader-test", loop=loop)
        else:
            link = MqttLink(broker.address, "reader-test")
        inbox = Inbox()
        link.subscribe("t/#", inbox)
        stack.callback(link.stop)
        link.start()
        assert link.wait_connected(10), "the link did not connect to the scripted broker"
        yield broker, link, inbox


def test_packets_cut_anywhere_come_out_whole_and_acknowledged(
    rig: tuple[ScriptedBroker, MqttLink, Inbox],
) -> None:
    broker, _link, inbox = rig
    sizes = [0, 1, 126, 127, 128, 16_383, 16_384, 65_580, 200_000, 262_000, 300_000, 3]
    messages = [
        (f"t/{i}".encode(), bytes([i % 251]) * sizes[i % len(sizes)]) for i in range(36)
    ]
    stream = bytearray()
    for i, (topic, payload) in enumerate(messages):
        stream += publish_packet(topic, payload, qos=i % 2, mid=1000 + i)
        if i % 5 == 0:
            stream += PINGRESP  # a packet paho handles, between two PUBLISHes
    rng = random.Random(4)
    pieces = [rng.choice([1, 1, 2, 3, 5, 700, 40_000, 300_000]) for _ in range(400)]
    broker.send(0, bytes(stream), pieces)
    wait_until(lambda: len(inbox.messages) == len(messages), 20, "every message")
    assert inbox.messages == [(t.decode(), p) for t, p in messages]
    qos1 = [1000 + i for i in range(len(messages)) if i % 2]
    wait_until(lambda: broker.acked(0) == qos1, 10, "a PUBACK for each QoS 1 message, in order")


def test_a_length_that_never_ends_drops_the_connection(
    rig: tuple[ScriptedBroker, MqttLink, Inbox],
) -> None:
    """MQTT 3.1.1 2.2.3: the remaining length has at most 4 bytes. A fifth is a protocol
    error; the link closes the connection and connects again."""
    broker, link, inbox = rig
    broker.send(0, publish_packet(b"t/ok", b"before"))
    wait_until(lambda: len(inbox.messages) == 1, 10, "the message before")
    broker.send(0, bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]) + b"x" * 10)
    wait_until(lambda: broker.closed[0], 10, "the link to close the connection")
    wait_until(lambda: len(broker.connections) >= 2 and link.connected, 20, "a new connection")
    assert inbox.messages == [("t/ok", b"before")]


def test_a_topic_that_is_not_utf8_is_dropped_and_still_acknowledged(
    rig: tuple[ScriptedBroker, MqttLink, Inbox],
) -> None:
    broker, link, inbox = rig
    broker.send(
        0,
        publish_packet(b"t/\xff\xfe", b"bad", qos=1, mid=7)
        + publish_packet(b"t/good", b"fine", qos=1, mid=8),
    )
    wait_until(lambda: len(inbox.messages) == 1, 10, "the good message")
    assert inbox.messages == [("t/good", b"fine")]
    wait_until(lambda: broker.acked(0) == [7, 8], 10, "both PUBACKs")
    assert link.connected
    assert not broker.closed[0]


def test_a_publish_too_short_for_its_topic_drops_the_connection(
    rig: tuple[ScriptedBroker, MqttLink, Inbox],
) -> None:
    """And the link connects again: with paho 2.1 this packet ended paho's network thread
    (a struct.error), leaving a link that said it was connected and heard nothing."""
    broker, link, inbox = rig
    # The topic length says 200 bytes; the packet holds 3.
    broker.send(0, bytes([0x32, 0x05, 0x00, 0xC8]) + b"t/x")
    wait_until(lambda: broker.closed[0], 10, "the link to close the connection")
    assert len(inbox.messages) == 0
    wait_until(lambda: broker.subscribed(1) and link.connected, 20, "a new connection")
    broker.send(1, publish_packet(b"t/after", b"heard", qos=1, mid=5))
    wait_until(lambda: inbox.messages == [("t/after", b"heard")], 10, "a message after")


@pytest.mark.parametrize("split", [None, [1, 1, 1]], ids=["whole", "cut"])
def test_a_message_before_and_after_a_large_one(
    rig: tuple[ScriptedBroker, MqttLink, Inbox], split: list[int] | None
) -> None:
    """A packet larger than the buffer is read by paho; the reader takes over again for
    the packets after it, even when they came in the same write."""
    broker, _link, inbox = rig
    big = bytes(range(256)) * 4000  # 1,024,000 bytes
    stream = (
        publish_packet(b"t/a", b"first", qos=1, mid=1)
        + publish_packet(b"t/big", big, qos=1, mid=2)
        + publish_packet(b"t/b", b"last", qos=1, mid=3)
    )
    broker.send(0, stream, split)
    wait_until(lambda: len(inbox.messages) == 3, 20, "three messages")
    assert inbox.messages == [("t/a", b"first"), ("t/big", big), ("t/b", b"last")]
    wait_until(lambda: broker.acked(0) == [1, 2, 3], 10, "three PUBACKs")


def test_a_publish_with_qos_3_is_refused_and_the_connection_closed(
    rig: tuple[ScriptedBroker, MqttLink, Inbox],
) -> None:
    """MQTT 3.1.1 3.3.1.2: both QoS bits set is a malformed packet. paho closes the
    connection, delivers nothing and acknowledges nothing; so must every link."""
    broker, link, inbox = rig
    broker.send(0, publish_packet(b"t/ok", b"before", qos=1, mid=1))
    wait_until(lambda: broker.acked(0) == [1], 10, "the message before, acknowledged")
    broker.send(0, publish_packet(b"t/q3", b"no such QoS", qos=3, mid=2))
    wait_until(lambda: broker.closed[0], 10, "the link to close the connection")
    assert inbox.messages == [("t/ok", b"before")]
    assert broker.acked(0) == [1]
    wait_until(lambda: len(broker.connections) >= 2 and link.connected, 20, "a new connection")
