"""A scripted MQTT broker on a real socket, for tests of how a link reads the wire.

A real broker sends well-formed packets split wherever TCP splits them. This one sends
what a test gives it, split where the test says: packets cut at every byte, several in
one write, malformed ones.
"""

from __future__ import annotations

import socket
import threading

from protocol.mqtt import BrokerAddress

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

    def subscribed(self, index: int) -> bool:
        """Whether connection index has sent a SUBSCRIBE (a link does, once connected)."""
        with self._lock:
            return len(self.received) > index and any(
                t == 0x82 for t, _b in self.received[index]
            )

    def acked(self, index: int) -> list[int]:
        """The packet ids of the PUBACKs connection index sent."""
        with self._lock:
            return [int.from_bytes(b, "big") for t, b in self.received[index] if t == 0x40]

    def stop(self) -> None:
        self._stopping = True
        self._server.close()
        for conn in self.connections:
            conn.close()
