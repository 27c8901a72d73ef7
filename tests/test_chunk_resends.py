"""Chunk resends are bounded: a forged request cannot drain a cluster's 4G data.

Findings these tests hold: ten forged chunk requests made the controller resend the
content ten times over and drop the cluster's holding; 100,000 requests with random
keys grew the controller's memory for good. Real controller (or its distributor), real
mosquitto, and a client asking as any client on the broker can.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import MosquittoBroker, wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hostile_rig import HostileRig, Wire, hostile_rig

from controller.distribution import RESEND_FACTOR, Distributor
from controller.fleet import load_fleet
from controller.store import Store
from controller.trust import ClusterKeys
from device_agent.identity import AgentIdentity
from protocol import chunks, topics
from protocol.clock import SystemClock
from protocol.messages import ChunkRequest
from protocol.mqtt import MqttLink
from protocol.signing import Signer, load_private_key

pytestmark = pytest.mark.slow


@pytest.fixture
def rig(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[HostileRig]:
    yield from hostile_rig(tmp_path, mosquitto_broker)


def ask(wire: Wire, cluster: str, sha256: str, missing: list[int]) -> None:
    request = ChunkRequest(cluster=cluster, sha256=sha256, missing=missing)
    wire.send(topics.cluster_topic(cluster, "request"), request.to_json())


def test_ten_forged_requests_resend_once_and_keep_the_holding(rig: HostileRig) -> None:
    controller = rig.controller
    audio = rig.audio(8.0)
    count = audio.content_ref().chunks
    assert count >= 2
    controller.holdings.add("h-01", [audio.sha256], datetime.now(UTC))
    content_topic = topics.cluster_topic("h-01", "content")
    rig.wire.watch(content_topic)
    for _ in range(10):
        ask(rig.wire, "h-01", audio.sha256, list(range(count)) * 3)  # every chunk, thrice
    wait_until(lambda: len(rig.wire.on(content_topic)) >= count, 10, "the resend")
    assert audio.sha256 in controller.holdings.held("h-01")  # a request drops nothing
    stats = controller.distributor.stats
    wait_until(lambda: stats.requests_refused == 9, 10, "the nine requests after the first")
    sent = sum(len(frame) for frame in rig.wire.on(content_topic))
    assert sent == audio.size + count * chunks.HEADER_SIZE  # once: no more than asked
    assert stats.resent_bytes == sent


def test_requests_with_random_keys_leave_nothing_behind(rig: HostileRig) -> None:
    controller = rig.controller
    for n in range(3000):
        cluster = ("h-01", "h-02", f"ghost-{n}")[n % 3]
        ask(rig.wire, cluster, os.urandom(32).hex(), [0, 1, 2])
    stats = controller.distributor.stats
    wait_until(lambda: stats.requests_refused == 3000, 30, "every request to be refused")
    assert stats.resent_chunks == 0
    assert controller.distributor.resend_state_size() == 0


def test_a_cluster_gets_a_content_again_at_most_three_times_an_hour(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    """Spaced requests (a patient attacker, or a cluster on a very bad link): at most once
    per 30 s, and at most RESEND_FACTOR times the content's size per hour."""
    rig = HostileRig(tmp_path, mosquitto_broker)  # its files: fleet, key, content
    audio = rig.audio(4.0)
    now = [1000.0]
    link = MqttLink(mosquitto_broker.address, "distributor-under-test")
    fleet = load_fleet(rig.settings.fleet_path)
    store = Store(rig.settings.store_url)
    box = AgentIdentity(Ed25519PrivateKey.generate())  # h-01's registered key
    keys = ClusterKeys()
    keys.replace_all({"h-01": (box.key_id, box.public_key)})
    distributor = Distributor(
        link, Signer(load_private_key(rig.settings.private_key)), store.plays, lambda: fleet,
        SystemClock(), lambda sha: audio.path if sha == audio.sha256 else None,
        chunk_size=rig.settings.audio.chunk_size, known=fleet.clusters.__contains__,
        monotonic=lambda: now[0], keys=keys,
    )  # fmt: skip
    distributor.start()
    link.start()
    wire = Wire(MqttLink(mosquitto_broker.address, "hostile-client"), keys={"h-01": box})
    wire.link.start()
    try:
        assert link.wait_connected(10)
        assert wire.link.wait_connected(10)
        every = list(range(audio.content_ref().chunks))
        stats = distributor.stats
        for at in (0, 10, 31, 62, 93, 124, 3700):
            now[0] = 1000.0 + at
            handled = stats.resent_chunks + stats.requests_refused
            ask(wire, "h-01", audio.sha256, every)
            wait_until(lambda: stats.resent_chunks + stats.requests_refused > handled,  # noqa: B023 - waited on at once
                       10, f"the request at {at} s")  # fmt: skip
        resends = distributor.stats.resent_chunks // len(every)
        assert resends == RESEND_FACTOR + 1  # 0, 31 and 62 s; then the next hour's first
        assert distributor.stats.requests_refused == 3  # 10 s (too soon), 93 and 124 s
    finally:
        wire.link.stop()
        link.stop()
        store.close()
