"""Many simulated agents' MQTT connections in one process: the simulator's network side.

Only the simulated fleets use this (scripts/bench_fleet.py, and the tests that run agents
as a fleet does); a pole or a controller never imports it, and it is not in the packages
Loa installs. It packs a few hundred links into one process by two means:

- `NetworkLoop`: one thread and one epoll selector doing the network work of many paho
  clients, through paho's external-loop API (`loop_read`, `loop_write`, `loop_misc`,
  the socket callbacks), instead of a thread and a wake-up socket pair per client;
- `ReadAheadClient`: a paho client that frames received packets itself, reading what a
  socket holds at once into one buffer kept for the connection, and hands a PUBLISH to
  the link with its payload copied once (paho reads a packet a piece at a time and copies
  a payload several times). It reaches into paho's private names, so this module is
  pinned to the paho versions it was tested with (TESTED_PAHO) and refuses to load with
  any other.

`FleetLink` is `protocol.mqtt.MqttLink` on a shared `NetworkLoop` with a `ReadAheadClient`:
the same Link, the same callbacks, another network thread.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket

from protocol.mqtt import BrokerAddress, Handler, MqttLink, Will

log = logging.getLogger(__name__)

# The paho releases ReadAheadClient was tested with (tests/test_mqtt_wire.py): it uses
# paho's record of the packet being read (_in_packet), its packet handler and reader,
# its PUBACK sender, its error handling and socket. Another release may change any of it
# (2.1.0 has no paho.mqtt.exception and parses packets in the client itself).
TESTED_PAHO = ("2.2.0",)


class UntestedPaho(ImportError):
    """The installed paho-mqtt is not one the read-ahead client was tested with."""


def check_paho_version(version: str) -> None:
    if version not in TESTED_PAHO:
        raise UntestedPaho(
            f"scripts/sim_network.py uses private parts of paho-mqtt and was tested with "
            f"paho-mqtt {' and '.join(TESTED_PAHO)} only; this is paho-mqtt {version}. "
            f"Install a tested one (pip install 'paho-mqtt=={TESTED_PAHO[-1]}'), or run "
            "tests/test_mqtt_wire.py with this one and add it to TESTED_PAHO if they pass"
        )


check_paho_version(paho_version)

PUBLISH_TYPE = 0x30
MAX_LENGTH_BYTES = 4  # MQTT 3.1.1 2.2.3: the remaining length takes 1 to 4 bytes
QOS_BITS = 0x06  # of a PUBLISH's first byte (3.3.1.2)


class ReadAheadClient(paho.Client):
    """A paho client that frames what it receives itself, on plain TCP.

    paho reads a packet a piece at a time (its type byte, each byte of its length, then
    the rest: a recv() each), then copies a PUBLISH's payload three more times while
    taking it apart, and builds a message object with its own lock for each. Here
    `loop_read` reads what the socket holds into one buffer kept for the connection
    and handles every whole packet in it before returning:
    - a PUBLISH of QoS 0 or 1 (all Loa sends) goes straight to `on_topic_payload`
      (topic, payload: the payload copied once out of the buffer), then its PUBACK is
      queued as paho would queue it;
    - a PUBLISH with both QoS bits set (QoS 3, which MQTT 3.1.1 3.3.1.2 forbids) drops
      the connection, as paho does;
    - any other packet goes to paho's own handling, as if paho had read it.
    What is left, the start of a packet, stays for the next read. A packet too large for
    the buffer, and everything on TLS or MQTT 5, is read by paho as paho reads it.
    Packets that arrived together (a command and its audio) are thereby handled
    together: one step of the agent."""

    READ_SIZE = 256 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set by the owner; without it, messages go to paho's on_message as usual.
        self.on_topic_payload: Handler | None = None
        self._ahead = bytearray(self.READ_SIZE)  # moved within when a packet straddles
        self._ahead_view = memoryview(self._ahead)  # read into without a new buffer
        self._ahead_at = 0  # where the first packet not handled yet starts
        self._ahead_end = 0  # where what was read ends

    def _sock_close(self) -> None:
        self._ahead_at = self._ahead_end = 0
        super()._sock_close()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        sock = self._sock
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if (
            not isinstance(sock, socket.socket)
            or isinstance(sock, ssl.SSLSocket)
            or self._protocol == MQTTProtocolVersion.MQTTv5  # PUBLISH has properties there
        ):
            return super().loop_read(max_packets)
        if self._in_packet["command"]:  # paho is reading a packet too large for the buffer
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        try:
            got = sock.recv_into(self._ahead_view[self._ahead_end :])
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        except OSError as err:
            self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if got == 0:
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        self._ahead_end += got
        with self._msgtime_mutex:
            self._last_bytes_received = paho.time_func()
        rc = self._handle_read_ahead()
        if rc > 0:
            return self._loop_rc_handle(rc)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_read_ahead(self) -> MQTTErrorCode:
        """Handle every whole packet in the buffer; keep the start of the next one."""
        view = self._ahead_view
        at, end = self._ahead_at, self._ahead_end
        while True:
            needed = 2  # the smallest packet: a type byte and a zero length
            if end - at < needed:
                break
            # The fixed header: type and flags, then the remaining length (2.2.3).
            length, multiplier, pos = 0, 1, at + 1
            while True:
                if pos >= end:
                    length = -1  # the length itself is not all here yet
                    break
                byte = view[pos]
                pos += 1
                length += (byte & 127) * multiplier
                if not byte & 128:
                    break
                multiplier *= 128
                if pos - at > MAX_LENGTH_BYTES:
                    self._ahead_at = self._ahead_end = 0
                    return MQTTErrorCode.MQTT_ERR_PROTOCOL
            if length < 0:
                needed = pos - at + 1
                break
            needed = pos - at + length
            if needed > self.READ_SIZE:
                return self._hand_to_paho(at, pos, end, length)
            if end - at < needed:
                break
            command = view[at]
            at += needed
            self._ahead_at = at  # before handling: a handler may close the connection
            if command & 0xF0 == PUBLISH_TYPE and command & QOS_BITS == QOS_BITS:
                self._easy_log(paho.MQTT_LOG_DEBUG, "Received PUBLISH with QoS 3")
                self._ahead_at = self._ahead_end = 0
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
            if command & 0xF0 == PUBLISH_TYPE and command & QOS_BITS != 0x04:
                rc = self._handle_publish_view(command, view[pos:at])
            else:
                rc = self._handle_as_paho(command, length, view[pos:at])
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._ahead_end == 0:
                return rc
        if at == end:
            self._ahead_at = self._ahead_end = 0
        elif at + needed > self.READ_SIZE:  # the rest of this packet would not fit after it
            self._ahead[: end - at] = self._ahead[at:end]
            self._ahead_at, self._ahead_end = 0, end - at
        else:
            self._ahead_at = at
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish_view(self, command: int, body: memoryview) -> MQTTErrorCode:
        """A PUBLISH of QoS 0 or 1 (MQTT 3.1.1 3.3): to on_topic_payload, then its PUBACK."""
        qos = (command & 0x06) >> 1
        topic_end = 2 + int.from_bytes(body[:2], "big")
        payload_at = topic_end + (2 if qos else 0)
        if len(body) < 2 or topic_end == 2 or payload_at > len(body):
            self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed PUBLISH")
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        handler = self.on_topic_payload
        if handler is None:
            return self._handle_as_paho(command, len(body), body)
        try:
            topic = str(body[2:topic_end], "utf-8")
        except UnicodeDecodeError:
            log.warning("dropped a message whose topic is not UTF-8: %r", bytes(body[2:topic_end]))
        else:
            handler(topic, bytes(body[payload_at:]))
        if qos and not self._manual_ack:
            return self._send_puback((body[topic_end] << 8) | body[topic_end + 1])
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_as_paho(self, command: int, length: int, body: memoryview) -> MQTTErrorCode:
        """Any other packet: paho's own handling, as if paho had read it."""
        self._in_packet = _in_packet(command, length, bytearray(body))
        try:
            return self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            self._in_packet = _in_packet(0, 0, bytearray())

    def _hand_to_paho(self, at: int, body_at: int, end: int, length: int) -> MQTTErrorCode:
        """A packet larger than the buffer: paho reads the rest of it from the socket."""
        body = bytearray(self._ahead_view[body_at:end])
        self._in_packet = _in_packet(self._ahead_view[at], length, body)
        self._in_packet["to_process"] = length - (end - body_at)
        self._ahead_at = self._ahead_end = 0
        return self._packet_read()


def _in_packet(command: int, length: int, body: bytearray) -> Any:
    """paho's record of the packet it is reading: command and whole length known."""
    return {
        "command": command,
        "have_remaining": 1 if command else 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": length,
        "packet": body,
        "to_process": 0,
        "pos": 0,
    }


class NetworkLoop:
    """One thread doing the network work of many paho clients (paho's external loop).

    For a process that holds hundreds of connections, such as a simulated fleet: a
    thread per client (paho's `loop_start`) costs a thread switch per message and a
    select() that cannot see descriptors above 1023. Here one epoll selector watches
    every client's socket; the thread reads what arrives (handlers run on it, as they
    would on a link's own thread), writes what is queued, keeps each connection alive
    and reconnects lost ones with the same backoff as a link of its own (1 s doubling to
    30 s). Connecting is a blocking TCP connect on this thread, so it suits a broker on
    a fast network; plain TCP only.

    Publishing from another thread queues the packet in paho and asks this thread to
    write it (`want_write`): only this thread touches the sockets.

    after_reads: called on this thread once what arrived has been read (and whenever
    `wake` is called): a process can run its handlers' queued work there instead of
    handing it to other threads."""

    MISC_EVERY_S = 1.0
    RECONNECT_MIN_S = 1.0
    RECONNECT_MAX_S = 30.0

    def __init__(
        self, name: str = "mqtt-loop", after_reads: Callable[[], None] | None = None
    ) -> None:
        self._name = name
        self._after_reads = after_reads
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        # client -> whether its owner is stopping (then it is not reconnected)
        self._clients: dict[paho.Client, Callable[[], bool]] = {}
        self._writing: set[paho.Client] = set()  # asked to write, by any thread
        self._connects: list[tuple[float, int, paho.Client]] = []  # heap: (due, n, client)
        self._delay: dict[paho.Client, float] = {}  # the next reconnect backoff
        self._removing: dict[paho.Client, threading.Event] = {}
        self._masks: dict[int, int] = {}  # socket fd -> events registered
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._woken = False
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._count = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- any thread ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect every client still here, then end the thread."""
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            self.remove(client, disconnect=True, timeout=timeout / max(len(clients), 1))
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def add(self, client: paho.Client, stopping: Callable[[], bool]) -> None:
        """Take over a client on which connect_async() was called; connect it now. Socket
        callbacks the client already had are called before the loop's own."""
        client.on_socket_open = _chained(client.on_socket_open, self._on_socket_open)
        client.on_socket_close = _chained(client.on_socket_close, self._on_socket_close)
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = None
        with self._lock:
            self._clients[client] = stopping
            self._delay[client] = self.RECONNECT_MIN_S
            self._schedule_connect(client, 0.0)
        self._wake()

    def remove(
        self, client: paho.Client, *, disconnect: bool = False, timeout: float = 2.0
    ) -> None:
        """Forget a client; disconnect=True sends DISCONNECT first (waits up to timeout)."""
        done = threading.Event()
        with self._lock:
            if client not in self._clients:
                return
            self._removing[client] = done
        if disconnect and client.socket() is not None:
            client.disconnect()
        self._wake()
        if threading.current_thread() is not self._thread:
            done.wait(timeout)

    def wake(self) -> None:
        """Run after_reads soon (from any thread)."""
        if threading.current_thread() is not self._thread:
            self._wake()

    def want_write(self, client: paho.Client) -> None:
        """The client has queued packets: write them on the loop's thread."""
        with self._lock:
            self._writing.add(client)
        if threading.current_thread() is not self._thread:
            self._wake()

    # --- paho's socket callbacks (the loop's thread: connect and close happen there) ----

    def _on_socket_open(self, client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._masks[sock.fileno()] = selectors.EVENT_READ
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _on_socket_close(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._masks.pop(sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)

    def _on_register_write(self, client: paho.Client, _userdata: Any, _sock: Any) -> None:
        self.want_write(client)

    # --- the loop's thread ----------------------------------------------------------------

    def _wake(self) -> None:
        if self._woken:
            return
        self._woken = True
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _schedule_connect(self, client: paho.Client, delay: float) -> None:
        self._count += 1
        heapq.heappush(self._connects, (time.monotonic() + delay, self._count, client))

    def _sync_write(self, client: paho.Client) -> None:
        """Watch the client's socket for writing exactly while paho has packets queued."""
        sock = client.socket()
        if sock is None:
            return
        fd = sock.fileno()
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.want_write() else 0)
        if fd in self._masks and self._masks[fd] != mask:
            self._masks[fd] = mask
            self._selector.modify(sock, mask, client)

    def _run(self) -> None:
        next_misc = time.monotonic() + self.MISC_EVERY_S
        while not self._stopping:
            now = time.monotonic()
            timeout = next_misc - now
            with self._lock:
                if self._connects:
                    timeout = min(timeout, self._connects[0][0] - now)
            try:
                ready = self._selector.select(max(timeout, 0.0))
            except OSError:  # a socket closed under us: look again
                ready = []
            for key, mask in ready:
                client = key.data
                if client is None:
                    # Drain, then clear: a wake-up that comes in between finds the flag
                    # still set and sends nothing, and what it asked for is looked at
                    # below (clearing first could drain its byte and leave the flag set).
                    with contextlib.suppress(BlockingIOError, OSError):
                        self._wake_r.recv(4096)
                    self._woken = False
                    continue
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                if mask & selectors.EVENT_WRITE and client.socket() is key.fileobj:
                    client.loop_write()
                if client not in self._writing:  # else written and looked at just below
                    self._sync_write(client)
            self._after_events()
            if self._after_reads is not None:
                try:
                    self._after_reads()
                except Exception:
                    log.exception("the network loop's after_reads failed; carrying on")
                self._after_events()  # what that work published
            if time.monotonic() >= next_misc:
                next_misc = time.monotonic() + self.MISC_EVERY_S
                self._misc()

    def _after_events(self) -> None:
        with self._lock:
            writing, self._writing = self._writing, set()
            removing = dict(self._removing)
            due: list[paho.Client] = []
            now = time.monotonic()
            while self._connects and self._connects[0][0] <= now:
                due.append(heapq.heappop(self._connects)[2])
        for client in writing:
            # Write at once: the socket almost always has room, and watching it for
            # writing first costs two epoll changes and a turn of the loop per packet.
            # What does not fit is written when the socket says it has room.
            if client.socket() is not None and client.want_write():
                client.loop_write()
            self._sync_write(client)
        for client, done in removing.items():
            if client.socket() is None or not client.want_write():
                self._forget(client)
                done.set()
        for client in due:
            self._connect(client)

    def _forget(self, client: paho.Client) -> None:
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                client.loop_write()
            self._on_socket_close(client, None, sock)
            with contextlib.suppress(OSError):
                sock.close()
        with self._lock:
            self._clients.pop(client, None)
            self._removing.pop(client, None)
            self._delay.pop(client, None)

    def _connect(self, client: paho.Client) -> None:
        with self._lock:
            stopping = self._clients.get(client)
            if stopping is None or stopping() or client in self._removing:
                return
        try:
            client.reconnect()
        except OSError as exc:
            delay = self._retry_later(client)
            log.debug("connecting %s failed (%s); again in %.0f s", client, exc, delay)
            return
        with self._lock:
            self._delay[client] = self.RECONNECT_MIN_S
        self._sync_write(client)

    def _retry_later(self, client: paho.Client) -> float:
        """Schedule the next connect after the client's backoff, doubling it; the delay."""
        with self._lock:
            delay = self._delay.get(client, self.RECONNECT_MIN_S)
            self._delay[client] = min(delay * 2, self.RECONNECT_MAX_S)
            self._schedule_connect(client, delay)
        return delay

    def _misc(self) -> None:
        """Keepalive pings, and reconnecting what was lost."""
        with self._lock:
            clients = list(self._clients.items())
            pending = {c for _due, _n, c in self._connects}
        for client, stopping in clients:
            if client.socket() is not None:
                client.loop_misc()
                self._sync_write(client)
            elif not stopping() and client not in pending and client not in self._removing:
                self._retry_later(client)


SocketCallback = Callable[[paho.Client, Any, Any], None]


def _chained(first: SocketCallback | None, then: SocketCallback) -> SocketCallback:
    if first is None:
        return then

    def both(client: paho.Client, userdata: Any, sock: Any) -> None:
        first(client, userdata, sock)
        then(client, userdata, sock)

    return both


class FleetLink(MqttLink):
    """An `MqttLink` on a shared `NetworkLoop`, reading with a `ReadAheadClient`: the
    link of a simulated agent. Plain TCP only (the loop connects with a blocking connect
    on its thread, and the read-ahead leaves TLS to paho)."""

    def __init__(
        self,
        broker: BrokerAddress,
        client_id: str,
        *,
        loop: NetworkLoop,
        will: Will | None = None,
        clean_session: bool = True,
        keepalive: int = 30,
        max_inflight: int = 200,
    ) -> None:
        if broker.tls:
            raise ValueError("a simulated fleet's NetworkLoop runs plain TCP links only; use mqtt://")
        self._loop = loop
        super().__init__(
            broker, client_id, will=will, clean_session=clean_session, keepalive=keepalive,
            max_inflight=max_inflight,
        )  # fmt: skip

    def _network_client(self, **options: Any) -> paho.Client:
        client = ReadAheadClient(CallbackAPIVersion.VERSION2, **options)
        client.on_topic_payload = self._dispatch
        return client

    def _network_start(self) -> None:
        self._loop.add(self._client, lambda: self._stopping)

    def _network_stop(self) -> None:
        self._loop.remove(self._client, disconnect=True)

    def _network_queued(self) -> None:
        self._loop.want_write(self._client)
