"""The MQTT edge: a small Link interface and its paho-mqtt 2.x implementation.

This is the only module of the controller and the agent that imports paho. Everything
else sees `Link`: subscribe a handler to a topic filter, publish bytes, learn about
(re)connections. `MqttLink.last_refusal` tells why the broker refused the last login,
`MqttLink.last_failure` why the last connection could not be made (the TLS reason
when the handshake failed: unknown CA, wrong host name, expired certificate). Both are
logged as warnings, a repeat at most every few minutes. Subscriptions are remembered
and renewed on every reconnect. The protocol needs nothing beyond MQTT 3.1.1 with
QoS 0/1, so it runs on amqtt, mosquitto, EMQX, HiveMQ and VerneMQ alike.

The link uses paho as paho is meant to be used, through its public API only: its own
network thread (`loop_start`), paho's reading and acknowledging of every packet, TLS
through an `ssl.SSLContext` pinned to the CA given (`tls_set_context`). The few methods
whose names start with `_network` are where a simulated fleet's links, many to one
network thread, differ (scripts/sim_network.py); nothing here depends on them.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from protocol.l10n import _

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
            raise ValueError(_(
                "broker URL {url!r}: scheme must be mqtt:// or mqtts://, e.g. "
                "mqtt://127.0.0.1:1883", url=url,
            ))
        if not parts.hostname:
            raise ValueError(
                _("broker URL {url!r} has no host, e.g. mqtt://127.0.0.1:1883", url=url)
            )
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError(_("broker URL {url!r}: the port is not a number", url=url)) from None
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
    @property
    def session_present(self) -> bool:
        """Whether the broker still held this client's session at the last connection
        (CONNACK's flag): False after a broker restart that lost it, or at a first
        connection."""
        ...


@dataclass(frozen=True)
class ConnectFailure:
    """Why a connection to the broker could not be made, before the broker could answer.

    tls: the TCP connection was made and the TLS handshake failed (reason says why, as
    OpenSSL does: "certificate verify failed: unable to get local issuer certificate");
    else the TCP connection itself failed (name, route, port), which paho does not say."""

    reason: str
    hint: str
    tls: bool


# OpenSSL's verification errors (X509_V_ERR_*) that call for different advice.
_UNKNOWN_CA = frozenset({2, 18, 19, 20, 21})  # no issuer known here; self-signed
_OUT_OF_DATE = frozenset({9, 10})  # not yet valid; expired
_WRONG_HOST = frozenset({62, 64})  # host name mismatch; IP address mismatch
CA_SETTING = "broker_ca_file in the config, --ca-file on the command line"


def describe_tls_failure(exc: OSError, host: str, ca_setting: str = CA_SETTING) -> ConnectFailure:
    """What a failed TLS handshake with host means, and what to do about it; ca_setting
    names where the CA is given."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        reason = f"certificate verify failed: {exc.verify_message}"
        if code in _UNKNOWN_CA:
            hint = (
                "the broker's certificate is not signed by the CA this client trusts: give "
                f"the CA certificate that signed it ({ca_setting})"
            )
        elif code in _OUT_OF_DATE:
            hint = (
                "the broker's certificate is outside its validity dates: renew it on the "
                "broker, or set this machine's clock right (timedatectl)"
            )
        elif code in _WRONG_HOST:
            hint = (
                f"the broker's certificate does not name {host}: write the broker URL with a "
                "host name the certificate names, or give the broker a certificate naming it"
            )
        else:
            hint = f"check the broker's certificate and the CA given ({ca_setting})"
        return ConnectFailure(reason, hint, tls=True)
    not_tls = (
        "this port may not speak TLS: mqtts:// needs the broker's TLS listener (usually "
        "8883); write mqtt:// for a plain port"
    )
    if isinstance(exc, ssl.SSLError):
        return ConnectFailure(f"TLS handshake failed: {exc.reason or exc}", not_tls, tls=True)
    return ConnectFailure(
        f"the connection broke during the TLS handshake ({exc.strerror or exc})",
        f"{not_tls}; or the network dropped the connection",
        tls=True,
    )


class UnreadableCa(ValueError):
    """The CA certificate file given for the broker cannot be read (detail says why)."""

    def __init__(self, ca_file: str, detail: str) -> None:
        super().__init__(
            f"cannot read the broker's CA certificate {ca_file} ({detail}); give a PEM file "
            f"of the CA that signed the broker's certificate ({CA_SETTING})"
        )
        self.ca_file = ca_file
        self.detail = detail


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A client context that verifies the broker's certificate and host name: against
    ca_file only when given (the CA is pinned), else against the system's CAs. Raises
    UnreadableCa."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except OSError as exc:  # ssl.SSLError among them: not PEM, or no certificate in it
        detail = str(exc) if isinstance(exc, ssl.SSLError) or not exc.strerror else exc.strerror
        raise UnreadableCa(str(ca_file), detail) from None


class _Throttle:
    """A warning said at once, then again at most every every_s seconds while it stays
    the same; a different one is said at once."""

    def __init__(self, every_s: float, now: Callable[[], float] = time.monotonic) -> None:
        self._every_s = every_s
        self._now = now
        self._lock = threading.Lock()
        self._last: str | None = None
        self._said_at = 0.0
        self._held = 0

    def allow(self, what: str) -> int | None:
        """None: hold this one back; else how many were held back since the last said."""
        now = self._now()
        with self._lock:
            if what == self._last and now - self._said_at < self._every_s:
                self._held += 1
                return None
            held = self._held if what == self._last else 0
            self._last, self._said_at, self._held = what, now, 0
            return held

    def reset(self) -> None:
        with self._lock:
            self._last, self._held = None, 0


#: Topics whose handlers a link remembers (then it forgets them all and starts again).
MAX_ROUTES = 50_000


class MqttLink:
    """Link over paho-mqtt 2.x, MQTT 3.1.1, with automatic reconnect, on a network thread
    of its own."""

    # A failure that stays the same is logged again after this long.
    REPEAT_WARNING_S = 600.0
    # A connection the broker closes within SHORT_LIVED_S of accepting it, TAKEOVER_DROPS
    # times within TAKEOVER_WINDOW_S: another client is taking the same client id (MQTT
    # 3.1.1 has the broker close the older connection without a word; only MQTT 5 says
    # "session taken over"), and the two take it from each other for ever.
    SHORT_LIVED_S = 30.0
    TAKEOVER_DROPS = 3
    TAKEOVER_WINDOW_S = 120.0
    # paho's wait before connecting again: this, doubling after every failure, up to the
    # most. With other nodes, the wait doubles only after every node failed once more.
    RECONNECT_MIN_S = 1
    RECONNECT_MAX_S = 30

    def __init__(
        self,
        broker: BrokerAddress,
        client_id: str,
        *,
        will: Will | None = None,
        clean_session: bool = True,
        keepalive: int = 30,
        max_inflight: int = 200,
        ca_setting: str = CA_SETTING,
        fallbacks: Sequence[BrokerAddress] = (),
    ) -> None:
        """ca_setting: where the CA is given, for what a TLS failure says to do;
        fallbacks: other nodes of the same broker cluster, tried in turn (after broker)
        whenever an attempt to connect fails (no connection, or one closed or refused
        before the session was accepted), so that the link moves to a node that
        answers when its own dies (the nodes share the sessions: NATS, EMQX, HiveMQ and
        VerneMQ clusters do). They share broker's login and CA. Raises UnreadableCa (a
        ValueError) when broker.ca_file cannot be read."""
        self.broker = broker
        self._brokers = [broker, *fallbacks]
        self._at = 0  # the index in _brokers of the node tried last
        self._failed = 0  # attempts that failed since the last connection
        self.client_id = client_id
        self._ca_setting = ca_setting
        self._subs: dict[str, tuple[Handler, int]] = {}
        self._wildcards: dict[str, tuple[str, ...]] = {}  # filters with + or #, split
        self._routes: dict[str, tuple[Handler, ...]] = {}  # topic -> its handlers
        self._listeners: list[ConnectionListener] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._session_present = False
        self._refusal: Refusal | None = None
        self._failure: ConnectFailure | None = None
        self._handshake_failure: ConnectFailure | None = None  # of the attempt under way
        self._answered = False  # whether the broker answered the attempt under way
        self._failures = _Throttle(self.REPEAT_WARNING_S)
        self._bad_topics = _Throttle(self.REPEAT_WARNING_S)
        self._takeover_warnings = _Throttle(self.REPEAT_WARNING_S)
        self._connected_at = 0.0  # monotonic, of the last CONNACK accepted
        self._short_drops: deque[float] = deque(maxlen=self.TAKEOVER_DROPS)
        #: Times the connection looked taken over by another client with the same id.
        self.takeovers = 0
        self._stopping = False
        client = self._network_client(
            client_id=client_id, clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
        )  # fmt: skip
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set_context(self._watched_tls_context())
        if will:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.reconnect_delay_set(min_delay=self.RECONNECT_MIN_S, max_delay=self.RECONNECT_MAX_S)
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._keepalive = keepalive
        self._client = client

    # --- Link ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def session_present(self) -> bool:
        return self._session_present

    @property
    def last_refusal(self) -> Refusal | None:
        """Why the broker refused this link's last CONNECT since start(); None before any
        answer and once a CONNECT is accepted. The link keeps retrying after a refusal."""
        return self._refusal

    @property
    def last_failure(self) -> ConnectFailure | None:
        """Why this link's last attempt to connect failed before the broker answered (a
        TLS handshake, or the TCP connection); None once connected. It keeps retrying."""
        return self._failure

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        with self._lock:
            self._routes.clear()
            self._subs[topic_filter] = (handler, qos)
            if "+" in topic_filter or "#" in topic_filter:
                self._wildcards[topic_filter] = tuple(topic_filter.split("/"))
        if self.connected:
            self._client.subscribe(topic_filter, qos)
            self._network_queued()

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._routes.clear()
            known = self._subs.pop(topic_filter, None)
            self._wildcards.pop(topic_filter, None)
        if known and self.connected:
            self._client.unsubscribe(topic_filter)
            self._network_queued()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        # While disconnected paho keeps QoS 1 messages and sends them after reconnecting;
        # durability across a restart is the outbox's job, not this one's.
        self._client.publish(topic, payload, qos=qos, retain=retain)
        self._network_queued()

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._stopping = False
        self._refusal = None
        self._failure = None
        self._failures.reset()
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=self._keepalive)
        self._network_start()

    def stop(self) -> None:
        self._stopping = True
        try:
            self._network_stop()
        finally:
            self._connected.clear()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_published(
        self, topic: str, payload: bytes, qos: int = 1, timeout: float = 30, *,
        retain: bool = False,
    ) -> bool:
        """Publish and wait for the broker's acknowledgement (for tools and benchmarks)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        self._network_queued()
        info.wait_for_publish(timeout)
        return info.is_published()

    # --- the network thread: paho's own (a simulated fleet's links share one) ----------

    def _network_client(self, **options: Any) -> paho.Client:
        return paho.Client(CallbackAPIVersion.VERSION2, **options)

    def _network_start(self) -> None:
        self._client.loop_start()

    def _network_stop(self) -> None:
        try:
            self._client.disconnect()
        finally:
            # paho's loop_stop() can race its network thread clearing its own handle and
            # raise AttributeError; the thread has ended either way.
            with contextlib.suppress(AttributeError):
                self._client.loop_stop()

    def _network_queued(self) -> None:
        """A packet was queued to send: paho's own thread needs no telling."""

    # --- TLS --------------------------------------------------------------------------------

    def _watched_tls_context(self) -> ssl.SSLContext:
        """The pinned context, with sockets that note why their handshake failed: paho
        only says that connecting failed (on_connect_fail), not why."""
        context = tls_context(self.broker.ca_file)
        link = self

        class WatchedSocket(ssl.SSLSocket):
            def do_handshake(self, block: bool = False) -> None:
                try:
                    super().do_handshake(block)
                except OSError as exc:  # ssl.SSLError among them
                    link._handshake_failure = describe_tls_failure(
                        exc, link.broker.host, link._ca_setting
                    )
                    raise

        context.sslsocket_class = WatchedSocket
        return context

    # --- paho callbacks (network thread) ---------------------------------------------------

    def _on_pre_connect(self, _client: paho.Client, _userdata: Any) -> None:
        self._handshake_failure = None
        self._answered = False

    def _on_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        failure = self._handshake_failure or ConnectFailure(
            "no connection (the name does not resolve, no route, nothing listening on the "
            "port, or no answer)",
            "check the broker's host name and port, that the broker runs, and the network",
            tls=False,
        )
        self._failure = failure
        failed = self.broker
        if len(self._brokers) > 1 and not self._stopping:  # the next node, next time
            self._next_node()
        held = self._failures.allow(f"{failed.url()}: {failure.reason}")
        if held is None or self._stopping:
            return
        trusting = ""
        if failure.tls:
            trusting = f" (trusting {failed.ca_file or 'the system CAs'})"
        again = f"; {held} more attempts failed the same way" if held else ""
        following = f"trying {self.broker.url()} next" if self.broker is not failed else "retrying"
        log.warning(
            "cannot connect to broker %s as %s: %s%s%s. %s; %s",
            failed.url(), self.client_id, failure.reason, trusting, again,
            _sentence(failure.hint), following,
        )

    def _next_node(self) -> None:
        """Connect to the next node of the list from now on. A node that failed says
        nothing of the next one: it is tried after the round's wait (1 s, doubling each
        time the whole list has failed), not after paho's wait, doubled by the failures
        of the nodes before it."""
        self._at = (self._at + 1) % len(self._brokers)
        self.broker = self._brokers[self._at]
        self._failed += 1
        rounds = self._failed // len(self._brokers)
        wait = min(self.RECONNECT_MIN_S * 2**rounds, self.RECONNECT_MAX_S)
        self._client.reconnect_delay_set(min_delay=wait, max_delay=self.RECONNECT_MAX_S)
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=self._keepalive)

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        _props: Any,
    ) -> None:
        self._failure = None
        self._answered = True
        if reason.is_failure:
            self._refusal = Refusal(int(reason.value), reason.getName())
            if self._failures.allow(f"refused: {reason}") is not None:
                log.warning(
                    "broker %s refused connection for %s: %s; retrying",
                    self.broker.url(), self.client_id, reason,
                )
            return
        self._refusal = None
        self._session_present = bool(flags.session_present)
        if self._failed:  # paho's own wait starts again from its least
            self._failed = 0
            client.reconnect_delay_set(min_delay=self.RECONNECT_MIN_S,
                                       max_delay=self.RECONNECT_MAX_S)  # fmt: skip
        self._failures.reset()
        with self._lock:
            subs = list(self._subs.items())
        if subs:
            client.subscribe([(flt, qos) for flt, (_h, qos) in subs])
        self._connected_at = time.monotonic()
        self._connected.set()
        if len(self._brokers) > 1:
            log.info("connected to broker %s as %s (session %s)", self.broker.url(),
                     self.client_id, "kept" if self._session_present else "new")  # fmt: skip
        else:
            log.debug("connected to %s as %s", self.broker.url(), self.client_id)
        self._notify(True)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if not self._stopping and was and not self._taken_over(str(reason)):
            log.warning(
                "lost connection to broker %s (%s); reconnecting", self.broker.url(), reason
            )
        elif not self._stopping and not was and len(self._brokers) > 1:
            # Connected, then closed before the session was accepted (or refused): this
            # node does not serve now (a NATS node that cannot reach the cluster's
            # JetStream, or while it elects new leaders after a node died); the next may.
            failed = self.broker
            self._next_node()
            held = self._failures.allow(f"{failed.url()}: closed before accepting")
            if not self._answered and held is not None:  # a refusal was said already
                log.warning(
                    "broker %s closed the connection of %s before accepting its session "
                    "(%s)%s; trying %s next", failed.url(), self.client_id, reason,
                    f"; {held} more times since the last warning" if held else "",
                    self.broker.url(),
                )
        if was:
            self._notify(False)

    def _taken_over(self, reason: str) -> bool:
        """Whether this drop looks like another client taking this client id; if so, say
        it (at most every REPEAT_WARNING_S) instead of "lost connection"."""
        now = time.monotonic()
        if "Keep alive" in reason or now - self._connected_at > self.SHORT_LIVED_S:
            self._short_drops.clear()
            return False
        self._short_drops.append(now)
        if (len(self._short_drops) < self.TAKEOVER_DROPS
                or now - self._short_drops[0] > self.TAKEOVER_WINDOW_S):
            return False
        self.takeovers += 1
        held = self._takeover_warnings.allow("taken over")
        if held is not None:
            log.error(
                "broker %s keeps closing the connection of client id %r right after "
                "accepting it (%d times in %.0f s%s): most likely another client is connecting "
                "with the same client id: the broker gives the id to the newest connection, so "
                "the two take it from each other. Find the other process using client id %r (a "
                "second controller or agent with the same config) and stop it, or give one of "
                "them its own client id; the broker's log names the id it disconnected",
                self.broker.url(), self.client_id, len(self._short_drops),
                now - self._short_drops[0], f"; {held} more since the last warning"
                if held else "", self.client_id,
            )
        return True

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # paho still acknowledges it (QoS 1)
            if self._bad_topics.allow("topic") is not None:
                log.warning(
                    "dropped a message from broker %s whose topic is not UTF-8", self.broker.url()
                )
            return
        self._dispatch(topic, bytes(msg.payload))

    def _dispatch(self, topic: str, payload: bytes) -> None:
        """A message to the handlers of every filter its topic matches (worked out once per
        topic: a controller hears thousands of topics, a few filters each)."""
        with self._lock:
            handlers = self._routes.get(topic)
            if handlers is None:
                exact = self._subs.get(topic)
                found = [exact[0]] if exact else []
                if self._wildcards:
                    levels = topic.split("/")
                    found.extend(
                        self._subs[flt][0] for flt, parts in self._wildcards.items()
                        if _filter_matches(parts, levels)
                    )
                if len(self._routes) >= MAX_ROUTES:  # bounded, whatever topics arrive
                    self._routes.clear()
                handlers = self._routes[topic] = tuple(found)
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


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _filter_matches(levels: tuple[str, ...], topic: list[str]) -> bool:
    """Whether a topic (split at /) matches a filter (split at /) with + and # (MQTT 3.1.1
    4.7; no $ topics here). paho's own matcher builds a tree for every call."""
    for i, level in enumerate(levels):
        if level == "#":
            return True
        if i >= len(topic) or (level != "+" and level != topic[i]):
            return False
    return len(topic) == len(levels)
