"""The MQTT edge: a small Link interface and its paho-mqtt 2.x implementation.

This is the only module in Loa that imports paho. Everything else sees `Link`:
subscribe a handler to a topic filter, publish bytes, learn about (re)connections.
Subscriptions are remembered and renewed on every reconnect. The protocol needs
nothing beyond MQTT 3.1.1 with QoS 0/1, so it runs on amqtt, mosquitto, EMQX,
HiveMQ and VerneMQ alike.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

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
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self._subs: dict[str, tuple[Handler, int]] = {}
        self._listeners: list[ConnectionListener] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._stopping = False
        client = paho.Client(
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
        self._keepalive = keepalive
        self._client = client

    # --- Link ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        with self._lock:
            self._subs[topic_filter] = (handler, qos)
        if self.connected:
            self._client.subscribe(topic_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            known = self._subs.pop(topic_filter, None)
        if known and self.connected:
            self._client.unsubscribe(topic_filter)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        # While disconnected paho keeps QoS 1 messages and sends them after reconnecting;
        # durability across a restart is the outbox's job, not this one's.
        self._client.publish(topic, payload, qos=qos, retain=retain)

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._stopping = False
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=self._keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        self._stopping = True
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
        info.wait_for_publish(timeout)
        return info.is_published()

    # --- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(
        self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning(
                "broker %s refused connection for %s: %s; retrying",
                self.broker.url(), self.client_id, reason,
            )
            return
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
        with self._lock:
            exact = self._subs.get(msg.topic)
            handlers = [exact[0]] if exact else []
            handlers.extend(
                h for flt, (h, _q) in self._subs.items()
                if ("+" in flt or "#" in flt) and paho.topic_matches_sub(flt, msg.topic)
            )
        for handler in handlers:
            try:
                handler(msg.topic, bytes(msg.payload))
            except Exception:
                log.exception("handler for %s failed; message dropped", msg.topic)

    def _notify(self, up: bool) -> None:
        for listener in self._listeners:
            try:
                listener(up)
            except Exception:
                log.exception("connection listener failed")
