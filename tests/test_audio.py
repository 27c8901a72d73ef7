"""Audio preparation, the audio library and generated samples, with real ffmpeg."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
import shutil
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require

from controller import audio, samples
from controller.audio import AudioError, AudioLibrary, AudioSettings, PreparedAudio
from controller.check import check
from controller.ffmpeg import (
    FfmpegError,
    decode_pcm,
    ffmpeg_exe,
    ffprobe_exe,
    loudness,
    run_ffmpeg,
    segment_from_pcm,
)

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE_S = 0.2


@pytest.fixture(autouse=True)
def ffmpeg_found() -> Iterator[None]:
    """Every test here needs an ffmpeg; the lookups are cached, so forget them afterwards."""
    try:
        ffmpeg_exe()
        found = True
    except FfmpegError:
        found = False
    require("ffmpeg", found, "apt-get install ffmpeg, or pip install imageio-ffmpeg")
    yield
    ffmpeg_exe.cache_clear()
    ffprobe_exe.cache_clear()


@pytest.fixture
def library(tmp_path: Path) -> AudioLibrary:
    return AudioLibrary(tmp_path / "content", AudioSettings())


def convert(source: Path, target: Path, *args: str) -> Path:
    run_ffmpeg(["-i", str(source), *args, "-y", str(target)], what=str(target))
    return target


def lavfi(target: Path, graph: str, *args: str) -> Path:
    run_ffmpeg(["-f", "lavfi", "-i", graph, *args, "-y", str(target)], what=str(target))
    return target


def opus_channels(data: bytes) -> int:
    """The channel count in an Ogg/Opus identification header."""
    head = data.index(b"OpusHead")
    return data[head + 9]


def assert_stored_opus(library: AudioLibrary, prepared: PreparedAudio, seconds: float) -> None:
    data = prepared.path.read_bytes()
    assert prepared.path == library.root / f"{prepared.sha256}.opus"
    assert hashlib.sha256(data).hexdigest() == prepared.sha256
    assert prepared.size == len(data)
    assert data[:4] == b"OggS"
    assert opus_channels(data) == 1
    assert prepared.duration_s == pytest.approx(seconds, abs=TOLERANCE_S)
    # An independent decode of what was stored agrees.
    assert library.probe(prepared.path) == pytest.approx(seconds, abs=TOLERANCE_S)


# --- every input format becomes mono Opus ---------------------------------------------------

FORMATS = {
    "mp3": ("in.mp3", ["-ac", "2", "-ar", "44100", "-c:a", "libmp3lame", "-b:a", "64k"]),
    "wav-44k-stereo": ("in.wav", ["-ac", "2", "-ar", "44100", "-c:a", "pcm_s16le"]),
    "wav-8k-u8": ("in8k.wav", ["-ar", "8000", "-c:a", "pcm_u8"]),
    "flac": ("in.flac", ["-ac", "2", "-ar", "44100", "-c:a", "flac"]),
    "m4a": ("in.m4a", ["-ac", "2", "-ar", "44100", "-c:a", "aac", "-b:a", "96k"]),
    "ogg-opus": ("in.ogg", ["-c:a", "libopus", "-b:a", "32k"]),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_prepares_to_mono_opus(
    fmt: str, tmp_path: Path, library: AudioLibrary
) -> None:
    name, args = FORMATS[fmt]
    source = convert(samples.tone(tmp_path / "tone.wav", 1.5), tmp_path / name, *args)
    prepared = library.prepare([source])
    assert_stored_opus(library, prepared, 1.5)


def test_works_with_the_imageio_ffmpeg_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = importlib.util.find_spec("imageio_ffmpeg") is not None
    require("imageio-ffmpeg", found, "pip install imageio-ffmpeg")
    source = convert(
        samples.tone(tmp_path / "tone.wav", 1.0), tmp_path / "in.mp3", "-c:a", "libmp3lame"
    )
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # neither ffmpeg nor ffprobe on PATH
    ffmpeg_exe.cache_clear()
    ffprobe_exe.cache_clear()
    assert ffprobe_exe() is None
    assert "imageio_ffmpeg" in ffmpeg_exe()
    library = AudioLibrary(tmp_path / "content")
    assert_stored_opus(library, library.prepare([source]), 1.0)


def test_leading_and_trailing_silence_is_trimmed(tmp_path: Path) -> None:
    padded = lavfi(
        tmp_path / "padded.wav",
        "sine=frequency=440:sample_rate=48000:duration=1",
        "-af", "adelay=600:all=1,apad=pad_dur=0.6",
    )  # fmt: skip
    trimmed = AudioLibrary(tmp_path / "a").prepare([padded])
    untrimmed = AudioLibrary(tmp_path / "b", AudioSettings(trim_silence=False)).prepare([padded])
    assert trimmed.duration_s == pytest.approx(1.0, abs=TOLERANCE_S)
    assert untrimmed.duration_s == pytest.approx(2.2, abs=TOLERANCE_S)


def test_intro_sources_and_outro_are_joined_with_gaps(
    tmp_path: Path, library: AudioLibrary
) -> None:
    intro = samples.tone(tmp_path / "intro.wav", 0.5, freq=660)
    first = samples.tone(tmp_path / "first.wav", 1.0, freq=440)
    second = convert(samples.tone(tmp_path / "second.wav", 1.0, freq=550), tmp_path / "second.mp3")
    outro = samples.tone(tmp_path / "outro.wav", 0.5, freq=330)
    prepared = library.prepare([first, second], intro=intro, outro=outro)
    gaps = 3 * audio.GAP_MS / 1000
    assert_stored_opus(library, prepared, 0.5 + 1.0 + 1.0 + 0.5 + gaps)


def test_same_input_gives_the_same_sha256_in_any_library(tmp_path: Path) -> None:
    source = samples.tone(tmp_path / "tone.wav", 1.0)
    one = AudioLibrary(tmp_path / "one").prepare([source])
    two = AudioLibrary(tmp_path / "two").prepare([source])
    assert one.sha256 == two.sha256


# --- refusals -------------------------------------------------------------------------------


def truncated_mp3(tmp_path: Path) -> Path:
    whole = convert(
        samples.tone(tmp_path / "tone.wav", 3.0), tmp_path / "whole.mp3", "-c:a", "libmp3lame"
    )
    cut = tmp_path / "truncated.mp3"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return cut


def zero_bytes(tmp_path: Path) -> Path:
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    return empty


def silent_wav(tmp_path: Path) -> Path:
    return lavfi(tmp_path / "silent.wav", "anullsrc=r=44100:cl=stereo", "-t", "1")


def text_as_mp3(tmp_path: Path) -> Path:
    fake = tmp_path / "notes.mp3"
    fake.write_text("Lịch phát tuần này: thứ hai 6 giờ sáng.\n" * 20, encoding="utf-8")
    return fake


def picture_as_m4a(tmp_path: Path) -> Path:
    return lavfi(tmp_path / "cover.png", "color=c=red:s=16x16", "-frames:v", "1").rename(
        tmp_path / "cover.m4a"
    )


def hiss_with_clicks(
    tmp_path: Path, seconds: float = 10, clicks: tuple[float, float] = (3, 7)
) -> Path:
    """White noise at -70 dBFS RMS with two 5 ms clicks peaking at -20 dBFS."""
    hiss = f"{10 ** (-70 / 20) * math.sqrt(3):.6f}*(2*random(0)-1)"  # uniform: RMS = peak/√3
    bursts = "+".join(f"between(t,{at},{at + 0.005})" for at in clicks)
    click = f"0.1*sin(2*PI*1000*t)*({bursts})"
    return lavfi(
        tmp_path / "hiss-with-clicks.wav", f"aevalsrc='{hiss}+{click}':s=48000:d={seconds}"
    )


def short_hiss_with_clicks(tmp_path: Path) -> Path:
    return hiss_with_clicks(tmp_path, 1.8, (0.4, 1.2))  # the library below allows 2 s


def pip(tmp_path: Path) -> Path:
    """A 0.1 s tone between half seconds of silence: trimming would leave only the pip."""
    return lavfi(
        tmp_path / "pip.wav",
        "sine=frequency=880:sample_rate=48000:duration=0.1",
        "-af", "adelay=500:all=1,apad=pad_dur=0.5",
    )  # fmt: skip


def too_long(tmp_path: Path) -> Path:
    return samples.tone(tmp_path / "long.wav", 2.5)  # the library below allows 2 s


def missing(tmp_path: Path) -> Path:
    return tmp_path / "no-such-file.mp3"


REFUSALS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated mp3": (truncated_mp3, "cut short"),
    "zero-byte file": (zero_bytes, "empty"),
    "silent wav": (silent_wav, "silent"),
    "hiss with two clicks": (short_hiss_with_clicks, "no audible sound"),
    "0.1 s pip in silence": (pip, "no audible sound"),
    "text renamed .mp3": (text_as_mp3, "cannot decode"),
    "picture renamed .m4a": (picture_as_m4a, "no audio stream"),
    "too long": (too_long, "more than 2 s"),
    "missing file": (missing, "not found"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_unusable_audio_is_refused_naming_the_file(case: str, tmp_path: Path) -> None:
    make, reason = REFUSALS[case]
    bad = make(tmp_path)
    good = samples.tone(tmp_path / "good.wav", 0.5)
    library = AudioLibrary(tmp_path / "content", AudioSettings(max_duration_s=2.0))

    with pytest.raises(AudioError) as prepared:
        library.prepare([good, bad])
    with pytest.raises(AudioError) as probed:
        library.probe(bad)

    for error in (prepared.value, probed.value):
        assert error.path == bad
        assert str(error).startswith(f"{bad}: ")
        assert reason in str(error)
    assert not list(library.root.glob("*.opus"))


def test_a_click_in_hiss_is_refused_saying_what_was_heard_and_what_to_do(
    tmp_path: Path, library: AudioLibrary
) -> None:
    bad = hiss_with_clicks(tmp_path)
    decoded = segment_from_pcm(decode_pcm(bad, sample_rate=48000).pcm, 48000)
    assert decoded.dBFS < audio.SILENCE_DBFS < decoded.max_dBFS  # quiet, but for two clicks
    with pytest.raises(AudioError) as refused:
        library.prepare([bad])
    message = str(refused.value)
    # The hiss sits at -70 dBFS: under the -50 dBFS of ordinary recordings, silence is
    # what stays within 10 dB of that noise floor.
    assert re.fullmatch(
        re.escape(f"{bad}: no audible sound (nothing louder than -60 dBFS for 0.25 s; peak ")
        + r"-(19\.9|20\.0) dBFS at [37]\.00 s\)\. "
        + re.escape("Check the recording level, or pick another file"),
        message,
    ), message
    assert not list(library.root.glob("*.opus"))


def test_check_reports_an_inaudible_file_at_its_programme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    playlists = tmp_path / "playlists"
    shutil.copytree(ROOT / "playlists", playlists)
    bad = playlists / "audio" / "thoi-su-sang.wav"
    bad.unlink()
    hiss_with_clicks(tmp_path).rename(bad)
    monkeypatch.chdir(ROOT)  # config/fleet.yaml, as `loa-controller check` finds it
    found = [str(problem) for problem in check(None, [playlists])]
    [refused] = [problem for problem in found if "no audible sound" in problem]
    assert f": programme 'thoi-su-sang': {bad}: no audible sound (" in refused, found


def speech_like(path: Path, seconds: float, rms_dbfs: float) -> Path:
    """Voiced syllables (0.18 s, every 0.25 s, three to a word, a pause between words) on a
    150 Hz buzz with its harmonics, silent between, scaled to an overall RMS of rms_dbfs."""
    beat = "mod(mod(t,1.05),0.25)"
    envelope = f"lt({beat},0.18)*lt(mod(t,1.05),0.75)*pow(sin(PI*{beat}/0.18),2)"
    buzz = "(sin(2*PI*150*t)+0.6*sin(2*PI*300*t)+0.4*sin(2*PI*450*t)+0.2*sin(2*PI*900*t))"
    lavfi(path, f"aevalsrc='0.2*{envelope}*{buzz}':s=48000:d={seconds}")
    segment = segment_from_pcm(decode_pcm(path, sample_rate=48000).pcm, 48000)
    segment.apply_gain(rms_dbfs - segment.dBFS).export(str(path), format="wav")
    return path


def test_quiet_speech_is_accepted_and_brought_to_the_target_loudness(tmp_path: Path) -> None:
    quiet = speech_like(tmp_path / "quiet-speech.wav", 3.0, rms_dbfs=-40.0)
    assert segment_from_pcm(decode_pcm(quiet, sample_rate=48000).pcm, 48000).dBFS == (
        pytest.approx(-40, abs=0.1)
    )
    library = AudioLibrary(tmp_path / "library", AudioSettings(target_lufs=-16.0))
    assert library.probe(quiet) == pytest.approx(3.0, abs=0.01)
    prepared = library.prepare([quiet])
    assert prepared.duration_s == pytest.approx(2.78, abs=TOLERANCE_S)  # the last pause trimmed
    found = loudness(prepared.path)
    assert abs(found.integrated_lufs - -16.0) <= 1.0, found


@pytest.mark.parametrize("seconds", [0.3, 0.6])
def test_a_short_tone_is_accepted(seconds: float, tmp_path: Path, library: AudioLibrary) -> None:
    chime = lavfi(
        tmp_path / "short.wav",
        f"sine=frequency=880:sample_rate=48000:duration={seconds}",
        "-af", "adelay=1000:all=1,apad=pad_dur=1",
    )  # fmt: skip
    assert library.probe(chime) == pytest.approx(seconds + 2, abs=0.01)
    assert_stored_opus(library, library.prepare([chime]), seconds)


def test_a_bulletin_longer_than_allowed_in_total_is_refused(tmp_path: Path) -> None:
    parts = [samples.tone(tmp_path / f"part{n}.wav", 0.8) for n in range(3)]
    library = AudioLibrary(tmp_path / "content", AudioSettings(max_duration_s=2.0))
    with pytest.raises(AudioError, match="more than the 2 s allowed") as refused:
        library.prepare(parts)
    assert all(str(part) in str(refused.value) for part in parts)


def test_probe_reports_the_duration(tmp_path: Path, library: AudioLibrary) -> None:
    source = convert(samples.tone(tmp_path / "tone.wav", 2.0), tmp_path / "in.flac")
    assert library.probe(source) == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize(
    "bad",
    [
        {"bitrate_kbps": 0},
        {"sample_rate": 44100},
        {"max_duration_s": 0},
        {"max_duration_s": math.inf},
        {"chunk_size": 0},
        {"target_lufs": 3.0},
        {"true_peak_dbtp": 2.0},
    ],
)
def test_invalid_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        AudioSettings(**bad)  # type: ignore[arg-type]  # deliberately wrong values


@pytest.mark.parametrize(("gain_db", "freq"), [(-20, 440), (18, 1000), (-6, 220)])
def test_loudness_is_normalised_measured_after_encoding(
    gain_db: int, freq: int, tmp_path: Path
) -> None:
    # A quiet, a loud and a mid-level source all come out at the target.
    source = lavfi(
        tmp_path / "src.wav", f"sine=frequency={freq}:duration=6", "-af", f"volume={gain_db}dB"
    )
    library = AudioLibrary(tmp_path / "library", AudioSettings(target_lufs=-16.0))
    prepared = library.prepare([source])
    found = loudness(prepared.path)
    assert abs(found.integrated_lufs - -16.0) <= 1.0, found
    assert found.true_peak_dbtp <= -1.0 + 0.5, found  # Opus adds a little overshoot


def test_normalisation_can_be_turned_off(tmp_path: Path) -> None:
    # About -41 dBFS RMS: quiet, but above the silence threshold, so it is all kept.
    source = lavfi(tmp_path / "src.wav", "sine=frequency=440:duration=4", "-af", "volume=-20dB")
    library = AudioLibrary(tmp_path / "library", AudioSettings(target_lufs=None))
    prepared = library.prepare([source])
    assert prepared.duration_s == pytest.approx(4.0, abs=TOLERANCE_S)
    found = loudness(prepared.path)
    assert found.integrated_lufs < -30, found


# --- the cache and the library -----------------------------------------------------------------


@pytest.fixture
def encodes(monkeypatch: pytest.MonkeyPatch) -> set[Path]:
    """The files the library encoded Opus into: one per bulletin it prepared, however many
    tries its level took."""
    calls: set[Path] = set()
    real = audio.encode_opus

    def counting(
        pcm: bytes, sample_rate: int, bitrate_kbps: int, out: Path, **options: Any
    ) -> None:
        calls.add(out)
        real(pcm, sample_rate, bitrate_kbps, out, **options)

    monkeypatch.setattr(audio, "encode_opus", counting)
    return calls


def test_the_same_sources_and_settings_are_encoded_once(
    tmp_path: Path, encodes: set[Path]
) -> None:
    first = samples.tone(tmp_path / "first.wav", 0.7, freq=440)
    second = samples.tone(tmp_path / "second.wav", 0.7, freq=550)
    root = tmp_path / "content"

    made = AudioLibrary(root).prepare([first, second])
    mtime = made.path.stat().st_mtime_ns
    assert AudioLibrary(root).prepare([first, second]) == made  # a new library reads the index
    assert len(encodes) == 1
    assert made.path.stat().st_mtime_ns == mtime

    louder = AudioLibrary(root, AudioSettings(bitrate_kbps=32)).prepare([first, second])
    assert len(encodes) == 2
    assert louder.sha256 != made.sha256

    samples.tone(first, 0.7, freq=880)  # same name, new content
    changed = AudioLibrary(root).prepare([first, second])
    assert len(encodes) == 3
    assert changed.sha256 != made.sha256

    changed.path.unlink()  # the index alone is not trusted
    assert AudioLibrary(root).prepare([first, second]) == changed
    assert len(encodes) == 4
    assert changed.path.exists()


def test_get_and_read_return_what_was_stored(tmp_path: Path, library: AudioLibrary) -> None:
    prepared = library.prepare([samples.tone(tmp_path / "tone.wav", 0.5)])
    assert library.get(prepared.sha256) == prepared
    assert library.get("0" * 64) is None
    data = library.read(prepared.sha256)
    assert hashlib.sha256(data).hexdigest() == prepared.sha256
    with pytest.raises(KeyError, match="0000"):
        library.read("0" * 64)

    prepared.path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped on disk
    with pytest.raises(AudioError, match="no longer matches") as damaged:
        library.read(prepared.sha256)
    assert damaged.value.path == prepared.path


def test_content_ref_describes_the_chunks(tmp_path: Path) -> None:
    library = AudioLibrary(tmp_path / "content", AudioSettings(chunk_size=1000))
    prepared = library.prepare([samples.tone(tmp_path / "tone.wav", 1.0)])
    ref = prepared.content_ref()
    assert (ref.sha256, ref.size, ref.duration_s) == (
        prepared.sha256,
        prepared.size,
        prepared.duration_s,
    )
    assert ref.chunk_size == 1000
    assert ref.chunks == math.ceil(prepared.size / 1000) > 1
    assert ref.codec == "opus"


# --- generated samples ---------------------------------------------------------------------


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1
        return wav.getnframes() / wav.getframerate()


def test_tone_and_chime_are_audible_wavs(tmp_path: Path, library: AudioLibrary) -> None:
    tone = samples.tone(tmp_path / "tone.wav", 1.25, freq=1000)
    chime = samples.chime(tmp_path / "chime.wav")
    assert wav_seconds(tone) == pytest.approx(1.25, abs=0.001)
    assert 0.5 < wav_seconds(chime) < 2.0
    assert library.probe(tone) == pytest.approx(1.25, abs=0.01)
    assert library.probe(chime) > 0.5  # not silent: probe would refuse it


def test_speech_with_espeak_ng(tmp_path: Path, library: AudioLibrary) -> None:
    require("espeak-ng", samples.espeak_ng_available(), "apt-get install espeak-ng")
    spoken = tmp_path / "speech.wav"
    assert samples.speech(spoken, "Xin chào bà con.") is True
    assert library.probe(spoken) > 0.5
    bulletin = tmp_path / "demo.wav"
    assert samples.demo_bulletin(bulletin, 4.0) is True
    assert wav_seconds(bulletin) == pytest.approx(4.0, abs=0.01)
    urgent = tmp_path / "urgent.wav"
    assert samples.demo_urgent(urgent, 3.0) is True
    assert wav_seconds(urgent) == pytest.approx(3.0, abs=0.01)
    assert library.probe(urgent) > 2.5


def test_without_espeak_ng_the_demo_falls_back_to_tones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, library: AudioLibrary
) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert not samples.espeak_ng_available()
    assert samples.speech(tmp_path / "speech.wav", "Xin chào") is False
    assert not (tmp_path / "speech.wav").exists()
    bulletin = tmp_path / "demo.wav"
    assert samples.demo_bulletin(bulletin, 3.0) is False
    assert wav_seconds(bulletin) == pytest.approx(3.0, abs=0.01)
    assert library.probe(bulletin) == pytest.approx(3.0, abs=0.05)
    urgent = tmp_path / "urgent.wav"
    assert samples.demo_urgent(urgent, 2.0) is False
    assert library.probe(urgent) == pytest.approx(2.0, abs=0.05)
