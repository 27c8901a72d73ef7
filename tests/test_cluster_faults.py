"""A node of a real three-node NATS cluster killed -9 under an agent and the controller.

Real processes: three nats-server nodes with JetStream and their MQTT listeners
(tests/nats_cluster.py, configured as docs/operations.md says), the controller as
`loa-controller run` builds it, an agent process (`loa-agent run`, the `file` output: a
WAV per airing). Both are given the three nodes (broker_url and broker_fallback_urls)
and are on the same node, the first, when it dies:

(a) during a transfer: the agent is frozen, so the bulletin's command and chunks are in
    flight (taken by the cluster, handed to the agent's connection, not acknowledged)
    when the node is killed;
(b) during an urgent announcement: the agent frozen again, the announcement sent, its
    command and audio in flight the same way when the node they are on now is killed
    (if they went to two nodes after (a), both are started again first: they begin
    with the first node).

Each time both move to another node, with their sessions. The killed node is started
again and rejoins (its replicas of the MQTT streams caught up) before the next fault,
so the cluster keeps its quorum. At the end, after a last play through all three nodes:
every play aired once (one `received`, one `playing` and one WAV each), and every status
event is at the controller once (the agent's outbox sequence 1..n, unbroken, none stored
twice). The urgent announcement's latency, sent to playing, is printed.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import require, wait_until
from fleet_rig import COMMUNE, FleetRig
from nats_cluster import STREAM_REPLICAS, NatsCluster, NatsNode, nats_server

from controller.confirmations import ResendPolicy
from controller.samples import tone
from controller.tts import speech_for
from controller.urgent import AnnouncementRequest, SystemPrincipal, service_for
from protocol.mqtt import MqttLink

pytestmark = pytest.mark.slow

ME = "nat-01"
AGENT_ID = f"loa-agent-{ME}"
CONTROLLER_ID = "loa-controller"
# Resends quicker than the field's (10 s first), so that the test takes seconds.
POLICY = ResendPolicy(
    confirm_within=timedelta(seconds=2), max_wait=timedelta(seconds=4),
    miss_grace=timedelta(seconds=3), start_grace=timedelta(seconds=10),
)
# A node's loss, from the kill to both clients working on another (raft elections of
# the streams it led: seconds), with room for a loaded machine.
FAILOVER_S = 45
# The urgent announcement plays within this of being sent, through the loss of a node.
URGENT_WITHIN_S = 30.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    binary = nats_server()
    require("nats-server", binary is not None, "apt-get install nats-server")
    require("ffmpeg", shutil.which("ffmpeg") is not None, "apt-get install ffmpeg")
    assert binary is not None
    nodes = NatsCluster(binary, tmp_path / "nats")
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def rig(tmp_path: Path, cluster: NatsCluster) -> Iterator[FleetRig]:
    n1, n2, n3 = cluster.nodes
    r = FleetRig(
        tmp_path, n1, [ME], resend=POLICY, fallback_urls=[n2.url, n3.url],
        # Small chunks: a transfer of a few seconds of audio is many messages in flight.
        controller_extra="audio: {chunk_size_kb: 1}\n",
    )
    try:
        r.start_controller()
        r.start_agent(ME)
        r.wait_online(ME)
        # The first MQTT client made the streams: replicated on all three nodes, and so are
        # the consumers of the sessions' subscriptions (they take the stream's replicas).
        wait_until(every(0.2, cluster.mqtt_streams_whole), 30,
                   "the MQTT streams on all three nodes")  # fmt: skip
        replicas = cluster.consumer_replicas()
        assert replicas, "no consumers: the sessions' subscriptions are not in JetStream"
        assert set(replicas.values()) == {STREAM_REPLICAS}, replicas
        yield r
    finally:
        r.close()


class Seen:
    """Counts what a subscriber on another node gets on some channels (command, content)."""

    def __init__(self, node: NatsNode, *channels: str) -> None:
        self._lock = threading.Lock()
        self._topics: list[str] = []
        self.link = MqttLink(node.address, "seen-on-n3")
        for channel in channels:
            self.link.subscribe(f"loa/v1/+/+/{channel}", self._got)
        self.link.start()
        assert self.link.wait_connected(20)
        # NATS answers the subscriptions once it has made their consumers, replicated on
        # three nodes: a second or more after the connection. Until a probe comes back
        # on each channel, what is published may pass them by.
        sent = 0.0

        def probes_back() -> bool:
            nonlocal sent
            if all(self._count(f"loa/v1/seen/probe/{c}") for c in channels):
                return True
            if time.monotonic() - sent > 0.5:
                for channel in channels:
                    self.link.publish(f"loa/v1/seen/probe/{channel}", b"probe")
                sent = time.monotonic()
            return False

        wait_until(probes_back, 20, f"the subscriptions of a subscriber on {node.name}")

    def _got(self, topic: str, _payload: bytes) -> None:
        with self._lock:
            self._topics.append(topic)

    def _count(self, topic: str) -> int:
        with self._lock:
            return self._topics.count(topic)

    def count(self, channel: str) -> int:
        """Messages on the channel's topics, probes left out."""
        with self._lock:
            return sum(1 for t in self._topics
                       if t.endswith("/" + channel) and "/seen/probe/" not in t)  # fmt: skip


def every(seconds: float, condition: Callable[[], bool]) -> Callable[[], bool]:
    """condition, asked at most every `seconds` (False in between): for conditions that
    ask each node's monitoring port, which wait_until would ask a hundred times a second."""
    asked = 0.0

    def throttled() -> bool:
        nonlocal asked
        if time.monotonic() - asked < seconds:
            return False
        asked = time.monotonic()
        return condition()

    return throttled


def working(
    rig: FleetRig, cluster: NatsCluster, dead: NatsNode | None = None, log_from: int = 0
) -> tuple[NatsNode, NatsNode]:
    """Wait until the agent and the controller both work, each on one running node (not
    dead), and return their nodes. With dead: having found their sessions there (the
    controller's CONNACK said so; the agent's log, from log_from on, says so)."""
    nodes: list[NatsNode] = []

    def there() -> bool:
        link = rig.ctl.link
        assert isinstance(link, MqttLink)
        if not link.connected:
            return False
        agent_at, controller_at = cluster.node_of(AGENT_ID), cluster.node_of(CONTROLLER_ID)
        if agent_at is None or controller_at is None or dead in (agent_at, controller_at):
            return False
        if link.broker != controller_at.address:
            return False
        if dead is not None:
            # Each with the session it found there: kept, or (nats-server 2.9, now and
            # then, while the cluster elects new stream leaders) a new one, which the
            # controller's catch-up and the agent's chunk requests make good.
            said = rig.log(ME)[log_from:]
            if f"connected to broker {agent_at.url} as {AGENT_ID} (session" not in said:
                return False
            if not (link.session_present and "(session kept)" in said):
                print(f"a new session on {agent_at.name}: the catch-up makes good what the "
                      "broker lost")
        nodes[:] = [agent_at, controller_at]
        return True

    wait_until(every(0.05, there), FAILOVER_S,
               "the agent and the controller to work on a live node")  # fmt: skip
    return nodes[0], nodes[1]


def rejoined(cluster: NatsCluster, node: NatsNode) -> None:
    node.start()
    wait_until(every(0.2, cluster.mqtt_streams_whole), FAILOVER_S,
               f"{node.name} to rejoin, its MQTT stream replicas current")  # fmt: skip


def test_a_node_killed_under_the_agent_and_the_controller_loses_and_doubles_nothing(
    cluster: NatsCluster, rig: FleetRig, tmp_path: Path
) -> None:
    n1, _n2, n3 = cluster.nodes
    assert working(rig, cluster) == (n1, n1)
    began = time.monotonic()

    # (a) A transfer in flight when n1 dies. The agent is frozen: the command and the
    #     chunks are taken by the cluster (a subscriber on n3 has them all) and sit in the
    #     agent's session, sent to its connection on n1 and not acknowledged.
    bulletin = rig.audio(4, freq=330)
    chunks = bulletin.content_ref().chunks
    assert chunks >= 10, chunks
    seen = Seen(n3, "command", "content")
    rig.freeze_agent(ME)
    transfer = rig.send(bulletin, start_in=3, name="transfer")
    wait_until(lambda: seen.count("command") >= 1 and seen.count("content") >= chunks, 20,
               "the cluster to hold the command and every chunk")  # fmt: skip
    seen.link.stop()
    logged = len(rig.log(ME))
    n1.kill()
    killed = time.monotonic()
    rig.freeze_agent(ME, frozen=False)
    agent_at, controller_at = working(rig, cluster, dead=n1, log_from=logged)
    print(f"(a) the agent on {agent_at.name}, the controller on {controller_at.name}, with "
          f"their sessions, {time.monotonic() - killed:.1f} s after n1 died")  # fmt: skip
    rig.wait_kind(transfer.play_id, ME, "playing", timeout=FAILOVER_S)
    wait_until(lambda: rig.wavs(transfer.play_id, ME), 10, "its WAV: the bulletin is on air")
    rejoined(cluster, n1)
    rig.wait_final(transfer.play_id, ME, timeout=20)
    if agent_at is not controller_at:
        # A node closed one's connection before accepting it and that one moved on: bring
        # them onto one node again, both started again (they begin with n1).
        print("(a) on two nodes: both started again")
        rig.stop_controller()
        rig.kill_agent(ME)
        rig.start_agent(ME)
        rig.start_controller()
        agent_at, controller_at = working(rig, cluster)
        assert agent_at is controller_at, (agent_at.name, controller_at.name)
    victim = agent_at

    # (b) An urgent announcement in flight when the node they are on now dies: the agent
    #     frozen again, the announcement sent, its command and audio taken by the cluster
    #     and handed to the agent's connection, unacknowledged.
    service = service_for(rig.ctl, speech_for(), tmp_path / "urgent")
    manager = SystemPrincipal(name="quan-ly", role="manager", scope=["tinh-rig"])
    request = AnnouncementRequest(
        targets=[COMMUNE], audio=tone(tmp_path / "khan.wav", 2.0, freq=880),
        title="Khẩn: nước lên",
    )
    seen = Seen(next(n for n in cluster.nodes if n is not victim), "command", "content")
    before = rig.ctl.distributor.stats.chunks
    rig.freeze_agent(ME)
    sent = service.send(manager, request, source="cli")
    urgent_chunks = rig.ctl.distributor.stats.chunks - before
    wait_until(lambda: seen.count("command") >= 1 and seen.count("content") >= urgent_chunks,
               20, "the cluster to hold the announcement's command and audio")  # fmt: skip
    seen.link.stop()
    logged = len(rig.log(ME))
    victim.kill()
    killed = time.monotonic()
    rig.freeze_agent(ME, frozen=False)
    agent_at, controller_at = working(rig, cluster, dead=victim, log_from=logged)
    print(f"(b) {victim.name} died; the agent on {agent_at.name}, the controller on "
          f"{controller_at.name}, with their sessions, {time.monotonic() - killed:.1f} s "
          "after")  # fmt: skip
    rig.wait_kind(sent.id, ME, "playing", timeout=FAILOVER_S)
    latency = (rig.at(sent.id, ME, "playing") - sent.created_at).total_seconds()
    print(f"(b) the urgent announcement played {latency:.2f} s after it was sent, its node "
          "lost meanwhile")  # fmt: skip
    assert 0 <= latency < URGENT_WITHIN_S, latency

    # The node rejoins: nothing it held comes again. A last play through all three nodes:
    # once its end is in, everything before it is.
    rejoined(cluster, victim)
    after = rig.send(rig.audio(0.5, freq=550), name="after")
    endings = {transfer.play_id: "finished", sent.id: "finished", after.play_id: "finished"}
    for play_id, expected in endings.items():
        assert rig.wait_final(play_id, ME, timeout=FAILOVER_S) == expected, rig.kinds(play_id, ME)
    rig.wait_unbroken_outbox(ME)
    for play_id in endings:
        kinds = rig.kinds(play_id, ME)
        for kind in ("received", "playing", "finished"):
            assert kinds.count(kind) == 1, (play_id, kinds)
        assert len(rig.wavs(play_id, ME)) == 1, (play_id, rig.wavs(play_id, ME))
    working(rig, cluster)
    [seqs] = rig.outbox_seqs(ME).values()
    print(f"{len(seqs)} events, each stored once; duplicates dropped by the controller: "
          f"{rig.ctl.intake.stats.duplicates}; {time.monotonic() - began:.1f} s from the "
          "first kill")  # fmt: skip
