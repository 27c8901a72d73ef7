"""The MQTT edge: a small Link interface and its paho-mqtt 2.x implementation.

This is the only module in Loa that imports paho. Everything else sees `Link`:
subscribe a handler to a topic filter, publish bytes, learn about (re)connections.
`MqttLink.last_refusal` tells why the broker refused the last login, if it did.
Subscriptions are remembered and renewed on every reconnect. The protocol needs
nothing beyond MQTT 3.1.1 with QoS 0/1, so it runs on amqtt, mosquitto, EMQX,
HiveMQ and VerneMQ alike.

A link runs its own network thread (paho's `loop_start`), or, in a process that holds
many connections (a simulated fleet), shares one `NetworkLoop` with the others: one
thread and one epoll selector for all of them instead of a thread and a wake-up socket
pair each.
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
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
ConnectionListener = Callable[[bool], None]


@dataclass(frozen=True)
class BrokerAddress:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None

    @classmethod
    def from_url(cls, url: str, ca_file: str | None = None) -> BrokerAddress:
        """Parse mqtt://[user[:password]@]host[:port] or mqtts://..."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(
                f"broker URL {url!r}: scheme must be mqtt:// or mqtts://, e.g. mqtt://127.0.0.1:1883"
            )
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} has no host, e.g. mqtt://127.0.0.1:1883")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError(f"broker URL {url!r}: the port is not a number") from None
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            ca_file=ca_file,
        )

    def url(self) -> str:
        """The address without the password, for logs."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


@dataclass(frozen=True)
class Refusal:
    """Why the broker refused a CONNECT, from its CONNACK as paho reports it.

    paho gives MQTT 3.1.1 return codes the MQTT 5 reason code of the same meaning, so
    code is that number (134, not 4, for a bad user name or password)."""

    code: int
    reason: str  # paho's name of the code, e.g. "Not authorized"

    BAD_USERNAME_OR_PASSWORD = 134
    NOT_AUTHORIZED = 135

    @property
    def login(self) -> bool:
        """Refused for who connects: a wrong user name or password, or a user (or an
        anonymous client) the broker does not let in."""
        return self.code in (self.BAD_USERNAME_OR_PASSWORD, self.NOT_AUTHORIZED)


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class Link(Protocol):
    """What Loa needs from an MQTT connection."""

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None: ...
    def unsubscribe(self, topic_filter: str) -> None: ...
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None: ...
    def add_connection_listener(self, listener: ConnectionListener) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def wait_connected(self, timeout: float) -> bool: ...
    @property
    def connected(self) -> bool: ...


PUBLISH_TYPE = 0x30
MAX_LENGTH_BYTES = 4  # MQTT 3.1.1 2.2.3: the remaining length takes 1 to 4 bytes


class _ReadAheadClient(paho.Client):
    """A paho client that frames what it receives itself, on plain TCP.

    paho reads a packet a piece at a time (its type byte, each byte of its length, then
    the rest: a recv() each), then copies a PUBLISH's payload three more times while
    taking it apart, and builds a message object with its own lock for each. Here
    `loop_read` reads what the socket holds into one buffer kept for the connection
    and handles every whole packet in it before returning:
    - a PUBLISH of QoS 0 or 1 (all Loa sends) goes straight to `on_topic_payload`
      (topic, payload: the payload copied once out of the buffer), then its PUBACK is
      queued as paho would queue it;
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
            if command & 0xF0 == PUBLISH_TYPE and command & 0x06 != 0x04:
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


class MqttLink:
    """Link over paho-mqtt 2.x, MQTT 3.1.1, with automatic reconnect."""

    def __init__(
        self,
        broker: BrokerAddress,
        client_id: str,
        *,
        will: Will | None = None,
        clean_session: bool = True,
        keepalive: int = 30,
        max_inflight: int = 200,
        loop: NetworkLoop | None = None,
    ) -> None:
        """loop: run on this shared network thread instead of a thread of its own
        (plain TCP only)."""
        if loop is not None and broker.tls:
            raise ValueError("a shared NetworkLoop runs plain TCP links only; use mqtt://")
        self.broker = broker
        self.client_id = client_id
        self._loop = loop
        self._subs: dict[str, tuple[Handler, int]] = {}
        self._wildcards: dict[str, tuple[str, ...]] = {}  # filters with + or #, split
        self._listeners: list[ConnectionListener] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._refusal: Refusal | None = None
        self._stopping = False
        client = _ReadAheadClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set(ca_certs=broker.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        if will:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_topic_payload = self._dispatch
        self._keepalive = keepalive
        self._client = client

    # --- Link ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def last_refusal(self) -> Refusal | None:
        """Why the broker refused this link's last CONNECT since start(); None before any
        answer and once a CONNECT is accepted. The link keeps retrying after a refusal."""
        return self._refusal

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        with self._lock:
            self._subs[topic_filter] = (handler, qos)
            if "+" in topic_filter or "#" in topic_filter:
                self._wildcards[topic_filter] = tuple(topic_filter.split("/"))
        if self.connected:
            self._client.subscribe(topic_filter, qos)
            if self._loop is not None:
                self._loop.want_write(self._client)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            known = self._subs.pop(topic_filter, None)
            self._wildcards.pop(topic_filter, None)
        if known and self.connected:
            self._client.unsubscribe(topic_filter)
            if self._loop is not None:
                self._loop.want_write(self._client)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        # While disconnected paho keeps QoS 1 messages and sends them after reconnecting;
        # durability across a restart is the outbox's job, not this one's.
        self._client.publish(topic, payload, qos=qos, retain=retain)
        if self._loop is not None:
            self._loop.want_write(self._client)

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._stopping = False
        self._refusal = None
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=self._keepalive)
        if self._loop is not None:
            self._loop.add(self._client, lambda: self._stopping)
            return
        self._client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        if self._loop is not None:
            self._loop.remove(self._client, disconnect=True)
            self._connected.clear()
            return
        try:
            self._client.disconnect()
        finally:
            # paho's loop_stop() can race its network thread clearing its own handle and
            # raise AttributeError; the thread has ended either way.
            with contextlib.suppress(AttributeError):
                self._client.loop_stop()
            self._connected.clear()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_published(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 30) -> bool:
        """Publish and wait for the broker's acknowledgement (for tools and benchmarks)."""
        info = self._client.publish(topic, payload, qos=qos)
        if self._loop is not None:
            self._loop.want_write(self._client)
        info.wait_for_publish(timeout)
        return info.is_published()

    # --- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(
        self, client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            self._refusal = Refusal(int(reason.value), reason.getName())
            log.warning(
                "broker %s refused connection for %s: %s; retrying",
                self.broker.url(), self.client_id, reason,
            )
            return
        self._refusal = None
        with self._lock:
            subs = list(self._subs.items())
        if subs:
            client.subscribe([(flt, qos) for flt, (_h, qos) in subs])
        self._connected.set()
        log.debug("connected to %s as %s", self.broker.url(), self.client_id)
        self._notify(True)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if not self._stopping and was:
            log.warning(
                "lost connection to broker %s (%s); reconnecting", self.broker.url(), reason
            )
        if was:
            self._notify(False)

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        self._dispatch(msg.topic, bytes(msg.payload))

    def _dispatch(self, topic: str, payload: bytes) -> None:
        """A message to the handlers of every filter its topic matches."""
        with self._lock:
            exact = self._subs.get(topic)
            handlers = [exact[0]] if exact else []
            if self._wildcards:
                levels = topic.split("/")
                handlers.extend(
                    self._subs[flt][0] for flt, parts in self._wildcards.items()
                    if _filter_matches(parts, levels)
                )
        for handler in handlers:
            try:
                handler(topic, payload)
            except Exception:
                log.exception("handler for %s failed; message dropped", topic)

    def _notify(self, up: bool) -> None:
        for listener in self._listeners:
            try:
                listener(up)
            except Exception:
                log.exception("connection listener failed")


def _filter_matches(levels: tuple[str, ...], topic: list[str]) -> bool:
    """Whether a topic (split at /) matches a filter (split at /) with + and # (MQTT 3.1.1
    4.7; no $ topics here). paho's own matcher builds a tree for every call."""
    for i, level in enumerate(levels):
        if level == "#":
            return True
        if i >= len(topic) or (level != "+" and level != topic[i]):
            return False
    return len(topic) == len(levels)


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
        """Take over a client on which connect_async() was called; connect it now."""
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
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
