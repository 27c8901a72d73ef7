"""A real controller on a real mosquitto, and a client that writes what an attacker would.

Anyone who can publish on the broker can write on every topic the controller reads
(events, states, heartbeats, chunk requests) and overwrite retained messages: these
tests play that client. What it writes as h-01 and h-02 is signed with their registered
keys (a box gone wrong, or whoever took one: what signatures do not keep out); the
forgeries signatures keep out are tests/test_identity_intake.py's. The fleet: commune
xa-h with clusters h-01 and h-02.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conftest import MosquittoBroker
from identity_support import registered_identity

from controller.audio import AudioSettings
from controller.main import Controller, Settings
from controller.samples import tone
from device_agent.identity import AgentIdentity
from protocol import topics
from protocol.mqtt import MqttLink
from protocol.signing import Channel, generate_keypair

FLEET = """\
province:
  id: tinh-h
  name: Tỉnh Thử
  communes:
    - id: xa-h
      name: Xã Hứng
      clusters:
        - {id: h-01, name: Cụm 1}
        - {id: h-02, name: Cụm 2}
"""
CLUSTERS = ("h-01", "h-02")
# The channels on which what a cluster publishes is signed.
SIGNED: dict[str, Channel] = {c: c for c in ("event", "state", "heartbeat", "request")}


def event(cluster: str = "h-01", seq: int = 1, outbox: str = "ob-1", **changes: Any
          ) -> dict[str, Any]:  # fmt: skip
    """An event as an agent writes it (JSON object), with any field replaced."""
    ev: dict[str, Any] = {
        "v": 1, "cluster": cluster, "outbox": outbox, "seq": seq,
        "at": datetime.now(UTC).isoformat(), "kind": "received", "play_id": "p-1",
    }
    ev.update(changes)
    return ev


@dataclass
class Wire:
    """A client of the broker: publishes anything, counts what it sees."""

    link: MqttLink
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: dict[str, list[bytes]] = field(default_factory=dict)
    #: The registered keys it signs with, per cluster (what a cluster publishes is signed).
    keys: dict[str, AgentIdentity] = field(default_factory=dict)

    def watch(self, topic_filter: str) -> None:
        self.link.subscribe(topic_filter, self._keep)

    def _keep(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.seen.setdefault(topic, []).append(payload)

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return list(self.seen.get(topic, []))

    def send(self, topic: str, payload: bytes | dict[str, Any] | list[Any], *, qos: int = 1,
             retain: bool = False) -> None:  # fmt: skip
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        where = topics.parse(topic)
        signer = self.keys.get(where.name) if where is not None else None
        channel = SIGNED.get(where.channel) if where is not None else None
        if signer is not None and channel is not None:
            data = signer.seal_json(channel, data)
        self.link.publish(topic, data, qos=qos, retain=retain)

    def events(self, cluster: str, payload: bytes | dict[str, Any] | list[Any]) -> None:
        self.send(topics.cluster_topic(cluster, "event"), payload)


class HostileRig:
    """The controller (`loa-controller run`'s Controller) and the hostile client."""

    def __init__(self, tmp: Path, broker: MosquittoBroker, *, republish_s: float = 600.0) -> None:
        self.tmp = tmp
        self.broker = broker
        generate_keypair(tmp / "controller.key", tmp / "controller.pub")
        (tmp / "fleet.yaml").write_text(FLEET, encoding="utf-8")
        (tmp / "playlists").mkdir(exist_ok=True)
        self.settings = Settings(
            broker=broker.address, fleet_path=tmp / "fleet.yaml",
            playlist_paths=[tmp / "playlists"], store_url=f"sqlite:///{tmp / 'controller.db'}",
            private_key=tmp / "controller.key", content_dir=tmp / "content",
            reload_interval_s=0, membership_republish_s=republish_s,
            audio=AudioSettings(chunk_size=4096),  # a few seconds of tone: several chunks
        )  # fmt: skip
        self.controller = Controller(self.settings)
        self.wire = Wire(MqttLink(broker.address, "hostile-client"))

    def start(self) -> HostileRig:
        self.controller.start()
        for cluster in CLUSTERS:
            self.wire.keys[cluster] = registered_identity(
                self.controller, cluster, self.tmp / "keys" / cluster
            )
        self.wire.link.start()
        assert self.wire.link.wait_connected(10)
        return self

    def stop(self) -> None:
        self.wire.link.stop()
        self.controller.stop()

    def audio(self, seconds: float = 3.0) -> Any:
        """Prepared audio the controller holds (PreparedAudio)."""
        return self.controller.library.prepare([tone(self.tmp / f"t{seconds}.wav", seconds)])


def hostile_rig(tmp: Path, broker: MosquittoBroker, **kwargs: Any) -> Iterator[HostileRig]:
    rig = HostileRig(tmp, broker, **kwargs).start()
    try:
        yield rig
    finally:
        rig.stop()
