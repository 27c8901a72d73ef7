"""The controller's live source end to end: ffmpeg pulls the input, levels it, encodes
Opus in 20 ms packets, and controller/live.py publishes them signed on the clusters'
live topics; a real agent process airs them through its file output."""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MosquittoBroker, require, wait_until
from icecast_support import Feeder, Icecast
from live_wire_support import (
    CLUSTER,
    Controller,
    agent_rig,
    best_correlation,
    ended,
    envelope,
    rms,
    speech_wav,
    wav_samples,
)

from controller.live import LiveBroadcast, LivePlan, LiveReport, LiveSettings
from protocol.clock import SystemClock

SPEECH = ("Thông báo của ủy ban nhân dân xã. Ngày mai, bà con đến trạm y tế "
          "để tiêm phòng cho trẻ em dưới năm tuổi.")  # fmt: skip


@pytest.fixture
def rig(mosquitto_broker: MosquittoBroker, tmp_path: Path) -> Iterator[tuple[Controller, Path]]:
    with agent_rig(mosquitto_broker, tmp_path) as made:
        yield made


def broadcast(controller: Controller, plan: LivePlan, **settings: object) -> LiveBroadcast:
    return LiveBroadcast(
        plan, link=controller.link, signer=controller.signer,
        cover=lambda clusters: ([], list(clusters)), clock=SystemClock(),
        settings=LiveSettings(delay_ms=1500, **settings),  # type: ignore[arg-type]  # test knobs
    )  # fmt: skip


def test_a_file_is_carried_live_and_the_same_speech_comes_out_of_the_agent(
    rig: tuple[Controller, Path], tmp_path: Path
) -> None:
    require("espeak-ng", shutil.which("espeak-ng") is not None, "apt-get install espeak-ng")
    controller, played = rig
    source = speech_wav(tmp_path / "speech.wav", SPEECH)
    said, rate = wav_samples(source)
    live = broadcast(controller, LivePlan(
        bulletin="thông báo", inputs=[str(source)], clusters=[CLUSTER], source="microphone"))
    report = live.run()
    assert [i.outcome for i in report.inputs] == ["ended"]
    wait_until(lambda: ended(controller, live.session_id), 20, "the session's end")
    assert controller.kinds(live.session_id)[0] == "playing"
    assert controller.kinds(live.session_id)[-1] == "finished"

    aired, out_rate = wav_samples(played / f"live-{live.session_id}.wav")
    assert abs(len(aired) / out_rate - len(said) / rate) < 0.5, (len(aired), len(said))
    corr, lag = best_correlation(envelope(said, rate), envelope(aired, out_rate), 100)
    assert corr > 0.8, (corr, lag)


def zero_crossing_hz(samples: list[int], rate: int) -> float:
    crossings = sum(1 for a, b in itertools.pairwise(samples) if a < 0 <= b)
    return crossings * rate / max(1, len(samples))


def test_a_rebroadcast_from_icecast_switches_to_its_backup_when_the_station_dies(
    rig: tuple[Controller, Path], tmp_path: Path
) -> None:
    require("espeak-ng", shutil.which("espeak-ng") is not None, "apt-get install espeak-ng")
    controller, played = rig
    icecast = Icecast()
    feeders: list[Feeder] = []
    try:
        speech = speech_wav(tmp_path / "speech.wav", SPEECH)
        primary = Feeder(icecast, "vov1.mp3", ["-stream_loop", "-1", "-i", str(speech)])
        backup = Feeder(icecast, "tinh.mp3", ["-f", "lavfi", "-i", "sine=f=660:r=44100"])
        feeders += [primary, backup]
        wait_until(lambda: icecast.mounted("vov1.mp3") and icecast.mounted("tinh.mp3"), 15,
                   "both stations on the Icecast server")  # fmt: skip
        live = broadcast(controller, LivePlan(
            bulletin="tiếp sóng VOV1", inputs=[icecast.url("vov1.mp3"), icecast.url("tinh.mp3")],
            clusters=[CLUSTER], duration_s=16.0))  # fmt: skip
        result: list[LiveReport] = []
        runner = threading.Thread(target=lambda: result.append(live.run()))
        runner.start()
        wait_until(lambda: "playing" in controller.kinds(live.session_id), 15,
                   "the rebroadcast on the agent")  # fmt: skip
        threading.Event().wait(3.0)  # three seconds of the station on air
        primary.kill()
        killed_at = time.monotonic()
        wait_until(lambda: live.report.inputs[-1].source.endswith("tinh.mp3"), 20,
                   "the switch to the backup")  # fmt: skip
        switched_s = time.monotonic() - killed_at
        runner.join(30)
        assert not runner.is_alive()
        wait_until(lambda: ended(controller, live.session_id), 20, "the session's end")
    finally:
        for feeder in feeders:
            feeder.kill()
        icecast.close()

    report = result[0]
    first, second = report.inputs[0], report.inputs[1]
    assert first.source.endswith("vov1.mp3")
    assert first.outcome == "failed: the stream ended"
    assert first.seconds > 2
    assert second.source.endswith("tinh.mp3")
    assert second.seconds > 3
    assert switched_s < 5, switched_s  # within a few seconds
    kinds = controller.kinds(live.session_id)
    assert kinds[0] == "playing"
    assert kinds[-1] == "finished", controller.of(live.session_id)
    gaps = [e for e in controller.of(live.session_id) if e.kind == "gap"]
    assert sum(e.seconds or 0 for e in gaps) < 4, gaps  # the switch, in seconds
    # What the agent aired ends with the backup station: the 660 Hz tone.
    aired, rate = wav_samples(played / f"live-{live.session_id}.wav")
    assert len(aired) / rate > 10
    assert 600 < zero_crossing_hz(aired[-2 * rate :], rate) < 720
    assert rms(aired[: 2 * rate]) > 500  # and it began with the station's speech
