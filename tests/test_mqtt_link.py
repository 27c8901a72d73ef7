"""MqttLink against real brokers: mosquitto and the embedded amqtt broker, same tests,
with each link on its own network thread (the agent and the controller) and with links
sharing one NetworkLoop (a simulated fleet's `FleetLink`, scripts/sim_network.py).

Publishing from one connection races with another connection's SUBSCRIBE reaching the
broker, and MqttLink does not expose SUBACKs; so cross-client tests publish again every
quarter second until the message is in or the deadline passes (`publish_until`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as paho
import pytest
from conftest import (
    BrokerUnderTest,
    MosquittoBroker,
    free_port,
    have_mosquitto,
    require,
    wait_until,
)
from paho.mqtt.enums import CallbackAPIVersion
from sim_network import FleetLink, NetworkLoop

from controller.broker import BrokerStartError, EmbeddedBroker
from protocol.mqtt import BrokerAddress, MqttLink, Refusal, Will

REPO = Path(__file__).resolve().parent.parent
CONNECT_TIMEOUT = 10.0


class Inbox:
    """Collects what a link's handlers receive, from paho's network thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.messages.append((topic, payload))

    def payloads(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t == topic]

    def topics(self) -> set[str]:
        with self._lock:
            return {t for t, _p in self.messages}


@pytest.fixture(params=["mosquitto", "embedded"])
def any_broker(request: pytest.FixtureRequest) -> BrokerUnderTest:
    """Each test runs against mosquitto and against the embedded broker."""
    fixture = "mosquitto_broker" if request.param == "mosquitto" else "embedded_broker"
    broker: BrokerUnderTest = request.getfixturevalue(fixture)
    return broker


@pytest.fixture(params=["own-thread", "shared-loop"])
def links(
    any_broker: BrokerUnderTest, request: pytest.FixtureRequest
) -> Iterator[Callable[..., MqttLink]]:
    """A factory of started, connected links to the broker; all stopped at the end. Each
    test runs with links on their own threads, then with links on one shared loop."""
    with ExitStack() as stack:
        loop: NetworkLoop | None = None
        if request.param == "shared-loop":
            loop = NetworkLoop()
            loop.start()
            stack.callback(loop.stop)

        def connect(client_id: str, *, will: Will | None = None) -> MqttLink:
            link = new_link(any_broker.address, client_id, loop, will=will)
            stack.callback(link.stop)
            link.start()
            assert link.wait_connected(CONNECT_TIMEOUT), f"{client_id} did not connect"
            return link

        yield connect


def new_link(
    address: BrokerAddress, client_id: str, loop: NetworkLoop | None, *, will: Will | None = None
) -> MqttLink:
    """A link on its own thread, or on the shared loop when one is given."""
    if loop is None:
        return MqttLink(address, client_id, will=will)
    return FleetLink(address, client_id, will=will, loop=loop)


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int = ...) -> object: ...


def publish_until(
    link: Publisher,
    topic: str,
    payload: bytes,
    arrived: Callable[[], object],
    *,
    timeout: float = 10.0,
) -> None:
    """Publish (QoS 1) every 0.25 s until arrived() is true; fail after timeout."""
    last = -1.0

    def check() -> object:
        nonlocal last
        if arrived():
            return True
        if time.monotonic() - last >= 0.25:
            link.publish(topic, payload, qos=1)
            last = time.monotonic()
        return False

    wait_until(check, timeout, f"{topic} to arrive")


def test_binary_payload_round_trip(links: Callable[..., MqttLink]) -> None:
    payload = bytes(range(256)) * 256  # 64 KiB, every byte value
    assert len(payload) == 64 * 1024
    inbox = Inbox()
    subscriber = links("sub")
    subscriber.subscribe("loa/test/+/content", inbox)
    publisher = links("pub")
    publish_until(
        publisher, "loa/test/c1/content", payload, lambda: inbox.payloads("loa/test/c1/content")
    )
    assert set(inbox.payloads("loa/test/c1/content")) == {payload}
    assert inbox.topics() == {"loa/test/c1/content"}


def test_a_burst_of_small_and_large_messages_arrives_whole_and_in_order(
    links: Callable[..., MqttLink],
) -> None:
    """Nothing may be left unread when no more data comes (the burst ends), and packets
    split across reads must come out whole (the shared loop's link reads what the socket
    holds at once and frames the packets itself)."""
    sizes = [0, 1, 2, 127, 128, 16_383, 16_384, 70_000, 300_000, 5]
    burst = [bytes([i % 251]) * sizes[i % len(sizes)] + i.to_bytes(4, "big") for i in range(200)]
    pub, sub = links("burst-pub"), links("burst-sub")
    inbox = Inbox()
    sub.subscribe("t/burst", inbox)
    publish_until(pub, "t/burst", b"probe", lambda: inbox.payloads("t/burst"))
    before = len(inbox.payloads("t/burst"))
    for payload in burst:
        pub.publish("t/burst", payload, qos=1)
    wait_until(
        lambda: len(inbox.payloads("t/burst")) >= before + len(burst),
        timeout=30, what="the whole burst",
    )
    got = [p for p in inbox.payloads("t/burst")[before:] if p != b"probe"]
    assert got == burst


def test_acknowledged_publish(links: Callable[..., MqttLink]) -> None:
    publisher = links("pub")
    assert publisher.wait_published("loa/test/ack", b"x" * 70_000, qos=1, timeout=10)


def test_retained_message_reaches_a_later_subscriber(links: Callable[..., MqttLink]) -> None:
    topic = "loa/v1/cluster/ph-001/state"
    publisher = links("pub")
    publisher.publish(topic, b"old", qos=1, retain=True)
    publisher.publish(topic, b"online", qos=1, retain=True)
    assert publisher.wait_published("loa/test/fence", b"", qos=1, timeout=10)
    inbox = Inbox()
    late = links("late")
    late.subscribe("loa/v1/cluster/+/state", inbox)
    # Nobody publishes after `late` subscribed: whatever arrives was retained, and the
    # last retained value replaced the first.
    wait_until(lambda: inbox.payloads(topic)[-1:] == [b"online"], 10, "the retained state")
    assert inbox.topics() == {topic}


def test_clearing_a_retained_message(links: Callable[..., MqttLink]) -> None:
    topic = "loa/v1/cluster/ph-002/state"
    publisher = links("pub")
    publisher.publish(topic, b"online", qos=1, retain=True)
    publisher.publish(topic, b"", qos=1, retain=True)  # an empty retained payload clears it
    probe = Inbox()
    publisher.subscribe("loa/test/probe", probe)
    publish_until(publisher, "loa/test/probe", b"p", lambda: probe.payloads("loa/test/probe"))
    inbox = Inbox()
    late = links("late")
    late.subscribe(topic, inbox)
    late.subscribe("loa/test/probe", inbox)
    publish_until(late, "loa/test/probe", b"p", lambda: inbox.payloads("loa/test/probe"))
    assert inbox.payloads(topic) == []


def test_a_client_gets_only_the_retained_messages_it_subscribed_to(
    any_broker: BrokerUnderTest, links: Callable[..., MqttLink]
) -> None:
    controller = links("controller")
    controller.subscribe("loa/v1/cluster/+/state", Inbox())
    controller.publish("loa/v1/cluster/ph-001/state", b"online", qos=1, retain=True)
    assert controller.wait_published("loa/test/fence", b"", timeout=10)
    # A bare client that sees every message its connection receives, matched or not.
    seen = Inbox()
    raw = paho.Client(CallbackAPIVersion.VERSION2, client_id="agent-ph-002")
    raw.on_message = lambda _c, _u, msg: seen(msg.topic, bytes(msg.payload))
    raw.connect(any_broker.address.host, any_broker.address.port)
    raw.loop_start()
    try:
        raw.subscribe("loa/v1/cluster/ph-002/command", qos=1)
        # Packets on one connection arrive in order: once this client's own message is
        # back, anything the broker sent it on connect would be in too.
        publish_until(
            raw,
            "loa/v1/cluster/ph-002/command",
            b"cmd",
            lambda: seen.payloads("loa/v1/cluster/ph-002/command"),
        )
        assert seen.topics() == {"loa/v1/cluster/ph-002/command"}
    finally:
        raw.disconnect()
        raw.loop_stop()


def test_subscriptions_are_renewed_after_a_broker_restart(
    any_broker: BrokerUnderTest, links: Callable[..., MqttLink]
) -> None:
    inbox = Inbox()
    subscriber = links("sub")
    subscriber.subscribe("loa/test/after", inbox)
    publisher = links("pub")
    ups: list[bool] = []
    subscriber.add_connection_listener(ups.append)
    publisher.add_connection_listener(ups.append)

    any_broker.restart()

    wait_until(lambda: ups.count(False) == 2, 10, "both links to see the broker go")
    wait_until(lambda: ups.count(True) == 2, 15, "both links to reconnect by themselves")
    # The broker lost every (clean) session: only a renewed subscription gets this.
    publish_until(publisher, "loa/test/after", b"back", lambda: inbox.payloads("loa/test/after"))


def test_a_persistent_session_gets_what_was_sent_while_it_was_away(
    any_broker: BrokerUnderTest, links: Callable[..., MqttLink]
) -> None:
    topic = "loa/v1/cluster/ph-003/command"
    first_inbox = Inbox()
    agent = MqttLink(any_broker.address, "agent-ph-003", clean_session=False)
    agent.subscribe(topic, first_inbox)
    agent.start()
    try:
        assert agent.wait_connected(CONNECT_TIMEOUT)
        controller = links("controller")
        publish_until(controller, topic, b"while online", lambda: first_inbox.payloads(topic))
    finally:
        agent.stop()

    assert controller.wait_published(topic, b"while away", qos=1, timeout=10)

    # The agent comes back as a new process would: same client id, a fresh link.
    inbox = Inbox()
    back = MqttLink(any_broker.address, "agent-ph-003", clean_session=False)
    back.subscribe(topic, inbox)
    back.start()
    try:
        wait_until(lambda: b"while away" in inbox.payloads(topic), 10, "the queued command")
    finally:
        back.stop()


AGENT = """
import sys, threading
from protocol.mqtt import BrokerAddress, MqttLink, Will
host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
link = MqttLink(BrokerAddress(host, port), "agent-ph-007", will=Will(topic, b"offline"))
link.start()
if not link.wait_connected(10):
    sys.exit("could not connect")
link.publish(topic, b"online", qos=1, retain=True)
threading.Event().wait()
"""


def test_last_will_is_published_and_retained_when_an_agent_dies(
    any_broker: BrokerUnderTest, links: Callable[..., MqttLink]
) -> None:
    topic = "loa/v1/cluster/ph-007/state"
    watcher_inbox = Inbox()
    watcher = links("watcher")
    watcher.subscribe(topic, watcher_inbox)
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, any_broker.address.host, str(any_broker.address.port), topic],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_until(lambda: b"online" in watcher_inbox.payloads(topic), 15, "the agent online")
        agent.kill()  # kill -9: no DISCONNECT packet, the kernel just closes the socket
        agent.wait(10)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
    wait_until(lambda: b"offline" in watcher_inbox.payloads(topic), 10, "the Last Will")
    assert watcher_inbox.payloads(topic) == [b"online", b"offline"]

    late_inbox = Inbox()
    late = links("late")
    late.subscribe(topic, late_inbox)
    wait_until(lambda: late_inbox.payloads(topic), 10, "the retained Last Will")
    assert late_inbox.payloads(topic) == [b"offline"]


def test_a_hundred_concurrent_clients(links: Callable[..., MqttLink]) -> None:
    count = 100
    collector_inbox = Inbox()
    collector = links("collector")
    collector.subscribe("loa/test/up/+", collector_inbox)
    agents: list[tuple[MqttLink, Inbox]] = []
    for i in range(count):
        inbox = Inbox()
        agent = links(f"agent-{i:03d}")
        agent.subscribe("loa/test/all", inbox)
        agents.append((agent, inbox))

    # Fan-out: one message to every agent.
    publish_until(
        collector,
        "loa/test/all",
        b"to everyone",
        lambda: all(inbox.payloads("loa/test/all") for _a, inbox in agents),
        timeout=20,
    )
    # Fan-in: every agent reports once.
    first, _ = agents[0]
    publish_until(first, "loa/test/up/000", b"0", collector_inbox.topics, timeout=10)
    for i, (agent, _inbox) in enumerate(agents[1:], start=1):
        agent.publish(f"loa/test/up/{i:03d}", str(i).encode(), qos=1)
    wait_until(lambda: len(collector_inbox.topics()) == count, 20, "a report from every agent")
    assert all(agent.connected for agent, _ in agents)


@pytest.mark.parametrize("mode", ["own-thread", "shared-loop"])
def test_a_refused_login_is_told_and_a_later_accepted_one_clears_it(
    tmp_path: Path, mode: str
) -> None:
    """A mosquitto with a password file: the CONNACK's refusal is the link's last_refusal
    (a wrong password, and an anonymous client), until the broker accepts the login."""
    require("mosquitto", have_mosquitto(), "apt-get install mosquitto")
    require("mosquitto_passwd", shutil.which("mosquitto_passwd") is not None,
            "apt-get install mosquitto")
    broker = MosquittoBroker(tmp_path / "auth")
    passwords = tmp_path / "auth" / "passwords"

    def set_password(password: str) -> None:
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "loa", password],
                       check=True, timeout=10)

    set_password("old")
    broker.conf.write_text(
        broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
        + f"password_file {passwords}\n"
    )
    login_refusals = {
        Refusal(Refusal.BAD_USERNAME_OR_PASSWORD, "Bad user name or password"),
        Refusal(Refusal.NOT_AUTHORIZED, "Not authorized"),
    }
    broker.start()
    with ExitStack() as stack:
        stack.callback(broker.kill)
        loop: NetworkLoop | None = None
        if mode == "shared-loop":
            loop = NetworkLoop()
            loop.start()
            stack.callback(loop.stop)

        anonymous = new_link(broker.address, "anonymous", loop)
        stack.callback(anonymous.stop)
        anonymous.start()
        wait_until(lambda: anonymous.last_refusal is not None, 10, "the anonymous refusal")
        told = anonymous.last_refusal
        assert told == Refusal(Refusal.NOT_AUTHORIZED, "Not authorized")
        assert told.login
        assert not anonymous.connected

        address = replace(broker.address, username="loa", password="right")
        link = new_link(address, "probe", loop)
        stack.callback(link.stop)
        link.start()
        wait_until(lambda: link.last_refusal is not None, 10, "the wrong password's refusal")
        refusal = link.last_refusal
        assert refusal in login_refusals, refusal
        assert refusal is not None
        assert refusal.login
        assert not link.connected

        # The broker learns the password; the link, retrying, gets in and forgets the refusal.
        set_password("right")
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)  # mosquitto reloads its password file
        assert link.wait_connected(15), "the link did not log in after the password was set"
        assert link.last_refusal is None
        assert anonymous.last_refusal is not None  # still refused, still told
        assert not anonymous.connected


def test_no_refusal_before_an_answer_and_which_refusals_are_the_login() -> None:
    assert MqttLink(BrokerAddress(), "never-started").last_refusal is None
    assert not Refusal(136, "Server unavailable").login
    assert Refusal(134, "Bad user name or password").login
    assert Refusal(135, "Not authorized").login


# --- the embedded broker's own life cycle ---------------------------------------------------


def test_embedded_broker_picks_a_port_and_keeps_it_across_restarts() -> None:
    broker = EmbeddedBroker()
    with pytest.raises(RuntimeError, match="start it first"):
        _ = broker.url
    with broker:
        port = broker.port
        assert port > 0
        assert broker.url == f"mqtt://127.0.0.1:{port}"
        assert broker.address == BrokerAddress("127.0.0.1", port)
        broker.start()  # already running: no second listener
        broker.stop()
        assert not broker.running
        broker.stop()  # stopping a stopped broker is harmless
        broker.start()
        assert broker.running
        assert broker.port == port
        link = MqttLink(broker.address, "probe")
        link.start()
        try:
            assert link.wait_connected(CONNECT_TIMEOUT)
        finally:
            link.stop()
    assert not broker.running


def test_embedded_broker_reports_a_port_in_use() -> None:
    with EmbeddedBroker() as first:
        second = EmbeddedBroker(port=first.port)
        with pytest.raises(BrokerStartError, match=f"could not listen on 127.0.0.1:{first.port}"):
            second.start()
        assert not second.running
        assert first.running


def test_the_shared_broker_fixture_serves_mqtt(broker: BrokerUnderTest) -> None:
    """`broker` is mosquitto, or the embedded broker where mosquitto is missing."""
    link = MqttLink(broker.address, "probe")
    link.start()
    try:
        assert link.wait_connected(CONNECT_TIMEOUT)
        inbox = Inbox()
        link.subscribe("loa/test/self", inbox)
        publish_until(link, "loa/test/self", b"hi", lambda: inbox.payloads("loa/test/self"))
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        broker.restart()
        wait_until(lambda: not link.connected, 10, "the link to see the restart")
        wait_until(lambda: link.connected, 15, "the link to reconnect")
        broker.kill()
        wait_until(lambda: not link.connected, 10, "the link to see the broker die")
    finally:
        link.stop()


@pytest.mark.parametrize(
    ("topic_filter", "topic"),
    [
        ("a/+/c", "a/b/c"), ("a/+/c", "a/b/d"), ("a/#", "a"), ("a/#", "a/b/c"), ("#", "x/y"),
        ("+", "x"), ("+", "x/y"), ("a/+", "a"), ("+/+", "a/b"), ("+/#", "a"), ("a/b", "a/b"),
        ("loa/v1/cluster/+/event", "loa/v1/cluster/ph-001/event"),
        ("loa/v1/cluster/+/event", "loa/v1/cluster/ph-001/state"),
        ("loa/v1/cluster/+/event", "loa/v1/cluster/ph-001/event/x"),
    ],
)  # fmt: skip
def test_wildcard_matching_agrees_with_paho(topic_filter: str, topic: str) -> None:
    from protocol.mqtt import _filter_matches

    expected = paho.topic_matches_sub(topic_filter, topic)
    assert _filter_matches(tuple(topic_filter.split("/")), topic.split("/")) == expected


def test_routes_follow_subscriptions_and_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handlers a topic reaches are remembered per topic; subscribing or unsubscribing
    starts again, and however many topics arrive the memory is bounded."""
    from protocol import mqtt

    link = MqttLink(mqtt.BrokerAddress(host="127.0.0.1", port=1), "routes")  # never started
    got: list[tuple[str, str]] = []
    link.subscribe("loa/v1/cluster/+/event", lambda t, _p: got.append(("events", t)))
    link._dispatch("loa/v1/cluster/c1/event", b"1")
    link._dispatch("loa/v1/cluster/c1/state", b"2")  # no handler: remembered as none
    link.subscribe("loa/v1/cluster/c1/#", lambda t, _p: got.append(("c1", t)))
    link._dispatch("loa/v1/cluster/c1/event", b"3")
    link._dispatch("loa/v1/cluster/c1/state", b"4")
    link.unsubscribe("loa/v1/cluster/+/event")
    link._dispatch("loa/v1/cluster/c1/event", b"5")
    assert got == [
        ("events", "loa/v1/cluster/c1/event"),
        ("events", "loa/v1/cluster/c1/event"), ("c1", "loa/v1/cluster/c1/event"),
        ("c1", "loa/v1/cluster/c1/state"),
        ("c1", "loa/v1/cluster/c1/event"),
    ]  # fmt: skip
    monkeypatch.setattr(mqtt, "MAX_ROUTES", 100)
    for n in range(1000):
        link._dispatch(f"loa/v1/cluster/x{n}/event", b"")
    assert len(link._routes) <= 100


def test_a_link_moves_to_the_next_node_when_its_broker_dies(tmp_path: Path) -> None:
    """Two brokers stand for two nodes of a cluster: killed under it, the link connects to
    the other, subscribes again and takes messages there; the log says where it went."""
    require("mosquitto", have_mosquitto(), "apt-get install mosquitto")
    first, second = MosquittoBroker(tmp_path / "a"), MosquittoBroker(tmp_path / "b")
    first.start()
    second.start()
    link = MqttLink(first.address, "moving", fallbacks=[second.address])
    other = MqttLink(second.address, "publisher")
    inbox = Inbox()
    try:
        link.subscribe("loa/test/+/event", inbox)
        link.start()
        assert link.wait_connected(10)
        assert link.broker == first.address
        first.kill()
        wait_until(lambda: link.connected and link.broker == second.address, 30,
                   "the link to connect to the second broker")  # fmt: skip
        other.start()
        assert other.wait_connected(10)
        publish_until(other, "loa/test/c1/event", b"after", lambda: inbox.payloads(
            "loa/test/c1/event"))  # fmt: skip
    finally:
        link.stop()
        other.stop()
        first.stop()
        second.stop()


def test_a_dead_node_does_not_make_the_link_wait_longer_for_the_next(
    mosquitto_broker: MosquittoBroker,
) -> None:
    """Three dead nodes before the live one: each next node is tried a second after the
    last failed (about 3 s in all), not after a wait doubled by the failures before it
    (1 + 2 + 4 = 7 s): a node that died says nothing of the others."""
    dead = [BrokerAddress("127.0.0.1", free_port()) for _ in range(3)]  # nothing listens
    link = MqttLink(dead[0], "moving", fallbacks=[*dead[1:], mosquitto_broker.address])
    try:
        started = time.monotonic()
        link.start()
        assert link.wait_connected(6), f"not connected after {time.monotonic() - started:.1f} s"
        assert link.broker == mosquitto_broker.address
        print(f"connected to the fourth node {time.monotonic() - started:.1f} s after starting")
    finally:
        link.stop()


class Unserving:
    """A node that takes connections and closes each when its CONNECT comes, as a NATS
    node does that cannot reach the cluster's JetStream ("unable to connect: ... timeout"
    in its log)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = BrokerAddress("127.0.0.1", self._server.getsockname()[1])
        self.closed = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)  # the CONNECT
            self.closed += 1

    def stop(self) -> None:
        self._server.close()


def test_a_node_that_drops_the_connection_before_accepting_is_left_for_the_next(
    mosquitto_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A node that is up but does not serve (it closes every connection before its
    CONNACK): the link moves on to the next node instead of trying it for ever."""
    unserving = Unserving()
    link = MqttLink(unserving.address, "moving", fallbacks=[mosquitto_broker.address])
    try:
        with caplog.at_level(logging.WARNING, logger="protocol.mqtt"):
            link.start()
            assert link.wait_connected(10)
        assert link.broker == mosquitto_broker.address
        assert unserving.closed == 1
        [said] = [r.message for r in caplog.records if "before accepting" in r.message]
        assert f"trying {mosquitto_broker.address.url()} next" in said
    finally:
        link.stop()
        unserving.stop()


def test_two_clients_with_one_client_id_are_named_as_such(
    mosquitto_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Two processes with the same client id (a second controller with the same config):
    the broker gives the id to the newest connection, so they take it from each other
    every second. The log says so, with what to do, instead of "lost connection"."""
    first = MqttLink(mosquitto_broker.address, "loa-controller")
    second = MqttLink(mosquitto_broker.address, "loa-controller")
    with ExitStack() as stack, caplog.at_level(logging.WARNING, logger="protocol.mqtt"):
        stack.callback(first.stop)
        stack.callback(second.stop)
        first.start()
        assert first.wait_connected(10)
        second.start()

        def named() -> bool:
            return any("another client is connecting" in r.message
                       for r in caplog.records)

        wait_until(named, 30, "the takeover to be named in the log")
    [said] = [r for r in caplog.records if "same client id" in r.message][:1]
    assert said.levelno == logging.ERROR
    assert "'loa-controller'" in said.message
    assert "stop it, or give one of them its own client id" in said.message
    assert "with the same client id" in said.message
    assert first.takeovers + second.takeovers >= 1
