"""Phát trực tiếp in Debian's Chromium: its fake microphone plays a recording of speech,
the page carries it to the controller, and the same speech comes out of a real agent's
`file` output (duration, loudness, and its loudness envelope correlated with the
recording's). A manager sees who is live where while it lasts."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BrokerUnderTest, require, wait_until
from live_wire_support import best_correlation, envelope, ffmpeg_exe, rms, speech_wav, wav_samples
from test_web_browser import CHROMIUM_ARGS, sign_in
from web_rig import PASSWORD, WebRig

from device_agent.output import FileBackend

SPEECH = ("Alô, alô. Ủy ban nhân dân xã An thông báo: nước sông đang lên nhanh, "
          "bà con ở ấp Một chuẩn bị di dời tài sản lên chỗ cao.")  # fmt: skip


@pytest.fixture
def speech(tmp_path: Path) -> Path:
    require("espeak-ng", shutil.which("espeak-ng") is not None, "apt-get install espeak-ng")
    return speech_wav(tmp_path / "micro.wav", SPEECH)


@pytest.fixture
def browser(speech: Path) -> Iterator[Any]:
    chromium = shutil.which("chromium")
    require("chromium", chromium is not None, "apt-get install chromium")
    from playwright.sync_api import sync_playwright

    microphone = [
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech}%noloop",
    ]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS + microphone)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[WebRig]:
    r = WebRig(tmp_path, broker.address)
    r.outputs["a-01"] = FileBackend(tmp_path / "played", ffmpeg=ffmpeg_exe())
    r.start(agents=["a-01", "a-02"])
    try:
        yield r
    finally:
        r.stop()


def test_the_officer_speaks_and_the_same_speech_comes_out_of_the_speakers(
    rig: WebRig, browser: Any, speech: Path, tmp_path: Path
) -> None:
    said, rate = wav_samples(speech)
    page = browser.new_page()
    page.set_default_timeout(30_000)
    sign_in(page, rig, "can-bo-a")
    page.goto(f"{rig.url}/live")
    assert page.locator("h1").inner_text() == "Phát trực tiếp"
    page.check("input[name=targets][value=ap-a1]")
    page.click("#live-button")
    page.locator("#live-state", has_text="tới 2 cụm loa").wait_for()
    assert page.locator("#live-button").inner_text() == "Dừng phát"
    sessions = rig.controller.live.sessions()
    assert [(s.source, s.clusters, s.by) for s in sessions] == [
        ("microphone", ("a-01", "a-02"), "can-bo-a")
    ]
    session_id = sessions[0].session_id

    def on_air() -> dict[str, str | None]:
        return {r.id: r.playing for r in rig.controller.store.clusters.fleet_rows()}

    wait_until(lambda: on_air()["a-01"] == "live: Phát trực tiếp: can-bo-a", 20,
               "loa-controller fleet showing the cluster live")  # fmt: skip
    assert on_air()["a-03"] is None
    # A manager of the province sees it, and may cut it.
    manager = browser.new_page()
    sign_in(manager, rig, "quan-ly")
    manager.goto(f"{rig.url}/live")
    assert manager.locator(f"li[data-session='{session_id}'] button.cut").count() == 1

    # The whole recording is spoken, then the officer presses Dừng phát.
    page.wait_for_timeout(int(len(said) / rate * 1000) + 1500)  # the speaker's own time
    page.click("#live-button")
    events = rig.controller.store.events
    wait_until(lambda: events.play_states(session_id) == {"a-01": "finished", "a-02": "finished"},
               30, "both clusters done")  # fmt: skip

    aired, out_rate = wav_samples(next((tmp_path / "played").glob(f"live-{session_id}*.wav")))
    assert len(aired) / out_rate > 0.8 * len(said) / rate
    assert rms(aired) > 500
    corr, lag = best_correlation(envelope(said, rate), envelope(aired, out_rate), 150)
    assert corr > 0.7, (corr, lag)
    audited = [(e.action, e.user, e.detail) for e in rig.service.audit_entries(rig.user("quan-ly"))
               if e.subject == session_id]  # fmt: skip
    assert sorted(audited) == [
        ("live-start", "can-bo-a", "source=web max_s=1800"), ("live-stop", "can-bo-a", "stopped")
    ]


def test_a_page_that_goes_silent_is_ended_cleanly_on_every_cluster(
    tmp_path: Path, broker: BrokerUnderTest
) -> None:
    """The API as the page uses it: a recording sent a piece at a time, then nothing (the
    page closed, the phone lost its connection): after the grace the session ends, every
    cluster reports its end, and the audit says why."""
    rig = WebRig(tmp_path, broker.address)
    rig.start(agents=["a-01", "a-02"])
    try:
        recording = tmp_path / "micro.webm"
        subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
             "sine=f=500:r=48000", "-t", "2", "-c:a", "libopus", "-f", "webm", str(recording)],
            check=True,
        )  # fmt: skip
        data = recording.read_bytes()
        with rig.client() as http:
            token = http.post("/api/v1/login", json={"name": "can-bo-a", "password": PASSWORD})
            auth = {"Authorization": f"Bearer {token.json()['token']}"}
            started = http.post("/api/v1/live", headers=auth,
                                json={"targets": ["ap-a1"], "level": "priority"})  # fmt: skip
            assert started.status_code == 201, started.text
            session = started.json()["session_id"]
            assert started.json()["clusters"] == ["a-01", "a-02"]
            pieces = [data[i : i + 2000] for i in range(0, len(data), 2000)]
            for seq, piece in enumerate(pieces):
                sent = http.post(f"/api/v1/live/{session}/audio?seq={seq}", headers=auth,
                                 content=piece)  # fmt: skip
                assert sent.status_code == 204, sent.text
                threading.Event().wait(2.0 / len(pieces))  # as the page sends, in its time
            listed = http.get("/api/v1/live", headers=auth).json()
            assert [(s["session_id"], s["by"], s["may_cut"]) for s in listed] == [
                (session, "can-bo-a", True)
            ]
            # ... and then nothing more comes.
            events = rig.controller.store.events
            wait_until(lambda: events.play_states(session) == {
                "a-01": "finished", "a-02": "finished"}, 30, "every cluster's end")  # fmt: skip
            late = http.post(f"/api/v1/live/{session}/audio?seq=999", headers=auth, content=b"x")
            assert late.status_code == 404
        audited = {(e.action, e.detail) for e in rig.service.audit_entries(rig.user("quan-ly"))
                   if e.subject == session}  # fmt: skip
        assert ("live-stop", "no audio from the page for 5 s (closed, or the connection "
                "was lost)") in audited
    finally:
        rig.stop()
