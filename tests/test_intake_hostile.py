"""The intake is not knocked over by what anyone on the broker can write.

Findings these tests hold: one event dated 9999-12-31 at offset -23:59, or with `seq`
2**70, failed its whole storage batch, so real events next to it were lost; integers of
over 4,300 digits logged a full traceback each, past the refusal rate limit; messages
from cluster ids the fleet does not name became rows. Real controller, real mosquitto.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import MosquittoBroker, wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hostile_rig import CLUSTERS, HostileRig, event, hostile_rig

from controller.intake import Intake
from controller.store import Store
from controller.store.events import EventRepository, SignedEvent, StoredEvents
from controller.trust import ClusterKeys
from device_agent.identity import AgentIdentity
from protocol import topics
from protocol.clock import SystemClock
from protocol.mqtt import MqttLink
from protocol.signing import Signer

pytestmark = pytest.mark.slow

FAR_FUTURE = "9999-12-31T23:59:59-23:59"  # not a time in UTC at all


@pytest.fixture
def rig(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[HostileRig]:
    yield from hostile_rig(tmp_path, mosquitto_broker)


def stored(rig: HostileRig, outbox: str) -> int:
    return sum(
        1 for row in rig.controller.store.events.of_play("p-1")
        if row["cluster"] in CLUSTERS and row["outbox"] == outbox
    )


def test_an_event_out_of_range_never_spoils_its_batch(rig: HostileRig) -> None:
    """Each message carries a poisoned event and a good one, fifty times: every good one
    is stored (and acknowledged), no poisoned one is."""
    for n in range(50):
        poison = (event(seq=1000 + n, outbox="poison", at=FAR_FUTURE) if n % 2
                  else event(seq=2**70, outbox="poison"))  # fmt: skip
        rig.wire.events("h-01", [poison, event(seq=n + 1, outbox="good")])
    wait_until(lambda: stored(rig, "good") == 50, 15, "the 50 good events to be stored")
    assert stored(rig, "poison") == 0
    stats = rig.controller.intake.stats
    assert stats.invalid == 50
    assert stats.events == 50
    assert "seq" in (stats.last_error or "") or "at" in (stats.last_error or "")


def test_huge_numbers_are_refused_cheaply_without_tracebacks(
    rig: HostileRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    huge = b"9" * 5000
    for n in range(200):
        body = (b'{"v":1,"cluster":"h-01","outbox":"big","seq":' + huge
                + b',"at":"2026-11-25T06:00:00Z","kind":"received"}')  # fmt: skip
        rig.wire.events("h-01", body if n % 2 else body.replace(b'"seq":', b'"seq":-'))
    # Another cluster's event gets through: what waits from h-01 is bounded on its own.
    rig.wire.events("h-02", event(cluster="h-02", seq=1, outbox="after"))
    wait_until(lambda: stored(rig, "after") == 1, 15, "the good event after them")
    stats = rig.controller.intake.stats
    wait_until(lambda: stats.invalid + stats.dropped == 200, 10, "every message counted")
    assert stats.invalid >= 10
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert tracebacks == []
    lines = [r for r in caplog.records
             if r.levelno >= logging.WARNING and r.name in ("controller.intake", "protocol.mqtt")]
    # The rate limit: 10 a minute of each kind, the rest counted. (With each message's
    # signature checked, the writer may fall behind: drops are a kind of their own.)
    kinds = Counter(r.getMessage().split(" on ")[0] for r in lines)
    assert max(kinds.values()) <= 10, kinds
    assert any("seq" in r.getMessage() for r in lines)


def test_clusters_the_fleet_does_not_name_are_counted_not_stored(rig: HostileRig) -> None:
    ghost = "ghost-01"
    rig.wire.events(ghost, event(cluster=ghost))
    rig.wire.send(topics.cluster_topic(ghost, "state"),
                  {"v": 1, "cluster": ghost, "state": "online"})
    rig.wire.send(topics.cluster_topic(ghost, "heartbeat"),
                  {"v": 1, "cluster": ghost, "at": datetime.now(UTC).isoformat(),
                   "uptime_s": 1.0}, qos=0)  # fmt: skip
    rig.wire.events("h-02", event(cluster="h-02", outbox="real"))
    wait_until(lambda: stored(rig, "real") == 1, 15, "the real cluster's event")
    wait_until(lambda: rig.controller.intake.stats.unknown >= 3, 10, "three messages counted")
    assert ghost not in rig.controller.store.clusters.health()
    assert rig.controller.store.events.count() == 1


def test_a_time_far_ahead_of_the_controller_is_refused(rig: HostileRig) -> None:
    ahead = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    rig.wire.events("h-01", [event(seq=1, outbox="ahead", at=ahead), event(seq=2, outbox="ok")])
    wait_until(lambda: stored(rig, "ok") == 1, 15, "the event dated now")
    assert stored(rig, "ahead") == 0
    assert "ahead of the controller's clock" in (rig.controller.intake.stats.last_error or "")


class Refusing(EventRepository):
    """The real events repository, refusing the events of one outbox the way a column too
    narrow for them would (PostgreSQL refuses what SQLite takes)."""

    def store(self, batch: Sequence[SignedEvent], received_at: datetime) -> StoredEvents:
        if any(ev.outbox == "too-long-for-postgres" for ev, _key in batch):
            raise OverflowError("value out of range for the column")
        return super().store(batch, received_at)


def test_what_the_store_refuses_spoils_only_itself(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    """Even within the model's bounds, the store may refuse an event: the batch is split
    until that event is alone; the others are stored and acknowledged."""
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    store.events = Refusing(store.db)
    link = MqttLink(mosquitto_broker.address, "intake-under-test")
    box = AgentIdentity(Ed25519PrivateKey.generate())  # h-01's registered key
    keys = ClusterKeys()
    keys.replace_all({"h-01": (box.key_id, box.public_key)})
    intake = Intake(link, store, Signer(Ed25519PrivateKey.generate()), SystemClock(), keys=keys)
    wire = MqttLink(mosquitto_broker.address, "agent-like")
    acks: list[bytes] = []
    wire.subscribe(topics.cluster_topic("h-01", "command"), lambda _t, p: acks.append(p))
    intake.start()
    link.start()
    wire.start()
    try:
        assert link.wait_connected(10)
        assert wire.wait_connected(10)
        batch = [event(seq=n, outbox="ok") for n in range(1, 100)]
        batch.insert(37, event(seq=1, outbox="too-long-for-postgres"))
        wire.publish(topics.cluster_topic("h-01", "event"), box.seal("event", batch))
        wait_until(lambda: store.events.count() == 99, 15, "the 99 others to be stored")
        wait_until(lambda: acks, 10, "their acknowledgement")
        assert intake.stats.refused_by_store == 1
        acked = {seq for payload in acks for seq in json.loads(payload)["body"]["seqs"]}
        assert acked == set(range(1, 100))
        assert all(json.loads(p)["body"]["outbox"] == "ok" for p in acks)
    finally:
        wire.stop()
        intake.stop()
        link.stop()
        store.close()
