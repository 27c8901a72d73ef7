"""The controller's silence watch: a cluster from which nothing has come for 1.5 × its
keepalive is marked offline, with the reason, without waiting for the broker's Last
Will, offline from when it was last heard; anything heard from it again brings it back
online from that moment. While the controller's own link is down nobody is silent: the
controller hears nothing because of itself.

The watch alone on plain times, then the intake on a real mosquitto and a real store with
the clock moved by hand. tests/test_agent_health.py freezes a real agent process.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_support import Keys
from conftest import MosquittoBroker, wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.intake import Intake
from controller.silence import SilenceWatch
from controller.store import Store
from controller.trust import ClusterKeys
from device_agent.identity import AgentIdentity
from protocol import topics
from protocol.clock import ManualClock
from protocol.messages import Event, Heartbeat, State
from protocol.mqtt import MqttLink
from protocol.signing import Channel

T0 = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- the watch -------------------------------------------------------------------------------


def test_a_cluster_is_silent_once_1_5_keepalives_pass_without_a_message() -> None:
    watch = SilenceWatch()
    watch.heard("c1", at(0), keepalive_s=10)
    assert watch.next_due() == at(15)
    assert watch.due(at(14.9)) == []
    [silent] = watch.due(at(15))
    assert (silent.cluster, silent.last_heard, silent.keepalive_s) == ("c1", at(0), 10)
    assert silent.reason(at(15)) == (
        "nothing heard for 15.0 s (more than 1.5 × its keepalive of 10 s)"
    )
    assert watch.due(at(100)) == []  # found once, not again until heard


def test_anything_heard_moves_the_deadline_and_the_keepalive_is_remembered() -> None:
    watch = SilenceWatch()
    watch.heard("c1", at(0), keepalive_s=10)
    watch.heard("c1", at(9))  # an event: no keepalive in it, the heartbeat's counts
    assert watch.due(at(15)) == []  # heard at 9: due at 24
    assert watch.next_due() == at(24)
    [silent] = watch.due(at(24))
    assert silent.last_heard == at(9)
    watch.heard("c1", at(30))  # back: watched again with the keepalive it told
    assert watch.next_due() == at(45)


def test_clusters_without_a_keepalive_and_forgotten_ones_are_not_watched() -> None:
    watch = SilenceWatch()
    watch.heard("old-agent", at(0))  # a heartbeat from before the field: Last Will only
    watch.heard("c1", at(0), keepalive_s=10)
    watch.forget("c1")  # its Last Will came
    assert watch.due(at(1000)) == []


def test_a_cluster_has_its_full_time_after_the_controller_listens_again() -> None:
    watch = SilenceWatch()
    watch.heard("c1", at(0), keepalive_s=10)
    # The controller's link came up again at 40 s: nothing could be heard before.
    assert watch.due(at(50), listening_since=at(40)) == []
    assert watch.next_due() == at(55)
    [silent] = watch.due(at(55), listening_since=at(40))
    assert silent.last_heard == at(0)  # what was heard, for the offline time
    assert silent.reason(at(55)).startswith("nothing heard for 55.0 s")


def test_the_heap_holds_one_entry_per_cluster_whatever_the_traffic() -> None:
    watch = SilenceWatch()
    for second in range(60):
        for n in range(1000):
            watch.heard(f"c{n}", at(second), keepalive_s=30)
        watch.due(at(second))
    assert len(watch._heap) == 1000  # the cost the module promises
    assert len(watch.due(at(59 + 45))) == 1000


# --- the intake, with a manual clock ---------------------------------------------------------


@dataclass
class Rig:
    intake: Intake
    store: Store
    clock: ManualClock
    agent: MqttLink
    states: list[tuple[str, str]]
    identity: AgentIdentity  # c1's registered key
    link: MqttLink  # the controller's

    def send(self, channel: Channel, body: object, qos: int = 1) -> None:
        """Publish on c1's topic what its agent would: body, signed with its key."""
        payload = self.identity.seal(channel, body)
        self.agent.publish(topics.cluster_topic("c1", channel), payload, qos=qos)

    def beat(self, keepalive_s: int | None = 10) -> None:
        beat = Heartbeat(cluster="c1", at=self.clock.now(), uptime_s=1.0, keepalive_s=keepalive_s)
        self.send("heartbeat", beat.model_dump(mode="json", exclude_none=True), qos=0)

    def settle(self) -> None:
        """Wait until what was sent is stored and the writer has looked for silence since."""
        sweeps = self.intake.stats.sweeps
        wait_until(lambda: self.intake.drained() and self.intake.stats.sweeps > sweeps + 1,
                   5, "the intake to store and sweep")  # fmt: skip

    def state(self) -> tuple[str, datetime | None, str | None]:
        health = self.store.clusters.health().get("c1")
        if health is None:  # not stored yet
            return "unknown", None, None
        return health.state, health.state_at, health.state_reason


@pytest.fixture
def rig(mosquitto_broker: MosquittoBroker, tmp_path: Path) -> Iterator[Rig]:
    clock = ManualClock(T0)
    store = Store(f"sqlite:///{tmp_path / 'controller.db'}")
    link = MqttLink(mosquitto_broker.address, "test-controller")
    identity = AgentIdentity(Ed25519PrivateKey.generate())
    keys = ClusterKeys()
    keys.replace_all({"c1": (identity.key_id, identity.public_key)})
    intake = Intake(link, store, Keys().signer, clock, keys=keys)
    states: list[tuple[str, str]] = []
    lock = threading.Lock()

    def on_state(cluster: str, state: str) -> None:
        with lock:
            states.append((cluster, state))

    intake.add_state_listener(on_state)
    intake.start()
    link.start()
    agent = MqttLink(mosquitto_broker.address, "test-agent-c1")
    agent.start()
    assert link.wait_connected(10)
    assert agent.wait_connected(10)
    try:
        yield Rig(intake, store, clock, agent, states, identity, link)
    finally:
        agent.stop()
        intake.stop()
        link.stop()
        store.close()


def online(rig: Rig, keepalive_s: int | None = 10) -> None:
    """Say online and beat, again every quarter second: the controller's subscriptions
    may reach the broker after the agent's first messages (MqttLink hides SUBACKs)."""
    last = -1.0

    def seen() -> bool:
        nonlocal last
        if rig.state()[0] == "online" and rig.intake.stats.heartbeats:
            return True
        if time.monotonic() - last >= 0.25:
            state = State(cluster="c1", state="online", at=rig.clock.now())
            rig.send("state", state.model_dump(mode="json"))
            rig.beat(keepalive_s)
            last = time.monotonic()
        return False

    wait_until(seen, 5, "online")


def test_silence_marks_a_cluster_offline_with_the_reason_and_a_late_heartbeat_brings_it_back(
    rig: Rig,
) -> None:
    online(rig)
    rig.clock.advance(14.9)
    rig.settle()
    assert rig.state()[0] == "online"  # within 1.5 × keepalive
    rig.clock.advance(0.1)
    wait_until(lambda: rig.state()[0] == "offline", 5, "offline for silence")
    _, since, reason = rig.state()
    assert since == at(0)  # offline from what was last heard, not from when it was noticed
    assert reason == "nothing heard for 15.0 s (more than 1.5 × its keepalive of 10 s)"
    # The listeners hear of it just after the store has it.
    wait_until(lambda: rig.states[-1:] == [("c1", "offline")], 5, "the state listeners")
    assert rig.intake.stats.silent == 1

    # A late heartbeat: online again from the moment it was heard, the reason gone.
    rig.clock.advance(5)
    rig.beat()
    wait_until(lambda: rig.state()[0] == "online", 5, "back online on a late heartbeat")
    assert rig.state() == ("online", at(20), None)
    wait_until(lambda: rig.states[-1:] == [("c1", "online")], 5, "the state listeners")


def test_an_event_counts_as_a_sign_of_life(rig: Rig) -> None:
    online(rig)
    rig.clock.advance(10)
    event = Event(cluster="c1", outbox="o1", seq=1, kind="received", play_id="p-1",
                  at=rig.clock.now())  # fmt: skip
    rig.send("event", json.loads(event.to_json()))
    wait_until(lambda: rig.intake.stats.events == 1, 5, "the event stored")
    rig.clock.advance(14.9)  # 24.9 s after the heartbeat, 14.9 s after the event
    rig.settle()
    assert rig.state()[0] == "online"
    rig.clock.advance(0.1)
    wait_until(lambda: rig.state()[0] == "offline", 5, "offline 15 s after the event")


def test_an_event_message_of_several_events_stores_the_valid_ones(rig: Rig) -> None:
    """An agent sends the events it committed together in one message (an array); one bad
    event of it is dropped and counted, the others are stored and acknowledged."""
    online(rig)
    acks = rig.intake.stats.acks
    events = [
        json.loads(Event(cluster="c1", outbox="o1", seq=seq, kind=kind, play_id="p-1",
                         at=rig.clock.now()).to_json())
        for seq, kind in [(1, "received"), (2, "delivered"), (3, "playing")]
    ]  # fmt: skip
    events.insert(1, {**events[0], "seq": -1})
    events.append({**events[0], "cluster": "c2"})  # another cluster's, on c1's topic
    rig.send("event", events)
    wait_until(lambda: rig.intake.stats.events == 3, 5, "the three valid events stored")
    assert rig.intake.stats.invalid == 2
    assert "event 1: invalid Event: seq" in (rig.intake.stats.last_error or "")
    assert [e["seq"] for e in rig.store.events.of_play("p-1")] == [1, 2, 3]
    wait_until(lambda: rig.intake.stats.acks > acks, 5, "one ack for the three")
    assert rig.intake.stats.acks == acks + 1


def test_the_last_will_first_keeps_its_time_and_has_no_reason(rig: Rig) -> None:
    online(rig)
    rig.clock.advance(3)
    will = State(cluster="c1", state="offline")
    rig.send("state", json.loads(will.to_json()))
    wait_until(lambda: rig.state()[0] == "offline", 5, "the Last Will")
    rig.clock.advance(60)
    rig.settle()
    assert rig.state() == ("offline", at(3), None)
    assert rig.intake.stats.silent == 0


def test_an_agent_without_a_keepalive_in_its_heartbeat_is_left_to_the_last_will(
    rig: Rig,
) -> None:
    online(rig, keepalive_s=None)
    rig.clock.advance(3600)
    rig.settle()
    assert rig.state()[0] == "online"


def test_while_the_controller_cannot_hear_no_cluster_is_silent(
    rig: Rig, mosquitto_broker: MosquittoBroker
) -> None:
    """The broker goes away for longer than the cluster's silence limit: the controller
    hears nothing, through no fault of the cluster, which stays online; once the link is
    back, the cluster has its full time to be heard again."""
    online(rig)
    mosquitto_broker.stop()
    wait_until(lambda: not rig.link.connected, 10, "the controller's link down")
    rig.clock.advance(60)  # four times the silence limit
    deaf = rig.intake.stats.deaf_sweeps
    wait_until(lambda: rig.intake.stats.deaf_sweeps > deaf + 1, 5, "two sweeps while deaf")
    assert rig.state()[0] == "online"
    mosquitto_broker.start()
    wait_until(lambda: rig.link.connected, 15, "the controller's link back")
    rig.settle()
    assert rig.state()[0] == "online"  # 60 s unheard, but the controller only now listens
    rig.clock.advance(15)
    wait_until(lambda: rig.state()[0] == "offline", 5, "offline 15 s after listening again")
    _, since, reason = rig.state()
    assert since == at(0)  # the time offline is counted from what was heard
    assert reason is not None
    assert reason.startswith("nothing heard for 75.0 s")
