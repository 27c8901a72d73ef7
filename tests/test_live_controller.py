"""The controller's live source end to end: ffmpeg pulls the input, levels it, encodes
Opus in 20 ms packets, and controller/live.py publishes them signed on the clusters'
live topics; a real agent process airs them through its file output."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MosquittoBroker, require, wait_until
from live_wire_support import (
    CLUSTER,
    Controller,
    agent_rig,
    best_correlation,
    ended,
    envelope,
    speech_wav,
    wav_samples,
)

from controller.live import LiveBroadcast, LivePlan, LiveSettings
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

