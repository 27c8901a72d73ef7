"""The link's own packet reader against a scripted broker on a real socket.

A real broker sends well-formed packets split wherever TCP splits them. Here a small
scripted broker decides the bytes and the splits: packets cut at every byte, several in
one write, a length that never ends, a topic that is not UTF-8, and packets the reader
hands to paho (a PINGRESP, a packet larger than its buffer).
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from conftest import wait_until
from test_mqtt_link import Inbox

from protocol.mqtt import BrokerAddress, MqttLink, NetworkLoop

CONNACK = bytes([0x20, 0x02, 0x00, 0x00])
PINGRESP = bytes([0xD0, 0x00])


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: bytes, payload: bytes, qos: int = 0, mid: int = 0) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    body += payload
    return bytes([0x30 | (qos << 1)]) + remaining_length(len(body)) + body


class ScriptedBroker:
    """Accepts MQTT connections, answers CONNECT with CONNACK, sends what a test gives it
    and records the packets each client sends (type byte, body)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = BrokerAddress("127.0.0.1", self._server.getsockname()[1])
        self._lock = threading.Lock()
        self.connections: list[socket.socket] = []
        self.received: list[list[tuple[int, bytes]]] = []
        self.closed: list[bool] = []
        self._stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                index = len(self.connections)
                self.connections.append(conn)
                self.received.append([])
                self.closed.append(False)
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                head = reader.read(1)
                if not head:
                    break
                length, multiplier = 0, 1
                while True:
                    byte = reader.read(1)[0]
                    length += (byte & 127) * multiplier
                    multiplier *= 128
                    if not byte & 128:
                        break
                body = reader.read(length)
                with self._lock:
                    self.received[index].append((head[0], body))
                if head[0] == 0x10:  # CONNECT
                    conn.sendall(CONNACK)
        except (OSError, IndexError):
            pass
        with self._lock:
            self.closed[index] = True

    def send(self, index: int, data: bytes, pieces: list[int] | None = None) -> None:
        """Send data to connection index, in pieces of these sizes (one write each)."""
        conn = self.connections[index]
        if pieces is None:
            conn.sendall(data)
            return
        at = 0
        for size in pieces:
            conn.sendall(data[at : at + size])
            at += size
        conn.sendall(data[at:])

    def acked(self, index: int) -> list[int]:
        """The packet ids of the PUBACKs connection index sent."""
        with self._lock:
            return [int.from_bytes(b, "big") for t, b in self.received[index] if t == 0x40]

    def stop(self) -> None:
        self._stopping = True
        self._server.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture(params=["own-thread", "shared-loop"])
def rig(request: pytest.FixtureRequest) -> Iterator[tuple[ScriptedBroker, MqttLink, Inbox]]:
    """A scripted broker and a connected link subscribed to t/# (on its own thread, then
    on a shared loop)."""
    with ExitStack() as stack:
        broker = ScriptedBroker()
        stack.callback(broker.stop)
        loop: NetworkLoop | None = None
        if request.param == "shared-loop":
            loop = NetworkLoop()
            loop.start()
            stack.callback(loop.stop)
        link = MqttLink(broker.address, "reader-test", loop=loop)
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
    broker, _link, inbox = rig
    # The topic length says 200 bytes; the packet holds 3.
    broker.send(0, bytes([0x32, 0x05, 0x00, 0xC8]) + b"t/x")
    wait_until(lambda: broker.closed[0], 10, "the link to close the connection")
    assert len(inbox.messages) == 0


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
