"""An agent cut off in the middle of a download resumes it: it asks for exactly the chunks
it lacks, gets only those, verifies the whole, reports it `delivered` and plays it.

Real parts: mosquitto; the controller as `loa-controller run` builds it (it answers chunk
requests and takes in events); an agent from device_agent.agent with its own data
folder; real Opus audio (a tone through ffmpeg) in 1 KiB chunks. The play goes out
through a `Distributor` on the controller's signer, store, fleet and holdings, whose link
stops before chunk K: there the test breaks the agent off, once by cutting its TCP
connection (a relay between it and the broker) and once by stopping it and starting a
new agent on the same data folder. The rest of the chunks then go out while the agent
is away. A bare subscriber counts every chunk (by index) and every request on the wire.

One ManualClock for the controller and the agent: the agent asks for missing chunks
`stall_s` (3 s) after the play arrived, by its own clock, so the test decides when.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import MosquittoBroker, require, wait_until
from identity_support import body_of, registered_identity
from net_relay import Relay

from controller.audio import AudioSettings, PreparedAudio
from controller.distribution import Distributor, PlaySpec
from controller.main import Controller, Settings
from controller.samples import tone
from device_agent.agent import Agent
from device_agent.output import NullBackend
from protocol import chunks, topics
from protocol.clock import ManualClock
from protocol.messages import ChunkRequest, Event, MessageError, parse, parse_events
from protocol.mqtt import BrokerAddress, ConnectionListener, Handler, Link, MqttLink
from protocol.signing import Verifier, generate_keypair, load_public_key

pytestmark = pytest.mark.slow

ME = "cum-01"
NEIGHBOUR = "cum-02"  # no agent: the play goes to the commune's group topics
CHUNK_SIZE = 1024
# Past the agent's stall_s (3 s, docs/protocol.md): it asks for what is still missing.
PAST_STALL = timedelta(seconds=5)

FLEET = f"""\
province:
  id: tinh-thu
  name: Tỉnh Thử
  communes:
    - id: xa-thu
      name: Xã Thử
      clusters:
        - {{id: {ME}, name: Cụm Một}}
        - {{id: {NEIGHBOUR}, name: Cụm Hai}}
"""


class StopBeforeChunk:
    """A link that, before publishing chunk `index` of any content, calls `before` once:
    the test breaks the agent off there, with chunks 0..index-1 already delivered."""

    def __init__(self, link: Link, index: int, before: Callable[[], None]) -> None:
        self._link = link
        self._index = index
        self._before: Callable[[], None] | None = before

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        where = topics.parse(topic)
        if (self._before is not None and where is not None and where.channel == "content"
                and chunks.decode(payload).index == self._index):
            before, self._before = self._before, None
            before()
        self._link.publish(topic, payload, qos, retain)

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        self._link.subscribe(topic_filter, handler, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        self._link.unsubscribe(topic_filter)

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        self._link.add_connection_listener(listener)

    def start(self) -> None:
        self._link.start()

    def stop(self) -> None:
        self._link.stop()

    def wait_connected(self, timeout: float) -> bool:
        return self._link.wait_connected(timeout)

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def session_present(self) -> bool:
        return self._link.session_present


@dataclass(frozen=True)
class Seen:
    topic: str
    index: int | None = None  # of a chunk
    request: ChunkRequest | None = None
    event: Event | None = None


class Wire:
    """Every chunk, chunk request and event on the broker, in arrival order, seen by a
    bare subscriber connected straight to the broker (not through the relay). An agent's
    requests and events are both QoS 1 from one client, so they arrive here in the order
    it sent them: once its `finished` is here, so is every request it made before."""

    PROBE = topics.cluster_topic("wire-probe", "content")

    def __init__(self, broker: BrokerAddress) -> None:
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self.link = MqttLink(broker, "wire-counter")
        self.link.subscribe("loa/v1/+/+/content", self._content)
        self.link.subscribe(topics.all_clusters("request"), self._request)
        self.link.subscribe(topics.all_clusters("event"), self._event)
        self.link.start()
        assert self.link.wait_connected(10)
        # Our own message coming back proves the subscriptions are in place.
        self.link.publish(self.PROBE, b"probe")
        wait_until(lambda: any(s.topic == self.PROBE for s in self.seen()), 10, "the probe")

    def _content(self, topic: str, payload: bytes) -> None:
        index = None if topic == self.PROBE else chunks.decode(payload).index
        with self._lock:
            self._seen.append(Seen(topic, index=index))

    def _request(self, topic: str, payload: bytes) -> None:
        try:
            request = parse(ChunkRequest, body_of(payload))
        except MessageError:
            request = None
        with self._lock:
            self._seen.append(Seen(topic, request=request))

    def _event(self, topic: str, payload: bytes) -> None:
        events, problems = parse_events(body_of(payload))
        assert not problems, problems
        with self._lock:
            self._seen.extend(Seen(topic, event=event) for event in events)

    def seen(self, since: int = 0) -> list[Seen]:
        with self._lock:
            return self._seen[since:]

    def mark(self) -> int:
        with self._lock:
            return len(self._seen)

    def chunks(self, since: int = 0) -> list[tuple[str, int]]:
        return [(s.topic, s.index) for s in self.seen(since) if s.index is not None]

    def requests(self, since: int = 0) -> list[ChunkRequest | None]:
        return [s.request for s in self.seen(since) if s.topic.endswith("/request")]

    def events(self, since: int = 0) -> list[tuple[str, str | None]]:
        return [(s.event.kind, s.event.play_id) for s in self.seen(since) if s.event]


class Rig:
    def __init__(self, tmp: Path, broker: MosquittoBroker) -> None:
        require("ffmpeg", shutil.which("ffmpeg") is not None, "apt-get install ffmpeg")
        self.tmp = tmp
        self.clock = ManualClock(datetime.now(UTC))
        generate_keypair(tmp / "controller.key", tmp / "controller.pub")
        (tmp / "fleet.yaml").write_text(FLEET, encoding="utf-8")
        (tmp / "playlists").mkdir()
        settings = Settings(
            broker=broker.address, fleet_path=tmp / "fleet.yaml",
            playlist_paths=[tmp / "playlists"], store_url=f"sqlite:///{tmp / 'controller.db'}",
            private_key=tmp / "controller.key", content_dir=tmp / "content",
            audio=AudioSettings(chunk_size=CHUNK_SIZE), reload_interval_s=0,
            client_id=f"loa-controller-{tmp.name[:40]}",
        )
        self.controller = Controller(settings, clock=self.clock)
        self.controller.start()
        self.broker = broker.address
        self.relay = Relay(broker.address)
        self.wire = Wire(broker.address)
        self.publisher = MqttLink(broker.address, "test-distributor")
        self.publisher.start()
        assert self.publisher.wait_connected(10)
        self.agent: Agent | None = None

    def start_agent(self) -> Agent:
        """The agent of ME, connected through the relay, on its data folder."""
        identity = registered_identity(self.controller, ME, self.tmp / "agents" / ME)
        started = self.clock.now()
        agent = Agent(
            cluster_id=ME,
            link=MqttLink(self.relay.address, f"loa-agent-{ME}",
                          will=identity.will(ME, started)),
            verifier=Verifier(load_public_key(self.tmp / "controller.pub")),
            output=NullBackend(), clock=self.clock, data_dir=self.tmp / "agents" / ME,
            groups=self.controller.fleet.groups_of(ME), durable=False,
            identity=identity,
        )
        agent.start()
        self.agent = agent
        wait_until(agent.ready, 20, "the agent to connect")
        self.wait_state("online")
        return agent

    def state(self) -> str | None:
        health = self.controller.store.clusters.health().get(ME)
        return health.state if health is not None else None

    def wait_state(self, state: str) -> None:
        wait_until(lambda: self.state() == state, 20, f"the controller to see {ME} {state}")

    def held(self, agent: Agent) -> list[tuple[str, int, int]]:
        """The downloads under way, from the agent's heartbeat."""
        return [(t.sha256, t.held, t.chunks) for t in agent.heartbeat().transfers or []]

    def kinds(self, play_id: str) -> list[str]:
        return [e["kind"] for e in self.controller.store.events.of_play(play_id)
                if e["cluster"] == ME]

    def wait_kind(self, play_id: str, kind: str) -> None:
        wait_until(lambda: kind in self.kinds(play_id), 20, f"{kind} of {play_id}")

    def send_broken_off(
        self, audio: PreparedAudio, held: int, break_off: Callable[[], None]
    ) -> PlaySpec:
        """Send a play of audio to the commune, calling break_off once ME's agent holds
        `held` of its chunks; the rest goes out after that."""
        agent = self.agent
        assert agent is not None

        def before() -> None:
            sha = audio.sha256
            count = audio.content_ref().chunks
            wait_until(lambda: self.held(agent) == [(sha, held, count)], 10,
                       f"the agent to hold {held} of {count} chunks")
            break_off()

        distributor = Distributor(
            StopBeforeChunk(self.publisher, held, before), self.controller.signer,
            self.controller.store.plays, lambda: self.controller.fleet, self.clock,
            lambda _sha: None, chunk_size=CHUNK_SIZE, holdings=self.controller.holdings,
            keys=self.controller.keys,
        )
        now = self.clock.now()
        spec = PlaySpec(
            play_id="ban-tin-sang", bulletin="Bản tin sáng", level="normal",
            start_at=now + timedelta(minutes=1), latest_start=now + timedelta(minutes=6),
            items=[audio], clusters=[ME, NEIGHBOUR],
        )
        distributor.send_play(spec)
        return spec

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        self.publisher.stop()
        self.wire.link.stop()
        self.relay.close()
        self.controller.stop()


@pytest.fixture
def rig(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[Rig]:
    r = Rig(tmp_path, mosquitto_broker)
    try:
        r.start_agent()
        yield r
    finally:
        r.close()


def resume_and_play(rig: Rig, agent: Agent, audio: PreparedAudio, spec: PlaySpec,
                    held: int) -> None:
    """The agent, back online and holding chunks 0..held-1, asks for exactly the others,
    gets exactly those once on its own topic, reports the audio delivered and plays it."""
    sha, count = audio.sha256, audio.content_ref().chunks
    group = topics.group_topic("tinh-thu", "content")  # the whole commune was targeted
    # The first send, whole on the wire (chunks held..count-1 while the agent was away).
    wait_until(lambda: len(rig.wire.chunks()) == count, 10, "every chunk of the first send")
    assert rig.wire.chunks() == [(group, i) for i in range(count)]
    assert rig.wire.requests() == []
    assert rig.held(agent) == [(sha, held, count)]  # nothing arrived while it was away
    since = rig.wire.mark()
    resent = rig.controller.distributor.stats.resent_chunks

    rig.clock.advance(PAST_STALL)
    agent.relay_changed()  # a heartbeat now: the agent's worker looks at the clock again
    rig.wait_kind(spec.play_id, "delivered")
    wait_until(lambda: rig.controller.holdings.held_by({sha}, [ME])[sha] == {ME}, 10,
               "the controller to record the holding")

    missing = list(range(held, count))
    own = topics.cluster_topic(ME, "content")
    wait_until(lambda: len(rig.wire.chunks(since)) >= len(missing), 10,
               "the resent chunks on the wire")
    assert [(r.cluster, r.sha256, r.missing) if r else None
            for r in rig.wire.requests(since)] == [(ME, sha, missing)]
    assert rig.wire.chunks(since) == [(own, i) for i in missing]
    assert rig.controller.distributor.stats.resent_chunks - resent == len(missing)
    assert rig.held(agent) == []
    assert agent.status().queue[0].play_id == spec.play_id

    rig.clock.set(spec.start_at)
    agent.relay_changed()
    rig.wait_kind(spec.play_id, "finished")
    kinds = rig.kinds(spec.play_id)
    for kind in ("received", "delivered", "playing", "finished"):
        assert kinds.count(kind) == 1, kinds
    # Everything the agent sent before its `finished` has reached the wire counter by now.
    wait_until(lambda: ("finished", spec.play_id) in rig.wire.events(since), 10,
               "the finished event on the wire")
    assert len(rig.wire.requests(since)) == 1  # asked once, never again
    assert rig.wire.chunks(since) == [(own, i) for i in missing]


def bulletin(rig: Rig) -> tuple[PreparedAudio, int]:
    """Two seconds of tone as Opus (several chunks) and how many the agent gets first."""
    audio = rig.controller.library.prepare([tone(rig.tmp / "bulletin.wav", 2.0)])
    count = audio.content_ref().chunks
    assert count >= 4, count
    return audio, count // 2


def test_a_link_dropped_mid_transfer_resumes_with_only_the_missing_chunks(rig: Rig) -> None:
    agent = rig.agent
    assert agent is not None
    audio, held = bulletin(rig)

    def drop_link() -> None:
        rig.relay.cut()
        rig.wait_state("offline")  # its Last Will: the broker has dropped its session

    spec = rig.send_broken_off(audio, held, drop_link)
    rig.relay.restore()
    wait_until(agent.ready, 20, "the agent to reconnect by itself")
    rig.wait_state("online")
    resume_and_play(rig, agent, audio, spec, held)


def test_a_restarted_agent_keeps_its_partial_chunks_and_fetches_only_the_rest(
    rig: Rig,
) -> None:
    first = rig.agent
    assert first is not None
    audio, held = bulletin(rig)

    def stop_agent() -> None:
        first.stop()
        rig.wait_state("offline")

    spec = rig.send_broken_off(audio, held, stop_agent)
    again = rig.start_agent()  # a new agent on the same data folder: only its disk is left
    resume_and_play(rig, again, audio, spec, held)
