"""Output details the agent relies on: the volume a play asks for reaches the samples, a
second airing of the same play leaves a second WAV (never one overwritten), and the test
tone is what it says."""

from __future__ import annotations

import shutil
import threading
import wave
from array import array
from pathlib import Path

import pytest
from conftest import require

from device_agent.output import FileBackend, OpusdecBackend
from device_agent.tone import RATE, play_tone, write_tone


@pytest.fixture
def ffmpeg() -> str:
    found = shutil.which("ffmpeg")
    require("ffmpeg", found is not None, "apt-get install ffmpeg")
    assert found is not None
    return found


def peak(path: Path) -> int:
    with wave.open(str(path), "rb") as audio:
        samples = array("h", audio.readframes(audio.getnframes()))
    return max(abs(s) for s in samples)


def test_the_test_tone_is_a_one_second_sine_at_minus_12_dbfs(tmp_path: Path) -> None:
    tone = write_tone(tmp_path / "t.wav", 1.0)
    with wave.open(str(tone), "rb") as audio:
        assert (audio.getnchannels(), audio.getsampwidth(), audio.getframerate()) == (1, 2, RATE)
        assert audio.getnframes() == RATE
    assert abs(peak(tone) - 0.251 * 32767) < 100
    with pytest.raises(ValueError, match="above 0 seconds"):
        write_tone(tmp_path / "none.wav", 0)


def test_the_volume_scales_the_samples(tmp_path: Path, ffmpeg: str) -> None:
    source = write_tone(tmp_path / "tone.wav", 0.3)
    backend = FileBackend(tmp_path / "out", ffmpeg=ffmpeg, realtime=False)
    full = backend.play([source], 0.3, "full", threading.Event())
    half = backend.play([source], 0.3, "half", threading.Event(), volume=50)
    assert full.completed
    assert half.completed
    ratio = peak(backend.path_for("half")) / peak(backend.path_for("full"))
    assert 0.48 < ratio < 0.52


def test_a_second_airing_of_a_play_leaves_a_second_wav(tmp_path: Path, ffmpeg: str) -> None:
    source = write_tone(tmp_path / "tone.wav", 0.2)
    backend = FileBackend(tmp_path / "out", ffmpeg=ffmpeg, realtime=False)
    for _ in range(3):
        assert backend.play([source], 0.2, "news p-1", threading.Event()).completed
    assert sorted(p.name for p in (tmp_path / "out").glob("*.wav")) == [
        "news_p-1-2.wav", "news_p-1-3.wav", "news_p-1.wav",
    ]


def test_play_tone_replaces_its_earlier_file(tmp_path: Path, ffmpeg: str) -> None:
    backend = FileBackend(tmp_path / "out", ffmpeg=ffmpeg, realtime=False)
    first = play_tone(backend, tmp_path, 0.2)
    second = play_tone(backend, tmp_path, 0.2)
    assert first.ok
    assert second.ok
    assert second.wav == backend.path_for("loa-test-tone")
    assert [p.name for p in (tmp_path / "out").glob("*.wav")] == ["loa-test-tone.wav"]
    assert not (tmp_path / "loa-test-tone-source.wav").exists()


def test_the_test_tone_plays_through_opusdec_and_aplay_at_the_volume(tmp_path: Path) -> None:
    """The tone is a WAV, which opusdec does not read: the backend feeds it to aplay itself,
    on both channels, at the volume asked. ALSA's file device keeps what aplay played."""
    require("opusdec", shutil.which("opusdec") is not None, "apt-get install opus-tools")
    require("aplay", shutil.which("aplay") is not None, "apt-get install alsa-utils")
    sink = tmp_path / "played.raw"
    backend = OpusdecBackend(device=f"alsa:file:{sink},raw")
    assert backend.check() is None
    result = play_tone(backend, tmp_path, 0.3, volume=50)
    assert result.ok, result.outcome.error
    samples = array("h", sink.read_bytes())
    assert samples[0::2] == samples[1::2]
    assert abs(max(samples) - 0.251 * 32767 * 0.5) < 100
    assert not (tmp_path / "loa-test-tone-source.wav").exists()
