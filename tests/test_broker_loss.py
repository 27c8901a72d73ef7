"""When the broker forgets: mosquitto configured as docs/operations.md says
(`persistence true`, the default autosave of 30 minutes), killed -9, comes back with
nothing it took since it started. Real processes: that mosquitto, agent processes
(`loa-agent run`, the `file` output: a WAV per airing), the controller as `loa-controller
run` builds it. The fixture first checks that the broker's persistence works (a clean
stop writes its file), so what is lost is lost to the kill, not to a broken setup.

(a) A command published while two clusters were away: the broker queued it for their
    persistent sessions and lost it. One comes back in time and plays it; the other
    comes back after its latest start and is recorded "not received".
(b) A transfer cut in the middle: the agent got the command and part of the audio; the
    rest died with the broker. It asks for exactly the chunks it lacks, and plays once.
(c) An urgent announcement under way: two clusters play it through the broker's death;
    one, away when it was sent, plays it when it comes back.

Each ends the same way: every play on every cluster aired once, or is recorded as
missed with the reason; none is left sent and unconfirmed; nothing aired twice.
"""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import MosquittoBroker, require, wait_until
from fleet_rig import COMMUNE, FleetRig
from net_relay import Relay

from controller.confirmations import CONFIRMED, MISSED, ResendPolicy
from controller.distribution import PlaySpec
from controller.samples import tone
from controller.store import FINAL_KINDS
from controller.tts import speech_for
from controller.urgent import AnnouncementRequest, SystemPrincipal, service_for

pytestmark = pytest.mark.slow

# Quicker than the field's (10 s, 5 min, 15 s) so that the test takes seconds.
POLICY = ResendPolicy(
    confirm_within=timedelta(seconds=2), max_wait=timedelta(seconds=8),
    miss_grace=timedelta(seconds=3), start_grace=timedelta(seconds=10),
)
NOT_RECEIVED = "not received: no confirmation from the cluster by "


@pytest.fixture
def broker(mosquitto_default_autosave: MosquittoBroker) -> MosquittoBroker:
    require("ffmpeg", shutil.which("ffmpeg") is not None, "apt-get install ffmpeg")
    return mosquitto_default_autosave


def fleet(
    tmp: Path, broker: MosquittoBroker, clusters: list[str], *, controller_extra: str = "",
    broker_urls: dict[str, str] | None = None,
) -> FleetRig:
    """The controller and an agent per cluster, every one of them online."""
    rig = FleetRig(tmp, broker, clusters, resend=POLICY, controller_extra=controller_extra,
                   broker_urls=broker_urls)
    rig.start_controller()
    for cluster in clusters:
        rig.start_agent(cluster)
    for cluster in clusters:
        rig.wait_online(cluster)
    return rig


def wait_offline(rig: FleetRig, cluster: str) -> None:
    wait_until(lambda: rig.ctl.store.clusters.health()[cluster].state == "offline", 20,
               f"{cluster} offline (its Last Will)")


def kill_broker_and_start_it_again(broker: MosquittoBroker) -> None:
    """kill -9, then a new mosquitto on the same port and persistence file, which has
    nothing it took since it started (it saved only on the fixture's clean stop)."""
    saved = broker.persistence_file.stat().st_mtime_ns
    broker.kill()
    assert broker.persistence_file.stat().st_mtime_ns == saved  # no save on a kill
    broker.start()


def assert_aired_once_or_not_received(
    rig: FleetRig, plays: list[PlaySpec], timeout: float = 60
) -> dict[tuple[str, str], str]:
    """Every play on each of its clusters: aired once (one `playing`, one WAV, a final
    state), or missed with a reason (the agent's, or the controller's "not received"),
    nothing left unconfirmed. Returns (play, cluster) -> how it ended."""
    confirmations = rig.ctl.confirmations

    def ending(spec: PlaySpec, cluster: str) -> str | None:
        kinds = rig.kinds(spec.play_id, cluster)
        final = [k for k in kinds if k in FINAL_KINDS]
        if final:
            return final[-1]
        state, _sends, reason, _at = confirmations.of_play(spec.play_id)[cluster]
        if state == MISSED:
            assert reason is not None
            assert reason.startswith(NOT_RECEIVED), reason
            return "not received"
        return None

    pairs = [(spec, cluster) for spec in plays for cluster in spec.clusters]
    try:
        wait_until(lambda: all(ending(s, c) is not None for s, c in pairs), timeout,
                   "every play on every cluster to end")
    except AssertionError:
        raise AssertionError({
            (s.play_id, c): (rig.kinds(s.play_id, c), confirmations.of_play(s.play_id)[c])
            for s, c in pairs
        }) from None
    endings: dict[tuple[str, str], str] = {}
    for spec, cluster in pairs:
        end = ending(spec, cluster)
        assert end is not None
        endings[(spec.play_id, cluster)] = end
        kinds = rig.kinds(spec.play_id, cluster)
        wavs = rig.wavs(spec.play_id, cluster)
        assert kinds.count("playing") <= 1, (spec.play_id, cluster, kinds)  # never twice
        assert len(wavs) == kinds.count("playing"), (spec.play_id, cluster, kinds, wavs)
        assert kinds.count("received") <= 1, (spec.play_id, cluster, kinds)
        if end == "not received":
            assert kinds == [], (spec.play_id, cluster, kinds)
        else:  # the controller holds it as confirmed, never as merely sent
            assert confirmations.of_play(spec.play_id)[cluster][0] == CONFIRMED
    assert confirmations.waiting_by_cluster() == {}
    return endings


def test_a_command_the_broker_lost_is_sent_again_or_recorded_not_received(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    rig = fleet(tmp_path, broker, ["a-01", "a-02", "a-03"])
    try:
        # Two clusters lose power: the broker keeps their persistent sessions and queues
        # what comes for them.
        for away in ("a-02", "a-03"):
            rig.kill_agent(away)
            wait_offline(rig, away)
        soon = rig.send(rig.audio(1, freq=440), start_in=2, window=timedelta(seconds=10),
                        name="soon")
        later = rig.send(rig.audio(1, freq=550), start_in=4, window=timedelta(minutes=2),
                         name="later")
        rig.wait_kind(soon.play_id, "a-01", "received")
        rig.wait_kind(later.play_id, "a-01", "received")

        # The broker dies before the two took their commands; it comes back without them.
        kill_broker_and_start_it_again(broker)
        # One comes back in time for both ("late rather than lost" for the first)...
        rig.start_agent("a-02")
        rig.wait_kind(soon.play_id, "a-02", "playing", timeout=30)
        # ... the other only after the first one's latest start: it can have the second.
        wait_until(lambda: rig.ctl.clock.now() > soon.latest_start + POLICY.miss_grace, 30,
                   "the first play's latest start to pass")
        rig.start_agent("a-03")

        endings = assert_aired_once_or_not_received(rig, [soon, later])
        assert endings == {
            (soon.play_id, "a-01"): "finished", (later.play_id, "a-01"): "finished",
            (soon.play_id, "a-02"): "finished", (later.play_id, "a-02"): "finished",
            (soon.play_id, "a-03"): "not received", (later.play_id, "a-03"): "finished",
        }
        print(f"commands sent again: {rig.ctl.distributor.stats.resent_commands}")
    finally:
        rig.close()


def test_audio_lost_mid_transfer_is_asked_for_and_the_play_airs_once(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    relay = Relay(broker.address)
    rig = fleet(
        tmp_path, broker, ["t-01"], controller_extra="audio:\n  chunk_size_kb: 16\n",
        broker_urls={"t-01": relay.url},
    )
    try:
        audio = rig.audio(60, freq=330)
        chunks = audio.content_ref().chunks
        assert chunks >= 8, chunks  # enough that most are in flight when the broker dies
        # The command and about one chunk reach the agent; the rest is in flight (in the
        # broker, in the kernel's buffers) when the broker dies.
        relay.hold_after(20_000)
        spec = rig.send(audio, start_in=12, name="transfer")
        wait_until(relay.held.is_set, 20, "the transfer to be under way")
        rig.wait_kind(spec.play_id, "t-01", "received")
        kill_broker_and_start_it_again(broker)
        relay.cut()
        relay.restore()

        rig.wait_kind(spec.play_id, "t-01", "delivered", timeout=40)
        rig.ctl.distributor.send_stop(spec.play_id, ["t-01"])  # a minute of tone is enough
        # It asked for what it lacked, not for what it had.
        asked = rig.ctl.distributor.stats.resent_chunks
        assert 0 < asked < chunks, asked
        endings = assert_aired_once_or_not_received(rig, [spec])
        assert endings[(spec.play_id, "t-01")] in ("finished", "interrupted")
        assert rig.kinds(spec.play_id, "t-01").count("delivered") == 1
        print(f"chunks asked for again after the broker's death: {asked} of {chunks}")
    finally:
        rig.close()
        relay.close()


def test_an_urgent_announcement_under_way_survives_the_broker(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    clusters = ["u-01", "u-02", "u-03"]
    rig = fleet(tmp_path, broker, clusters)
    try:
        bulletin = rig.send(rig.audio(30, freq=330), name="bulletin",
                            clusters=["u-01", "u-02"])
        rig.wait_kind(bulletin.play_id, "u-01", "playing")
        rig.wait_kind(bulletin.play_id, "u-02", "playing")
        rig.kill_agent("u-03")
        wait_offline(rig, "u-03")

        service = service_for(rig.ctl, speech_for(), tmp_path / "urgent")
        manager = SystemPrincipal(name="quan-ly", role="manager", scope=["tinh-rig"])
        sent = service.send(manager, AnnouncementRequest(
            targets=[COMMUNE], audio=tone(tmp_path / "khan.wav", 4.0, freq=880),
            title="Khẩn: nước lên",
        ))
        for cluster in ("u-01", "u-02"):  # it preempts the bulletin
            rig.wait_kind(sent.id, cluster, "playing")
        # The broker dies while it plays, and u-03's copy with it.
        kill_broker_and_start_it_again(broker)
        rig.start_agent("u-03")

        urgent = PlaySpec(
            play_id=sent.id, bulletin=sent.title, level="emergency", start_at=sent.created_at,
            latest_start=sent.latest_start, items=[], clusters=clusters, urgent=True,
        )
        endings = assert_aired_once_or_not_received(rig, [urgent, bulletin])
        assert all(endings[(sent.id, c)] == "finished" for c in clusters), endings
        assert endings[(bulletin.play_id, "u-01")] == "interrupted"
        # The status page tells it: played everywhere.
        status = service.get(manager, sent.id)
        assert [p.status for p in status.progress] == ["finished"] * 3
        assert status.all_played
        late = (rig.at(sent.id, "u-03", "playing") - sent.created_at).total_seconds()
        print(f"u-03 played the announcement {late:.1f} s after it was sent")
        assert late > 0
        assert time.time() < sent.latest_start.timestamp()
    finally:
        rig.close()
