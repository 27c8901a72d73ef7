"""Proof of play cannot be forged or erased: the controller's intake takes only what a
cluster's registered key signed (controller/trust.py, controller/intake.py).

A real broker and the real intake; the cluster c1's agent is played by a link that signs
as the agent does (device_agent.identity.AgentIdentity), the forger by another link that
publishes on c1's topics what anyone on the broker could: unsigned messages, or messages
signed with a key of its own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from agent_support import Keys
from conftest import MosquittoBroker, wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.intake import Intake
from controller.store import Store
from controller.trust import ClusterKeys
from device_agent.identity import AgentIdentity
from protocol import topics
from protocol.clock import ManualClock
from protocol.messages import Event, EventKind, Heartbeat, State
from protocol.mqtt import MqttLink
from protocol.signing import Channel, canonical

T0 = datetime(2026, 12, 6, 6, 0, tzinfo=UTC)
OUTBOX = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
PLAY = "ban-tin-sang@20261206T060000Z"


def event(seq: int, kind: EventKind, at: datetime, cluster: str = "c1", **extra: Any) -> Any:
    """An event as the JSON value an agent sends."""
    ev = Event(cluster=cluster, outbox=OUTBOX, seq=seq, at=at, kind=kind, play_id=PLAY,
               bulletin="Bản tin sáng", level="normal", **extra)  # fmt: skip
    return json.loads(ev.to_json())


def jsonable(model: State | Heartbeat) -> Any:
    return json.loads(model.to_json())


@dataclass
class Rig:
    intake: Intake
    store: Store
    keys: ClusterKeys
    clock: ManualClock
    agent: MqttLink  # c1's agent
    forger: MqttLink  # anyone else on the broker
    identity: AgentIdentity  # c1's registered key
    states: list[tuple[str, str]]

    def signed(self, channel: Channel, body: Any, cluster: str = "c1", qos: int = 1,
               retain: bool = False, identity: AgentIdentity | None = None) -> None:  # fmt: skip
        """What c1's agent (or the given identity) publishes: body, signed."""
        payload = (identity or self.identity).seal(channel, body)
        self.agent.publish(topics.cluster_topic(cluster, channel), payload, qos, retain)

    def forge(self, channel: Channel, payload: bytes, cluster: str = "c1",
              retain: bool = False) -> None:  # fmt: skip
        """What a forger publishes, once the intake has dealt with it (whatever it did)."""
        received = self.intake.stats.received
        self.forger.publish(topics.cluster_topic(cluster, channel), payload, 1, retain)
        wait_until(lambda: self.intake.stats.received > received, 15, "the forgery received")
        self.settle()

    def settle(self) -> None:
        """Wait until what was received has been stored, and the writer looked again."""
        sweeps = self.intake.stats.sweeps
        wait_until(lambda: self.intake.drained() and self.intake.stats.sweeps > sweeps + 1,
                   5, "the intake to store what it took")  # fmt: skip

    def row(self, cluster: str = "c1") -> Any:
        return {r.id: r for r in self.store.clusters.fleet_rows()}.get(cluster)

    def health(self, cluster: str = "c1") -> Any:
        return self.store.clusters.health().get(cluster)

    def online(self) -> None:
        """c1 says online and beats, until the intake has both (its subscriptions may
        reach the broker after the first messages)."""
        count = 0

        def seen() -> bool:
            nonlocal count
            health = self.health()
            if health is not None and health.state == "online" and health.heartbeat:
                return True
            count += 1
            self.signed("state", jsonable(State(cluster="c1", state="online", at=T0)))
            self.signed("heartbeat", jsonable(
                Heartbeat(cluster="c1", at=T0 + timedelta(seconds=count), uptime_s=count,
                          relay="off")
            ), qos=0)  # fmt: skip
            return False

        wait_until(seen, 10, "c1 online")


def _stranger() -> AgentIdentity:
    return AgentIdentity(Ed25519PrivateKey.generate())


@pytest.fixture
def rig(mosquitto_broker: MosquittoBroker, tmp_path: Path) -> Iterator[Rig]:
    yield from _rig(mosquitto_broker, tmp_path, require_signed=True)


def _rig(broker: MosquittoBroker, tmp_path: Path, *, require_signed: bool) -> Iterator[Rig]:
    clock = ManualClock(T0)
    store = Store(f"sqlite:///{tmp_path / 'controller.db'}")
    store.clusters.sync_fleet([(c, c, "xa", "Xã") for c in ("c1", "c2", "c3")])
    identity = AgentIdentity(Ed25519PrivateKey.generate())
    keys = ClusterKeys(require_signed=require_signed)
    keys.replace_all({"c1": (identity.key_id, identity.public_key)})
    link = MqttLink(broker.address, f"test-controller-{tmp_path.name[:30]}")
    intake = Intake(link, store, Keys().signer, clock, keys=keys)
    states: list[tuple[str, str]] = []
    lock = threading.Lock()

    def on_state(cluster: str, state: str) -> None:
        with lock:
            states.append((cluster, state))

    intake.add_state_listener(on_state)
    intake.start()
    link.start()
    agent = MqttLink(broker.address, "test-agent-c1")
    forger = MqttLink(broker.address, "test-forger")
    agent.start()
    forger.start()
    assert link.wait_connected(10)
    assert agent.wait_connected(10)
    assert forger.wait_connected(10)
    try:
        yield Rig(intake, store, keys, clock, agent, forger, identity, states)
    finally:
        agent.stop()
        forger.stop()
        intake.stop()
        link.stop()
        store.close()


# --- the findings -------------------------------------------------------------------------


def test_a_forged_finished_signed_by_no_registered_key_is_not_stored(rig: Rig) -> None:
    """Unsigned, signed by a key of the forger's own, or claiming c1's key id: refused,
    so nothing says c1 played what it never played."""
    rig.online()
    finished = event(1, "finished", T0)
    rig.forge("event", json.dumps(finished).encode())
    rig.forge("event", _stranger().seal("event", finished))
    claimed = json.loads(_stranger().seal("event", finished))
    sig = claimed.pop("sig")
    claimed["key"] = rig.identity.key_id  # c1's key id, without c1's key
    rig.forge("event", canonical(claimed)[:-1] + b',"sig":"' + sig.encode() + b'"}')
    # A well-formed message for another channel, signed by c1, replayed as an event.
    rig.forge("event", rig.identity.seal("heartbeat", finished))
    assert rig.store.events.count() == 0
    assert rig.store.events.of_play(PLAY) == []
    assert rig.row().last_result is None
    assert rig.intake.stats.refused == 4
    assert rig.keys.refused == 4


def test_forged_events_ahead_of_the_agents_numbers_do_not_make_its_own_dropped(rig: Rig) -> None:
    rig.online()
    for seq in (1, 2, 3):  # the agent's outbox and its next numbers, guessed
        rig.forge("event", json.dumps(event(seq, "failed", T0, reason="forged")).encode())
        rig.forge("event", _stranger().seal("event", event(seq, "failed", T0)))
    real = [event(1, "received", T0), event(2, "playing", T0), event(3, "finished", T0)]
    rig.signed("event", real)
    wait_until(lambda: rig.intake.stats.events == 3, 15, "the agent's three events stored")
    assert rig.intake.stats.duplicates == 0
    stored = rig.store.events.of_play(PLAY)
    assert [(e["seq"], e["kind"], e["key_id"]) for e in stored] == [
        (1, "received", rig.identity.key_id),
        (2, "playing", rig.identity.key_id),
        (3, "finished", rig.identity.key_id),
    ]


def test_a_forged_failed_dated_an_hour_earlier_does_not_override_a_real_finished(
    rig: Rig,
) -> None:
    rig.online()
    rig.signed("event", [event(1, "playing", T0), event(2, "finished", T0 + timedelta(minutes=5))])
    wait_until(lambda: rig.intake.stats.events == 2, 15, "the real finished stored")
    early = T0 - timedelta(hours=1)
    forged = event(3, "failed", early, reason="amplifier burnt")
    rig.forge("event", json.dumps(forged).encode())
    rig.forge("event", _stranger().seal("event", forged))
    assert rig.store.events.count("failed") == 0
    assert rig.store.events.play_states(PLAY) == {"c1": "finished"}
    assert rig.row().last_result == "finished"


def test_a_forged_retained_offline_does_not_take_a_live_cluster_offline(rig: Rig) -> None:
    rig.online()
    offline = jsonable(State(cluster="c1", state="offline"))
    rig.forge("state", json.dumps(offline).encode(), retain=True)
    rig.forge("state", _stranger().seal("state", offline), retain=True)
    assert rig.health().state == "online"
    assert ("c1", "offline") not in rig.states


def test_forged_state_and_heartbeat_do_not_bring_an_absent_cluster_online_relay_on(
    rig: Rig,
) -> None:
    """c2 has no agent running (and, here, no registered key): a forged retained online
    and a heartbeat with its relay on change nothing."""
    rig.online()  # the intake is subscribed
    online = jsonable(State(cluster="c2", state="online", at=T0))
    beat = jsonable(Heartbeat(cluster="c2", at=T0, uptime_s=5.0, relay="on"))
    forgeries: list[tuple[Channel, Any]] = [("state", online), ("heartbeat", beat)]
    for channel, body in forgeries:
        rig.forge(channel, json.dumps(body).encode(), cluster="c2", retain=channel == "state")
        rig.forge(channel, _stranger().seal(channel, body), cluster="c2")
    # Signed by c1's key, but on c2's topic: c1's key is not c2's.
    rig.forge("heartbeat", rig.identity.seal("heartbeat", beat), cluster="c2")
    health = rig.health("c2")
    assert health.state != "online"
    assert health.heartbeat is None
    assert rig.row("c2").last_seen is None


def test_replayed_signed_messages_do_not_bring_a_cluster_back_or_switch_its_relay(
    rig: Rig,
) -> None:
    """Signed messages captured from c1 and sent again are old: its online, after its
    Last Will, and a heartbeat it signed before the newest one taken."""
    rig.online()
    captured_online = rig.identity.seal(
        "state", jsonable(State(cluster="c1", state="online", at=T0 + timedelta(minutes=1)))
    )
    states = rig.intake.stats.states
    rig.agent.publish(topics.cluster_topic("c1", "state"), captured_online, 1, True)
    wait_until(lambda: rig.intake.stats.states > states, 15, "the online taken")
    captured_beat = rig.identity.seal("heartbeat", jsonable(
        Heartbeat(cluster="c1", at=T0 + timedelta(minutes=1), uptime_s=60.0, relay="on")
    ))
    newer = rig.intake.stats.heartbeats
    rig.signed("heartbeat", jsonable(
        Heartbeat(cluster="c1", at=T0 + timedelta(minutes=2), uptime_s=120.0, relay="off")
    ), qos=0)  # fmt: skip
    wait_until(lambda: rig.intake.stats.heartbeats > newer, 15, "the newer heartbeat")
    replays = rig.intake.stats.replays
    rig.forger.publish(topics.cluster_topic("c1", "heartbeat"), captured_beat, 0)
    wait_until(lambda: rig.intake.stats.replays > replays, 15, "the old heartbeat refused")
    assert rig.health().heartbeat["relay"] == "off"

    # c1's agent dies: its Last Will.
    rig.signed("state", jsonable(State(cluster="c1", state="offline", at=T0)))
    wait_until(lambda: rig.health().state == "offline", 15, "the Last Will")
    replays = rig.intake.stats.replays
    rig.forger.publish(topics.cluster_topic("c1", "state"), captured_online, 1, True)
    wait_until(lambda: rig.intake.stats.replays > replays, 15, "the old online refused")
    assert rig.health().state == "offline"


# --- judged within the identity that signed ----------------------------------------------


@pytest.fixture
def upgrading(mosquitto_broker: MosquittoBroker, tmp_path: Path) -> Iterator[Rig]:
    """require_signed_events: false, as while agents that did not sign are upgraded."""
    yield from _rig(mosquitto_broker, tmp_path, require_signed=False)


def test_while_upgrading_unsigned_events_count_only_for_clusters_without_a_key(
    upgrading: Rig,
) -> None:
    rig = upgrading
    rig.online()
    # c3 has no key yet: an old agent's unsigned event is taken, without a key.
    rig.forger.publish(topics.cluster_topic("c3", "event"),
                       json.dumps(event(1, "finished", T0, cluster="c3")).encode())  # fmt: skip
    wait_until(lambda: rig.intake.stats.events == 1, 15, "the unsigned event of c3")
    assert rig.store.events.of_play(PLAY)[0]["key_id"] == ""
    # c1 has a registered key: unsigned is refused even now.
    rig.forge("event", json.dumps(event(1, "finished", T0)).encode())
    assert rig.store.events.count() == 1


def test_sequence_numbers_are_judged_within_the_identity_that_signed(upgrading: Rig) -> None:
    """A number taken by another identity is no duplicate; under one's own, the same
    event again is a duplicate and a different one a conflict, kept apart."""
    rig = upgrading
    rig.online()
    c3 = _stranger()
    # Before c3 is enrolled, a forger takes its outbox's first number, unsigned.
    rig.forger.publish(topics.cluster_topic("c3", "event"),
                       json.dumps(event(1, "failed", T0, cluster="c3")).encode())  # fmt: skip
    wait_until(lambda: rig.intake.stats.events == 1, 15, "the forged event taken")
    # c3 is enrolled; its agent's own seq 1 is its own identity's, and is stored.
    rig.keys.replace_all({
        "c1": (rig.identity.key_id, rig.identity.public_key), "c3": (c3.key_id, c3.public_key)
    })
    rig.signed("event", event(1, "finished", T0, cluster="c3"), cluster="c3", identity=c3)
    wait_until(lambda: rig.intake.stats.events == 2, 15, "c3's own seq 1 stored")
    # The same event again is a duplicate; another event under that number, a conflict.
    rig.signed("event", event(1, "finished", T0, cluster="c3"), cluster="c3", identity=c3)
    wait_until(lambda: rig.intake.stats.duplicates == 1, 15, "the resend dropped")
    rig.signed("event", event(1, "missed", T0, cluster="c3"), cluster="c3", identity=c3)
    wait_until(lambda: rig.intake.stats.conflicts == 1, 15, "the conflict")
    stored = [(e["key_id"], e["kind"]) for e in rig.store.events.of_play(PLAY)]
    assert stored == [("", "failed"), (c3.key_id, "finished")]
    assert rig.store.events.count_conflicts() == 1
    acks = rig.intake.stats.acks
    wait_until(lambda: rig.intake.stats.acks > acks, 15, "the conflict acknowledged too")
