"""The controller's live source end to end: ffmpeg pulls the input, levels it, encodes
Opus in 20 ms packets, and controller/live.py publishes them signed on the clusters'
live topics; a real agent process airs them through its file output."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MosquittoBroker, free_port, require, wait_until
from live_wire_support import (
    CLUSTER,
    Controller,
    agent_rig,
    best_correlation,
    ended,
    envelope,
    ffmpeg_exe,
    speech_wav,
    wav_samples,
)

from controller.live import LiveBroadcast, LivePlan, LiveSettings
from protocol.clock import SystemClock

ROOT = Path(__file__).resolve().parent.parent
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



def test_loa_controller_live_carries_a_file_to_a_cluster_from_the_shell(
    rig: tuple[Controller, Path], tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    """`loa-controller live --target NODE --input FILE`, as an operator runs it."""
    controller, played = rig
    (tmp_path / "playlists").mkdir()
    (tmp_path / "fleet.yaml").write_text(
        "province:\n  id: tinh-live\n  name: Tỉnh Thử\n  communes:\n"
        f"    - id: xa-live\n      name: Xã Thử\n      clusters:\n"
        f"        - {{id: {CLUSTER}, name: Cụm Thử}}\n",
        encoding="utf-8",
    )  # fmt: skip
    config = tmp_path / "controller.yaml"
    config.write_text(
        f"broker_url: {mosquitto_broker.url}\nfleet: fleet.yaml\nplaylists: [playlists]\n"
        f"store_url: sqlite:///{tmp_path / 'controller.db'}\nprivate_key: controller.key\n"
        "content_dir: content\n",
        encoding="utf-8",
    )
    source = tmp_path / "tone.wav"
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "sine=f=440:r=48000", "-t", "3", "-ac", "1", str(source)],
        check=True,
    )  # fmt: skip
    shell = subprocess.run(
        [sys.executable, "-m", "controller.cli", "live", "--config", str(config),
         "--target", "Xã Thử", "--input", str(source), "--delay", "2s"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    assert "to 1 clusters; Ctrl-C ends it" in shell.stdout
    assert f"  {source}: " in shell.stdout
    assert ", ended" in shell.stdout
    session = shell.stdout.split()[2].rstrip(":")
    wait_until(lambda: ended(controller, session), 20, "the session's end on the agent")
    assert controller.kinds(session) == ["playing", "finished"]
    aired, rate = wav_samples(played / f"live-{session}.wav")
    assert 2.5 < len(aired) / rate < 3.5


def test_when_no_stream_works_the_fallback_file_airs_in_the_session(
    rig: tuple[Controller, Path], tmp_path: Path
) -> None:
    controller, played = rig
    fallback = tmp_path / "fallback.wav"
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "sine=f=660:r=48000", "-t", "2", "-ac", "1", str(fallback)],
        check=True,
    )  # fmt: skip
    nowhere = f"http://127.0.0.1:{free_port()}/vov1.mp3"  # nothing listens there
    live = broadcast(controller, LivePlan(
        bulletin="tiếp sóng", inputs=[nowhere, nowhere + "?backup"], clusters=[CLUSTER],
        duration_s=6.0, fallback=fallback,
    ))  # fmt: skip
    report = live.run()
    assert [i.outcome.split(":")[0] for i in report.inputs] == ["failed", "failed", "ended"]
    assert report.fallback == str(fallback)
    wait_until(lambda: ended(controller, live.session_id), 20, "the session's end")
    assert controller.kinds(live.session_id)[0] == "playing"
    aired, rate = wav_samples(next(played.glob(f"live-{live.session_id}*.wav")))
    sounding = [w for w in envelope(aired, rate) if w > 300]
    assert 1.7 < len(sounding) * 0.02 < 2.3  # the fallback, once (then silence, retrying)
    tone = aired[rate // 2 : rate * 3 // 2]
    crossings = sum(1 for a, b in itertools.pairwise(tone) if a < 0 <= b)
    assert 600 < crossings < 720  # 660 Hz
