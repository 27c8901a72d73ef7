"""Fault injection on real processes: mosquitto killed with -9 and restarted during a
transfer and during playback, the agent killed with -9 mid-playback and restarted, the
controller stopped for a while and a new one started on the same store.

Afterwards, the proof of play must be whole:
- every status event is at the controller exactly once: the sequence numbers of the
  agent's outbox are 1..n, no gap, no duplicate;
- no bulletin played twice: one `playing` event and one WAV (the file output writes one
  per airing) per play;
- a scheduled bulletin the agent held in advance played on time while the broker was
  down (its `playing` event within 1 s of its start).
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import BrokerUnderTest, MosquittoBroker, require, wait_until
from fleet_rig import FleetRig
from identity_support import body_of

from protocol import topics
from protocol.messages import parse_events
from protocol.mqtt import MqttLink

pytestmark = pytest.mark.slow

ME = "flt-01"
ON_TIME_S = 1.0


class Wire:
    """What the broker hands a subscriber on some topics, as any agent or controller gets it."""

    def __init__(self, broker: BrokerUnderTest, *patterns: str) -> None:
        self._lock = threading.Lock()
        self._seen: list[tuple[str, bytes]] = []
        self._probed = threading.Event()
        self.link = MqttLink(broker.address, f"wire-{secrets.token_hex(4)}")
        for pattern in patterns:
            self.link.subscribe(pattern, self._got)
        # Connected is not subscribed: the broker acts on the SUBSCRIBE after the CONNACK,
        # so a message published at once could pass the wire by. The link subscribes to
        # every filter in one SUBSCRIBE: once a probe on a topic of its own comes back,
        # all of them are in place.
        probe = f"loa-test/wire-probe/{secrets.token_hex(4)}"
        self.link.subscribe(probe, lambda _t, _p: self._probed.set())
        self.link.start()
        assert self.link.wait_connected(10)

        def probe_back() -> bool:
            if not self._probed.is_set():
                self.link.publish(probe, b"probe")
            return self._probed.wait(0.2)

        wait_until(probe_back, 10, "the wire's subscriptions to be in place")

    def _got(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self._seen.append((topic, payload))

    def count(self, channel: str) -> int:
        """Messages on the channel's topics (a cluster's or a group's)."""
        with self._lock:
            return sum(1 for t, _ in self._seen if t.endswith("/" + channel))

    def events(self, cluster: str) -> list[tuple[str | None, str]]:
        """(play id, kind) of every event the cluster published."""
        with self._lock:
            payloads = [p for t, p in self._seen if t == topics.cluster_topic(cluster, "event")]
        return [(e.play_id, e.kind) for p in payloads for e in parse_events(body_of(p))[0]]


def broker_gone(rig: FleetRig) -> None:
    """Wait until the controller has seen the broker go (a fault is there to be noticed)."""
    wait_until(lambda: not rig.ctl.link.connected, 10, "the controller to see the broker go")


@pytest.fixture
def rig(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[FleetRig]:
    require("ffmpeg", shutil.which("ffmpeg") is not None, "apt-get install ffmpeg")
    r = FleetRig(tmp_path, mosquitto_broker, [ME])
    r.start_controller()
    r.start_agent(ME)
    r.wait_online(ME)
    try:
        yield r
    finally:
        r.close()


def assert_proof_of_play_is_whole(rig: FleetRig, final: dict[str, str]) -> None:
    """Every event once, in an unbroken sequence; each play aired at most once."""
    for play_id, expected in final.items():
        assert rig.wait_final(play_id, ME) == expected, (play_id, rig.kinds(play_id, ME))
    rig.wait_unbroken_outbox(ME)
    for play_id in final:
        kinds = rig.kinds(play_id, ME)
        for kind in ("received", "playing"):
            assert kinds.count(kind) == 1, (play_id, kinds)
        assert len(rig.wavs(play_id, ME)) == 1, (play_id, rig.wavs(play_id, ME))


def test_broker_killed_during_a_transfer_and_during_playback(
    rig: FleetRig, mosquitto_broker: MosquittoBroker
) -> None:
    broker = mosquitto_broker
    minute = rig.audio(60, freq=330)
    short = rig.audio(4, freq=440)
    scheduled_audio = rig.audio(3, freq=550)

    # 1. A transfer in flight when the broker dies: the agent is frozen, so the command
    #    and the audio sit in the broker (and in the agent's socket) when it is killed.
    wire = Wire(broker, "loa/v1/+/+/command", "loa/v1/+/+/content")
    rig.freeze_agent(ME)
    transfer = rig.send(minute, start_in=12, name="transfer")
    wait_until(
        lambda: wire.count("command") == 1 and wire.count("content") == minute.content_ref().chunks,
        30, "the broker to hold the command and every chunk",
    )
    wire.link.stop()
    broker.kill()
    rig.freeze_agent(ME, frozen=False)
    broker_gone(rig)
    broker.start()
    # Whatever was lost is made good: the controller sends the command again when the
    # cluster comes back online, the agent asks for the chunks it lacks.
    rig.wait_kind(transfer.play_id, ME, "delivered", timeout=30)
    rig.wait_kind(transfer.play_id, ME, "playing", timeout=30)
    wait_until(lambda: rig.wavs(transfer.play_id, ME), 10, "its WAV: the play is on air")
    rig.ctl.distributor.send_stop(transfer.play_id, [ME])  # a minute of tone is enough

    # 2. A bulletin the agent holds, due while the broker is down: it plays on time.
    scheduled = rig.send(scheduled_audio, start_in=4, name="scheduled")
    rig.wait_kind(scheduled.play_id, ME, "delivered")
    wait_until(lambda: (scheduled.start_at.timestamp() - time.time()) < 1.5, 10, "T-1.5 s")
    broker.kill()
    # ... and the broker comes back while it plays (3 s from its start).
    wait_until(lambda: time.time() > scheduled.start_at.timestamp() + 1.0, 10, "T+1 s")
    broker.start()

    # 3. The broker killed in the middle of a play, restarted while it still plays.
    playing = rig.send(short, name="playing")
    rig.wait_kind(playing.play_id, ME, "playing", timeout=30)
    broker.kill()
    broker_gone(rig)
    broker.start()
    restarted = datetime.now(UTC)

    assert_proof_of_play_is_whole(rig, {
        transfer.play_id: "interrupted",
        scheduled.play_id: "finished",
        playing.play_id: "finished",
    })
    late = (rig.at(scheduled.play_id, ME, "playing") - scheduled.start_at).total_seconds()
    print(f"scheduled bulletin started {late * 1000:.0f} ms after its start time, broker down")
    assert 0 <= late < ON_TIME_S
    # The broker was back before the play ended (it did not just finish unseen).
    assert rig.at(playing.play_id, ME, "finished") > restarted


def test_agent_killed_mid_playback_and_controller_stopped_for_a_while(
    rig: FleetRig, tmp_path: Path
) -> None:
    # 1. kill -9 in the middle of a play: after the restart it is reported interrupted
    #    (cut off), and not played again.
    cut = rig.send(rig.audio(10, freq=330), name="cut")
    rig.wait_kind(cut.play_id, ME, "playing")
    wait_until(lambda: rig.wavs(cut.play_id, ME), 10, "its WAV: the play is on air")
    rig.kill_agent(ME)
    rig.start_agent(ME)
    rig.wait_kind(cut.play_id, ME, "interrupted", timeout=30)
    reason = next(e["reason"] for e in rig.events(cut.play_id, ME) if e["kind"] == "interrupted")
    assert "not played again" in reason

    # 2. The controller stops; a play it sent before plays meanwhile, its events wait in
    #    the agent's outbox; a new controller on the same store takes them in once.
    later = rig.send(rig.audio(2, freq=440), start_in=3, name="while-away")
    rig.wait_kind(later.play_id, ME, "delivered")
    store_url = rig.ctl.store.url
    wire = Wire(rig.broker, topics.cluster_topic(ME, "event"))
    rig.stop_controller()
    # It plays (T+3 .. T+5) and reports it, to nobody: the events stay in its outbox.
    wait_until(lambda: (later.play_id, "finished") in wire.events(ME), 15,
               "the agent to report the play's end while the controller is away")
    wire.link.stop()
    rig.start_controller()
    assert rig.ctl.store.url == store_url
    rig.wait_kind(later.play_id, ME, "finished", timeout=30)
    after = rig.send(rig.audio(0.5, freq=550), name="after")

    assert_proof_of_play_is_whole(rig, {
        cut.play_id: "interrupted",
        later.play_id: "finished",
        after.play_id: "finished",
    })
    late = (rig.at(later.play_id, ME, "playing") - later.start_at).total_seconds()
    assert 0 <= late < ON_TIME_S
    print(f"duplicates dropped by the new controller: {rig.ctl.intake.stats.duplicates}")
