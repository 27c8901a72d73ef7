"""A broker cluster: three real nats-server nodes with JetStream and MQTT listeners.

Agents and the controller take a list of broker URLs (broker_url, then
broker_fallback_urls) and move to the next node when theirs fails. NATS keeps MQTT
sessions in JetStream, replicated across the nodes, so a client that lost its node finds
its session (its subscriptions, and the QoS 1 messages that came meanwhile) at another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require, wait_until
from nats_cluster import NatsCluster, nats_server

from protocol.mqtt import MqttLink

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    binary = nats_server()
    require("nats-server", binary is not None, "apt-get install nats-server")
    assert binary is not None
    nodes = NatsCluster(binary, tmp_path)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


class Received:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.payloads: list[bytes] = []

    def __call__(self, _topic: str, payload: bytes) -> None:
        with self.lock:
            self.payloads.append(payload)

    def got(self) -> list[bytes]:
        with self.lock:
            return list(self.payloads)


def test_a_killed_node_moves_its_clients_to_another_with_their_sessions(
    cluster: NatsCluster,
) -> None:
    n1, n2, n3 = cluster.nodes
    agent = MqttLink(n1.address, "loa-agent-a-01", clean_session=False,
                     fallbacks=[n2.address, n3.address])  # fmt: skip
    controller = MqttLink(n2.address, "loa-controller", clean_session=False,
                          fallbacks=[n3.address, n1.address])  # fmt: skip
    commands, events = Received(), Received()
    agent.subscribe("loa/v1/cluster/a-01/command", commands)
    controller.subscribe("loa/v1/cluster/+/event", events)
    try:
        agent.start()
        controller.start()
        assert agent.wait_connected(30)
        assert controller.wait_connected(30)
        sent = 0.0

        def first_arrived() -> bool:  # published again every second until one arrives
            nonlocal sent
            if commands.got():
                return True
            if time.monotonic() - sent > 1.0:
                controller.publish("loa/v1/cluster/a-01/command", b"first")
                sent = time.monotonic()
            return False

        wait_until(first_arrived, 30, "a first command at the agent")
        n1.kill()  # the agent's node
        # Sent while the agent has no node: its session on the cluster keeps it.
        controller.publish("loa/v1/cluster/a-01/command", b"while-away")
        wait_until(lambda: agent.connected and agent.broker != n1.address, 90,
                   "the agent to reconnect to another node")  # fmt: skip
        if agent.session_present:
            wait_until(lambda: b"while-away" in commands.got(), 60,
                       "the command sent while the agent was away")
        else:
            # Seen now and then on nats-server 2.9: while the cluster elects new stream
            # leaders, one node refuses the session (the link moves on) and the next
            # starts a new one. The link says so (session_present False), which is what
            # has the controller send again what is not confirmed (the catch-up); the
            # command published meanwhile is the broker's loss, never a duplicate.
            print("the node the agent moved to started a new session")
        agent.publish("loa/v1/cluster/a-01/event", b"an event")
        wait_until(lambda: b"an event" in events.got(), 60, "the agent's event at the controller")
        assert commands.got().count(b"while-away") <= 1
        assert commands.got().count(b"while-away") == (1 if agent.session_present else 0)
    finally:
        agent.stop()
        controller.stop()


def test_fallback_urls_are_checked_and_share_the_login_and_ca(tmp_path: Path) -> None:
    from controller.config import load_controller_config
    from device_agent.config import load_agent_config
    from protocol.config_errors import ConfigError

    (tmp_path / "controller.pub").write_text("unused", encoding="utf-8")
    (tmp_path / "ca.pem").write_text("unused", encoding="utf-8")
    agent = tmp_path / "agent.yaml"
    agent.write_text(
        "cluster_id: a-01\nbroker_url: mqtts://mq1.example.vn:8883\n"
        "broker_fallback_urls: [mqtts://mq2.example.vn, mqtts://mq3.example.vn:8884]\n"
        "broker_ca_file: ca.pem\nusername: a-01\npassword: mat-khau-dai-du-dai\n"
        "controller_public_key: controller.pub\n",
        encoding="utf-8",
    )
    config = load_agent_config(agent)
    [second, third] = config.fallback_brokers()
    assert (second.host, second.port, third.port) == ("mq2.example.vn", 8883, 8884)
    assert {(b.username, b.password, b.tls, b.ca_file) for b in (second, third)} == {
        ("a-01", "mat-khau-dai-du-dai", True, str(tmp_path / "ca.pem"))}
    agent.write_text(agent.read_text(encoding="utf-8").replace(
        "mqtts://mq2.example.vn", "http://mq2.example.vn"), encoding="utf-8")  # fmt: skip
    with pytest.raises(ConfigError, match=r"agent\.yaml:3"):
        load_agent_config(agent)
    controller = tmp_path / "controller.yaml"
    controller.write_text(
        "broker_url: mqtt://loa:secret@mq1:1883\nbroker_fallback_urls: [mqtt://mq2:1883]\n"
        "fleet: fleet.yaml\nplaylists: [playlists]\nstore_url: sqlite:///c.db\n"
        "private_key: controller.key\ncontent_dir: content\n",
        encoding="utf-8",
    )
    from controller.main import Settings

    settings = Settings.from_config(load_controller_config(controller))
    [fallback] = settings.broker_fallbacks
    assert (fallback.host, fallback.username, fallback.password) == ("mq2", "loa", "secret")
