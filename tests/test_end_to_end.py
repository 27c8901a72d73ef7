"""The whole path on real parts, as production runs it.

A real mosquitto, the controller (the same `Controller` that `loa-controller run`
builds), and the agent as its own process (`loa-agent run --config`) with the `file`
output, so every play leaves a WAV decoded by the real ffmpeg. Then the attacks a
public megaphone must shrug off: a hand-written unsigned command (mosquitto_pub), a
replay of a captured valid command, a command signed with another key, one expired,
one addressed to another cluster. Each plays nothing; the forgeries show in the agent's
log and in `loa-controller fleet`, the expired play is reported `expired`, while the
replay is the same command again (as a broker's redelivery would be): not played twice,
not reported as an attack.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import MosquittoBroker, require, wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from identity_support import token_file

from controller.main import Controller, Settings
from controller.samples import tone
from controller.store import ClusterRow
from protocol import topics
from protocol.messages import Address, PlayBody
from protocol.mqtt import MqttLink
from protocol.signing import Signer, generate_keypair

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = "e2e-a-01"
OTHER = "e2e-b-01"

FLEET = """\
province:
  id: tinh-e2e
  name: Tỉnh Thử
  communes:
    - id: xa-a
      name: Xã A
      clusters:
        - {id: e2e-a-01, name: Cụm A1}
    - id: xa-b
      name: Xã B
      clusters:
        - {id: e2e-b-01, name: Cụm B1}
"""

PLAYLIST = """\
programmes:
  - id: tin-sang
    name: Tin sáng
    bulletins:
      - files: [tone.wav]
    schedule:
      times: ["06:00"]
    targets: [all]
"""


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


class Rig:
    def __init__(self, tmp: Path, broker: MosquittoBroker) -> None:
        self.tmp = tmp
        self.broker = broker
        self.wav_dir = tmp / "played"
        generate_keypair(tmp / "controller.key", tmp / "controller.pub")
        (tmp / "fleet.yaml").write_text(FLEET, encoding="utf-8")
        (tmp / "playlists").mkdir()
        (tmp / "playlists" / "tin.yaml").write_text(PLAYLIST, encoding="utf-8")
        tone(tmp / "playlists" / "tone.wav", 1.0)
        tone(tmp / "urgent.wav", 1.0, freq=880)
        self.controller_config = tmp / "controller.yaml"
        self.controller_config.write_text(
            f"broker_url: {broker.url}\n"
            "fleet: fleet.yaml\n"
            "playlists: [playlists]\n"
            "store_url: sqlite:///controller.db\n"
            "private_key: controller.key\n"
            "content_dir: content\n",
            encoding="utf-8",
        )
        self.agent_config = tmp / "agent.yaml"
        self.agent_config.write_text(
            f"cluster_id: {CLUSTER}\n"
            f"broker_url: {broker.url}\n"
            "controller_public_key: controller.pub\n"
            "data_dir: agent-data\n"
            "enrolment_token_file: enrolment.token\n"
            "groups: [xa-a, tinh-e2e]\n"
            "output:\n"
            "  kind: file\n"
            "  out_dir: played\n",
            encoding="utf-8",
        )
        from controller.config import load_controller_config

        self.controller = Controller(
            Settings.from_config(load_controller_config(self.controller_config))
        )
        token_file(self.controller.store.url, CLUSTER, tmp / "enrolment.token")
        self.agent_log = tmp / "agent.log"
        self.agent: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.controller.start()
        log = self.agent_log.open("wb")
        self.agent = subprocess.Popen(
            _python("device_agent.cli", "run", "--config", str(self.agent_config)),
            env=_env(), stdout=log, stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self.row().state == "online", 20, "the agent to come online")

    def stop(self) -> None:
        if self.agent and self.agent.poll() is None:
            self.agent.terminate()
            self.agent.wait(10)
        self.controller.stop()

    def row(self) -> ClusterRow:
        rows = {r.id: r for r in self.controller.store.clusters.fleet_rows()}
        return rows[CLUSTER]

    def log(self) -> str:
        return self.agent_log.read_text(encoding="utf-8", errors="replace")

    def wavs(self) -> list[Path]:
        return sorted(self.wav_dir.glob("*.wav")) if self.wav_dir.exists() else []

    def rejections(self) -> int:
        return self.controller.store.events.count("rejected")


@pytest.fixture
def rig(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Rig]:
    require("ffmpeg", shutil.which("ffmpeg") is not None, "apt-get install ffmpeg")
    r = Rig(tmp_path, broker)
    r.start()
    try:
        yield r
    finally:
        r.stop()


def mosquitto_pub(broker: MosquittoBroker, topic: str, payload: bytes) -> None:
    require("mosquitto_pub", shutil.which("mosquitto_pub") is not None,
            "apt-get install mosquitto-clients")
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
         "-t", topic, "-s"],
        input=payload, check=True, timeout=10,
    )


def test_a_signed_play_plays_and_forgeries_play_nothing(rig: Rig, broker: MosquittoBroker) -> None:
    # Capture what the controller sends, as an eavesdropper on the broker could.
    captured: list[tuple[str, bytes]] = []
    got = threading.Event()
    sniffer = MqttLink(broker.address, "sniffer")

    def capture(topic: str, payload: bytes) -> None:
        if json.loads(payload)["body"]["kind"] == "play":
            captured.append((topic, payload))
            got.set()

    sniffer.subscribe(topics.group_topic("xa-a", "command"), capture)
    sniffer.subscribe(topics.cluster_topic(CLUSTER, "command"), capture)
    sniffer.start()
    assert sniffer.wait_connected(10)
    wait_until(lambda: sniffer.connected, 5, "the sniffer to subscribe")

    # 1. A real announcement: signed, delivered, played, reported finished.
    [spec] = rig.controller.send_urgent(["xa-a"], [rig.tmp / "urgent.wav"], title="Thử loa")
    assert spec.clusters == [CLUSTER]
    wait_until(
        lambda: rig.controller.store.events.play_states(spec.play_id).get(CLUSTER) == "finished",
        30, "the agent to finish the announcement",
    )
    assert len(rig.wavs()) == 1
    wait_until(got.is_set, 5, "the sniffer to capture the play command")
    valid_topic, valid = captured[0]
    assert json.loads(valid)["body"]["play_id"] == spec.play_id
    own_topic = topics.cluster_topic(CLUSTER, "command")

    # 2. Hand-written, unsigned, published by a client without the key.
    forged = json.loads(valid)
    del forged["sig"]
    forged["id"] = "f" * 32
    forged["body"]["play_id"] = "hijack-1"
    mosquitto_pub(broker, own_topic, json.dumps(forged).encode())
    wait_until(lambda: rig.rejections() >= 1, 15, "the unsigned command's rejection")
    assert "unsigned" in (rig.row().last_rejection or "")

    # 3. The captured valid command, replayed after it ran: the same command again,
    #    not played again (the WAVs are counted below) and not refused either.
    mosquitto_pub(broker, valid_topic, valid)

    # 4. Signed, but by a stranger's key.
    now = rig.controller.clock.now()
    stranger = Signer(Ed25519PrivateKey.generate())
    body = PlayBody.model_validate({**json.loads(valid)["body"], "play_id": "hijack-2"})
    mosquitto_pub(broker, own_topic,
                  stranger.command(body, Address(clusters=[CLUSTER]), now,
                                   timedelta(hours=1)).to_json())
    wait_until(lambda: rig.rejections() >= 2, 15, "the stranger's command's rejection")
    assert "signature" in (rig.row().last_rejection or "")

    # 5. Signed by the controller but expired (captured long ago, or held up by a broker
    #    that was down): reported as the play `expired`, not aired.
    old = rig.controller.signer.command(
        body.model_copy(update={"play_id": "hijack-3"}), Address(clusters=[CLUSTER]),
        now - timedelta(hours=3), timedelta(hours=1),
    )
    mosquitto_pub(broker, own_topic, old.to_json())
    wait_until(lambda: rig.controller.store.events.count("expired") == 1, 15,
               "the expired command's report")
    assert rig.row().last_result == "expired"
    assert (rig.row().last_result_reason or "").startswith("expired at ")

    # 6. Signed and fresh, but for another cluster, pushed onto this one's topic.
    elsewhere = rig.controller.signer.command(
        body.model_copy(update={"play_id": "hijack-4"}), Address(clusters=[OTHER]),
        now, timedelta(hours=1),
    )
    mosquitto_pub(broker, own_topic, elsewhere.to_json())
    wait_until(lambda: rig.rejections() >= 3, 15, "the misaddressed command's rejection")
    assert "another cluster" in (rig.row().last_rejection or "")

    # None of them played: still the one WAV, and no play of theirs reached the output.
    assert len(rig.wavs()) == 1
    for hijack in ("hijack-1", "hijack-2", "hijack-4"):
        assert rig.controller.store.events.play_states(hijack) == {}
    assert rig.controller.store.events.play_states("hijack-3") == {CLUSTER: "expired"}
    kinds = [e["kind"] for e in rig.controller.store.events.of_play(spec.play_id)]
    assert kinds.count("received") == 1, kinds
    assert kinds.count("playing") == 1, kinds
    log = rig.log()
    assert log.count("refused command") == 3, log
    assert log.count("came too late") == 1, log

    # The fleet view shows the cluster and its last rejection.
    out = subprocess.run(
        _python("controller.cli", "fleet", "--config", str(rig.controller_config)),
        env=_env(), capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith(CLUSTER))
    assert "online" in line, out
    assert "another cluster" in line, out
    sniffer.stop()
