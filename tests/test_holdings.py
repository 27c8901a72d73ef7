"""Audio a cluster already holds is not sent again; a cluster that lacks it gets it alone.

A real controller and real agents (null output, own caches) on a real mosquitto, and a
client that counts every message on the command, content and request topics, as the
broker hands them to the agents. Fleet (tests/web_rig.py): commune xa-a with villages
ap-a1 (a-01, a-02) and ap-a2 (a-03); commune xa-b (b-01). The pruning of the holdings
table is tested on a store alone, with a manual clock.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from agent_support import CHUNK_SIZE, content, play_body
from conftest import MosquittoBroker, wait_until
from identity_support import registered_identity
from web_rig import WebRig

from controller.audio import PreparedAudio
from controller.cli import main as cli_main
from controller.distribution import PlaySpec
from controller.holdings import Holdings
from controller.samples import tone
from controller.store import Store
from device_agent.agent import Agent
from device_agent.output import NullBackend
from protocol import topics
from protocol.clock import ManualClock, SystemClock
from protocol.messages import Address, Event
from protocol.mqtt import Link, MqttLink
from protocol.signing import Verifier, load_public_key

pytestmark = pytest.mark.slow

XA_A = ["a-01", "a-02", "a-03"]


MARKER = "loa/test/wire-counter/marker"


class WireCounter:
    """Messages and bytes per topic, seen by a subscriber like any agent."""

    def __init__(self, rig: WebRig) -> None:
        self._lock = threading.Lock()
        self.messages: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self._markers: set[bytes] = set()
        self.link = MqttLink(rig.broker, "wire-counter")
        for pattern in ("loa/v1/+/+/content", "loa/v1/+/+/command", "loa/v1/cluster/+/request"):
            self.link.subscribe(pattern, self._count)
        self.link.subscribe(MARKER, self._marker)
        self.link.start()
        assert self.link.wait_connected(10)

    def _count(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.messages[topic] += 1
            self.bytes[topic] += len(payload)

    def _marker(self, _topic: str, payload: bytes) -> None:
        with self._lock:
            self._markers.add(payload)

    def flush(self, links: Iterable[Link]) -> None:
        """Return once everything these links published so far has been counted.

        Each link publishes a marker after what it already sent; the broker hands one
        client's messages to a subscriber in the order it received them, so once every
        marker is here, whatever those links published before is counted too.
        """
        tokens = set()
        for link in links:
            token = secrets.token_bytes(8)
            tokens.add(token)
            link.publish(MARKER, token)

        def arrived() -> bool:
            with self._lock:
                return tokens <= self._markers

        wait_until(arrived, 10, "the markers published after everything else")

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        with self._lock:
            return Counter(self.messages), Counter(self.bytes)

    def since(
        self, before: tuple[Counter[str], Counter[str]], channel: str
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Messages and bytes per topic of one channel since the snapshot."""
        messages, sizes = self.snapshot()
        return (
            {t: n - before[0][t] for t, n in messages.items()
             if t.endswith(f"/{channel}") and n > before[0][t]},
            {t: n - before[1][t] for t, n in sizes.items()
             if t.endswith(f"/{channel}") and n > before[1][t]},
        )


@pytest.fixture
def rig(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[WebRig]:
    r = WebRig(tmp_path, mosquitto_broker.address)
    r.start(agents=XA_A, web=False)
    try:
        yield r
    finally:
        r.stop()


def send(rig: WebRig, play_id: str, audio: PreparedAudio, clusters: list[str]) -> None:
    now = rig.controller.clock.now()
    rig.controller.distributor.send_play(PlaySpec(
        play_id=play_id, bulletin=f"Bản tin {play_id}", level="normal",
        start_at=now + timedelta(hours=1), latest_start=now + timedelta(hours=1, minutes=5),
        items=[audio], clusters=clusters,
    ))
    rig.wait_states(play_id, {c: {"delivered"} for c in clusters})


def wait_held(rig: WebRig, audio: PreparedAudio, clusters: list[str]) -> None:
    holdings = rig.controller.holdings
    wait_until(
        lambda: holdings.held_by({audio.sha256}, clusters)[audio.sha256] == set(clusters),
        15, f"the controller to know that {clusters} hold the audio",
    )


def test_a_repeat_sends_no_audio_and_a_newcomer_gets_it_on_its_own_topic(rig: WebRig) -> None:
    wire = WireCounter(rig)
    controller = rig.controller
    # 30 s at 24 kb/s: two chunks of 64 KiB.
    bulletin = controller.library.prepare([tone(rig.tmp / "bulletin.wav", 30.0)])
    chunks = bulletin.content_ref().chunks
    assert chunks >= 2

    # 1. First delivery: nobody holds it; once to the commune's group topic.
    before = wire.snapshot()
    send(rig, "lan-1", bulletin, XA_A)
    wait_held(rig, bulletin, XA_A)
    messages, sizes = wire.since(before, "content")
    assert messages == {"loa/v1/group/xa-a/content": chunks}
    assert sizes["loa/v1/group/xa-a/content"] >= bulletin.content_ref().size

    # 2. The same audio again to the same clusters: the command only, no chunk, no request.
    before = wire.snapshot()
    requests_before = controller.distributor.stats.resent_chunks
    send(rig, "lan-2", bulletin, XA_A)
    # Nothing else was published: by the controller (chunks after the command) nor by the
    # agents (requests for chunks, before they said they hold the audio).
    wire.flush([controller.link, *(rig.agents[cid]._link for cid in XA_A)])
    assert wire.since(before, "content") == ({}, {})
    assert wire.since(before, "request") == ({}, {})
    assert controller.distributor.stats.resent_chunks == requests_before
    commands, command_bytes = wire.since(before, "command")
    repeat_bytes = command_bytes["loa/v1/group/xa-a/command"]
    assert commands["loa/v1/group/xa-a/command"] == 1
    assert repeat_bytes <= 2048, f"a repeat cost each agent {repeat_bytes} bytes"
    for cid in XA_A:  # a cache hit: delivered at once from what the agent holds
        record = rig.agents[cid]._player.record("lan-2")
        assert record is not None
        assert record.delivered

    # 3. New audio held by one village (a-01, a-02), then sent to the whole commune: only
    # a-03 lacks it, so it alone gets the chunks, on its own topic.
    notice = controller.library.prepare([tone(rig.tmp / "notice.wav", 8.0, freq=660)])
    before = wire.snapshot()
    send(rig, "thong-bao-1", notice, ["a-01", "a-02"])
    wait_held(rig, notice, ["a-01", "a-02"])
    messages, _ = wire.since(before, "content")
    assert messages == {"loa/v1/group/ap-a1/content": notice.content_ref().chunks}

    before = wire.snapshot()
    send(rig, "thong-bao-2", notice, XA_A)
    wait_held(rig, notice, XA_A)
    messages, _ = wire.since(before, "content")
    assert messages == {"loa/v1/cluster/a-03/content": notice.content_ref().chunks}
    wire.link.stop()


def test_a_stale_holding_is_dropped_when_the_agent_asks_for_the_chunks(rig: WebRig) -> None:
    """The controller believes a-03 holds audio it does not (evicted, box replaced): the
    play goes without chunks, the agent asks for them, gets them and plays; the holding
    is dropped on the request and learnt again from the delivery."""
    controller = rig.controller
    audio = controller.library.prepare([tone(rig.tmp / "old.wav", 3.0, freq=550)])
    controller.holdings.add("a-03", [audio.sha256], controller.clock.now())
    resent = controller.distributor.stats.resent_chunks
    send(rig, "cu-1", audio, ["a-03"])
    assert controller.distributor.stats.resent_chunks - resent == audio.content_ref().chunks
    assert rig.agents["a-03"]._cache.has(audio.sha256)
    wait_held(rig, audio, ["a-03"])


def test_a_full_cache_evicts_on_delivery_and_a_stale_holding_heals(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    """An agent with a tiny quota: audio of a scheduled play is kept although over quota;
    once that play is withdrawn, the next completed download evicts it. The controller
    still believes the agent holds it, so the next play of it carries no chunk: the agent
    asks, gets exactly those chunks and the holding is learnt again."""
    r = WebRig(tmp_path, mosquitto_broker.address)
    r.start(agents=[], web=False)
    try:
        cid = "b-01"
        fleet = r.controller.fleet
        identity = registered_identity(r.controller, cid, r.tmp / "agents" / cid)
        started = SystemClock().now()
        agent = Agent(
            cluster_id=cid,
            link=MqttLink(r.broker, f"loa-agent-{cid}", will=identity.will(cid, started)),
            verifier=Verifier(load_public_key(r.tmp / "controller.pub")),
            output=NullBackend(), clock=SystemClock(), data_dir=r.tmp / "agents" / cid,
            groups=fleet.groups_of(cid), durable=False, max_content_bytes=1,
            identity=identity,
        )
        agent.start()
        r.agents[cid] = agent
        wait_until(lambda: r.state(cid) == "online", 20, "b-01 online")
        cache = agent._cache
        first = r.controller.library.prepare([tone(r.tmp / "first.wav", 2.0)])
        second = r.controller.library.prepare([tone(r.tmp / "second.wav", 2.0, freq=330)])

        send(r, "mot", first, [cid])
        assert cache.has(first.sha256)  # over quota, but scheduled: kept
        r.controller.distributor.send_stop("mot", [cid])
        wait_until(lambda: r.controller.store.events.play_states("mot").get(cid) == "interrupted",
                   15, "the withdrawn play to be reported")
        send(r, "hai", second, [cid])
        wait_until(lambda: not cache.has(first.sha256), 10, "the unneeded audio to be evicted")
        assert cache.has(second.sha256)

        resent = r.controller.distributor.stats.resent_chunks
        send(r, "ba", first, [cid])
        assert r.controller.distributor.stats.resent_chunks - resent == first.content_ref().chunks
        wait_held(r, first, [cid])
    finally:
        r.stop()


def fleet_json(rig: WebRig, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    config = rig.tmp / "controller.yaml"
    config.write_text(
        f"broker_url: mqtt://{rig.broker.host}:{rig.broker.port}\n"
        "fleet: fleet.yaml\nplaylists: [playlists]\n"
        f"store_url: sqlite:///{rig.tmp / 'controller.db'}\n"
        "private_key: controller.key\ncontent_dir: content\n",
        encoding="utf-8",
    )
    capsys.readouterr()
    for args in (["--json"], []):
        with pytest.raises(SystemExit) as done:
            cli_main(["fleet", "--config", str(config), *args])
        assert done.value.code == 0
        if args:
            rows = json.loads(capsys.readouterr().out)
    table = capsys.readouterr().out
    return {r["cluster"]: {**r, "line": next(
        x for x in table.splitlines() if x.startswith(r["cluster"] + " "))} for r in rows}


def test_fleet_shows_content_held_and_a_transfer_under_way(
    rig: WebRig, capsys: pytest.CaptureFixture[str]
) -> None:
    controller = rig.controller
    bulletin = controller.library.prepare([tone(rig.tmp / "bulletin.wav", 3.0)])
    send(rig, "ban-tin", bulletin, XA_A)
    wait_held(rig, bulletin, XA_A)
    before = fleet_json(rig, capsys)
    for cid in XA_A:
        assert before[cid]["content"] == {
            "scheduled": 1, "held": 1, "missing": [], "transfers": []
        }
        assert "1/1 held" in before[cid]["line"]
    assert before["b-01"]["content"]["scheduled"] == 0

    # A play for a-03 whose audio is half there (this controller never had it, so the
    # agent's requests for the rest go unanswered): its heartbeat shows the transfer.
    audio = content(size=4 * CHUNK_SIZE)
    now = controller.clock.now()
    body = play_body("nua-chung", [audio.ref], now + timedelta(hours=1))
    controller.store.plays.record(
        play_id=body.play_id, programme=None, bulletin=body.bulletin, level=body.level,
        start_at=body.start_at, latest_start=body.latest_start, duration_s=1.0,
        items=[audio.ref.sha256], cluster_ids=["a-03"], urgent=False, sent_at=now,
    )
    link = MqttLink(rig.broker, "test-sender")
    link.start()
    assert link.wait_connected(10)
    cmd = controller.signer.command(body, Address(clusters=["a-03"]), now, timedelta(hours=2))
    link.publish(topics.cluster_topic("a-03", "command"), cmd.to_json())
    for frame in audio.frames()[:2]:
        link.publish(topics.cluster_topic("a-03", "content"), frame)
    agent = rig.agents["a-03"]
    wait_until(lambda: agent._cache.transfers() == [(audio.ref.sha256, 2, 4)], 10,
               "the agent to hold half the audio")
    agent.relay_changed()  # a heartbeat now rather than in a minute

    def transfers() -> object:
        beat = controller.store.clusters.health()["a-03"].heartbeat or {}
        return beat.get("transfers")

    wait_until(transfers, 10, "a heartbeat with the transfer")
    after = fleet_json(rig, capsys)
    view = after["a-03"]["content"]
    assert view["scheduled"] == 2
    assert view["held"] == 1
    assert view["missing"] == [audio.ref.sha256]
    assert view["transfers"] == [
        {"sha256": audio.ref.sha256, "held": 2, "chunks": 4, "percent": 50}
    ]
    assert "1/2 held, 1 downloading 50%" in after["a-03"]["line"]
    assert "1/1 held" in after["a-01"]["line"]
    link.stop()


# --- pruning: the table does not grow with every bulletin ever delivered --------------------

T0 = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
OLD, RECENT, NEXT, NEW = ("0" * 63 + d for d in "1234")


def pruning_store(tmp_path: Path) -> Store:
    """A store with clusters a-01 and a-02 in the fleet, and three plays: one whose latest
    start is 100 days ago (OLD), one 10 days ago (RECENT), one still to start (NEXT)."""
    store = Store(f"sqlite:///{tmp_path / 'controller.db'}")
    store.clusters.sync_fleet([(c, c, "xa-a", "Xã An") for c in ("a-01", "a-02")])
    for play_id, sha, when in (("cu", OLD, T0 - timedelta(days=100)),
                               ("gan-day", RECENT, T0 - timedelta(days=10)),
                               ("sap-toi", NEXT, T0 + timedelta(hours=2))):
        store.plays.record(
            play_id=play_id, programme=None, bulletin=play_id, level="normal",
            start_at=when - timedelta(minutes=5), latest_start=when, duration_s=1.0,
            items=[sha], cluster_ids=["a-01", "a-02"], urgent=False,
            sent_at=when - timedelta(minutes=35),
        )
    return store


def test_holdings_of_unused_content_and_of_clusters_out_of_the_fleet_are_pruned(
    tmp_path: Path,
) -> None:
    store = pruning_store(tmp_path)
    holdings = Holdings(store, unused_for=timedelta(days=90))
    long_ago = T0 - timedelta(days=120)
    holdings.add("a-01", [OLD, RECENT, NEXT], long_ago)
    holdings.add("a-01", [NEW], T0 - timedelta(days=2))  # in no play, but learnt lately
    holdings.add("a-02", [RECENT, NEXT], long_ago)
    store.clusters.sync_fleet([("a-01", "a-01", "xa-a", "Xã An")])  # a-02 leaves the fleet

    assert holdings.prune(T0) == 3
    assert holdings.held("a-01") == {RECENT, NEXT, NEW}
    assert holdings.held("a-02") == set()
    assert holdings.prune(T0) == 0
    # 89 days on, RECENT's play and NEW's holding are older than 90 days; NEXT's is not.
    assert holdings.prune(T0 + timedelta(days=89)) == 2
    assert holdings.held("a-01") == {NEXT}
    store.close()


def test_recording_deliveries_prunes_once_per_interval_by_its_clock(tmp_path: Path) -> None:
    store = pruning_store(tmp_path)
    clock = ManualClock(T0)
    holdings = Holdings(store, clock=clock, unused_for=timedelta(days=90),
                        prune_every=timedelta(hours=1))
    stale = T0 - timedelta(days=120)

    def delivered(seq: int) -> Event:
        return Event(cluster="a-01", outbox="hop-thu", seq=seq, at=clock.now(),
                     kind="delivered", play_id="sap-toi")

    holdings.add("a-02", [OLD], stale)
    assert holdings.record_delivered([delivered(1)]) == 1  # the first delivery prunes
    assert holdings.held("a-01") == {NEXT}
    assert holdings.held("a-02") == set()
    holdings.add("a-02", [OLD], stale)
    clock.advance(timedelta(minutes=59))
    holdings.record_delivered([delivered(2)])
    assert holdings.held("a-02") == {OLD}  # not again within the hour
    clock.advance(timedelta(minutes=1))
    holdings.record_delivered([delivered(3)])
    assert holdings.held("a-02") == set()
    store.close()
