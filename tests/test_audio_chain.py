"""The audio the clusters get, measured on speech: loudness, true peak, the horn profile.

Every figure is measured on the prepared Opus DECODED again (ffmpeg's ebur128: EBU R128
integrated loudness, loudness range, true peak at 4x oversampling), and where it matters
on the 16-bit output of opusdec, the decoder the agents run. The sources are the corpus
of tests/speech_corpus.py, made once per session: espeak-ng Vietnamese at several
levels, shouted, over street noise, and a music bed.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest
from conftest import require
from speech_corpus import Corpus, make

from controller import audio_chain
from controller.audio import AudioError, AudioLibrary, AudioSettings, silence_threshold
from controller.audio_chain import FULL_RANGE, HORN
from controller.ffmpeg import (
    FfmpegError,
    Loudness,
    decode_pcm,
    ffmpeg_exe,
    loudness,
    run_ffmpeg,
    segment_from_pcm,
)

ROOT = Path(__file__).resolve().parent.parent
TARGET = -16.0
CEILING = -1.0


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    try:
        ffmpeg_exe()
        found = True
    except FfmpegError:
        found = False
    require("ffmpeg", found, "apt-get install ffmpeg")
    require("espeak-ng", shutil.which("espeak-ng") is not None, "apt-get install espeak-ng")
    return make(tmp_path_factory.mktemp("speech-corpus"))


@pytest.fixture(scope="session")
def library(tmp_path_factory: pytest.TempPathFactory) -> AudioLibrary:
    """One audio library for the session (48 kHz, the library's default), so a source
    prepared for one test is not prepared again for the next."""
    return AudioLibrary(tmp_path_factory.mktemp("library"), AudioSettings())


def assert_on_target(heard: Loudness, what: str) -> None:
    assert abs(heard.integrated_lufs - TARGET) <= 1.0, f"{what}: {heard}"
    assert heard.true_peak_dbtp <= CEILING, f"{what}: {heard}"


def opusdec_peak_dbfs(opus: Path, tmp: Path) -> float:
    """The highest sample of opusdec's 16-bit output at 48 kHz (as the agents run it, without
    dither), in dBFS."""
    require("opusdec", shutil.which("opusdec") is not None, "apt-get install opus-tools")
    wav = tmp / f"{opus.stem}.opusdec.wav"
    subprocess.run(
        ["opusdec", "--quiet", "--rate", "48000", "--no-dither", "--force-wav", str(opus),
         str(wav)],
        check=True, capture_output=True, timeout=60,
    )
    with wave.open(str(wav)) as f:
        segment = segment_from_pcm(f.readframes(f.getnframes()), f.getframerate())
    return float(segment.max_dBFS)


def band_rms_db(path: Path, *filters: str) -> float:
    """The RMS level (dBFS) of a file's decoded audio after the filters."""
    chain = ",".join([*filters, "astats=measure_overall=RMS_level:measure_perchannel=none"])
    proc = run_ffmpeg(["-i", str(path), "-af", chain, "-f", "null", "-"], loglevel="info",
                      what=f"measuring {path}")
    found = re.findall(r"RMS level dB: (-?[\d.]+|-inf)", proc.stderr.decode())
    assert found, proc.stderr.decode()[-500:]
    return float(found[-1])


#: Four 2-pole sections: 48 dB/octave. Below CUT_OFF_HZ is what horns do not play.
CUT_OFF_HZ = 120


def below_cut_off_db(path: Path) -> float:
    """How far under the whole the energy below CUT_OFF_HZ lies (dB; more negative: less)."""
    low = band_rms_db(path, *[f"lowpass=f={CUT_OFF_HZ}:poles=2"] * 4)
    return low - band_rms_db(path, "anull")


def presence_db(path: Path) -> float:
    """The 2-4 kHz band (consonants) against the 300-1000 Hz band (vowels), in dB."""
    presence = band_rms_db(path, *["highpass=f=2000:poles=2"] * 2, *["lowpass=f=4000:poles=2"] * 2)
    body = band_rms_db(path, *["highpass=f=300:poles=2"] * 2, *["lowpass=f=1000:poles=2"] * 2)
    return presence - body


# --- acceptance: loa-controller prepare on speech at -30, -18 and 0 dBFS peak -------------


def prepare_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "prepare", *args],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=300, check=False,
    )


@pytest.mark.parametrize("peak_dbfs", [-30.0, -18.0, 0.0])
def test_prepare_brings_speech_at_any_level_to_the_target_under_the_true_peak(
    peak_dbfs: float, corpus: Corpus, tmp_path: Path
) -> None:
    source = corpus.speech(peak_dbfs)
    before = loudness(source)
    out = tmp_path / "bulletin.opus"
    # In a folder with no config/controller.yaml: the controller's default audio settings.
    result = prepare_cli([str(source), "--out", str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    heard = loudness(out, opus=True)  # the Opus decoded again, as the agents decode it
    assert_on_target(heard, f"speech at {peak_dbfs:g} dBFS peak")
    assert before.integrated_lufs < -19  # the sources were not already on target
    # The agents' decoder writes 16-bit samples: none reaches full scale.
    assert opusdec_peak_dbfs(out, tmp_path) <= CEILING
    # What it prints is what the file measures.
    [row] = [line for line in result.stdout.splitlines() if line.startswith("bulletin ")]
    assert f"{heard.integrated_lufs:.1f} LUFS" in row
    assert f"{heard.range_lu:.1f} LU" in row
    assert f"{heard.true_peak_dbtp:.1f} dBTP" in row
    [source_row] = [line for line in result.stdout.splitlines() if line.startswith("source ")]
    assert f"{before.integrated_lufs:.1f} LUFS" in source_row
    assert "profile horn" in result.stdout
    assert "16000 Hz" in result.stdout  # the controller config's default rate


def test_prepare_says_what_is_wrong_with_a_file_and_writes_nothing(
    corpus: Corpus, tmp_path: Path
) -> None:
    out = tmp_path / "bulletin.opus"
    missing = tmp_path / "ban-tin.mp3"
    result = prepare_cli([str(missing), "--out", str(out)], cwd=tmp_path)
    assert result.returncode == 1
    assert f"{missing}: no such file" in result.stderr
    too_quiet = corpus.speech(-48.0)
    result = prepare_cli([str(corpus.speech(0.0)), str(too_quiet), "--out", str(out)],
                         cwd=tmp_path)
    assert result.returncode == 1
    assert f"{too_quiet}: the audio is too quiet to use" in result.stderr
    assert "Record it again" in result.stderr
    result = prepare_cli([str(corpus.speech(0.0)), "--out", str(out), "--profile", "indoor"],
                         cwd=tmp_path)
    assert result.returncode == 2
    assert "'horn', 'full-range'" in result.stderr
    assert not out.exists()


# --- every kind of source, every profile ------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "profile"),
    [
        ("shouted", "horn"),
        ("street", "horn"),
        ("music", "horn"),
        ("varying", "horn"),
        ("central", "horn"),
        ("southern", "horn"),
        ("shouted", "full-range"),
        ("music", "full-range"),
        ("central", "full-range"),
    ],
)
def test_every_kind_of_source_comes_out_on_target_under_the_true_peak(
    kind: str, profile: str, corpus: Corpus, library: AudioLibrary, tmp_path: Path
) -> None:
    source: Path = getattr(corpus, kind)
    prepared = library.prepare([source], profile=profile)
    heard = loudness(prepared.path, opus=True)
    assert_on_target(heard, f"{kind} for {profile}")
    assert prepared.measured == heard  # what the library records is what it measures
    assert opusdec_peak_dbfs(prepared.path, tmp_path) <= CEILING


def test_a_shouted_source_clipped_above_full_scale_is_brought_down(
    corpus: Corpus, library: AudioLibrary
) -> None:
    before = loudness(corpus.shouted)
    assert before.true_peak_dbtp > 0  # clipped flat: its peaks between samples go over
    assert before.integrated_lufs > TARGET + 4
    heard = loudness(library.prepare([corpus.shouted]).path, opus=True)
    assert_on_target(heard, "shouted")


def test_short_sharp_sounds_are_left_under_the_target_rather_than_crushed(
    library: AudioLibrary, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bell struck four times a second: to reach -16 LUFS its strikes would lose more
    than 20 dB to the limiter and come out a buzz (the Chromium microphone's beeps in the
    browser test were such a source). Its true peak is held; its loudness is left under."""
    bell = tmp_path / "bell.wav"
    run_ffmpeg(["-f", "lavfi", "-i", "aevalsrc='0.5*sin(2*PI*1000*t)*exp(-mod(t,0.25)*150)'"
                ":s=48000:d=4", "-y", str(bell)], what=str(bell))
    with caplog.at_level(logging.WARNING, logger="controller.audio"):
        prepared = library.prepare([bell])
    heard = prepared.measured
    assert heard is not None
    assert heard.true_peak_dbtp <= CEILING, heard
    assert heard.integrated_lufs < TARGET - 2, heard
    assert heard == loudness(prepared.path, seconds=prepared.duration_s, opus=True)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "controller.audio"]
    assert f"{bell}: prepared at {heard.integrated_lufs:.1f} LUFS" in warning
    assert "short, sharp sounds" in warning


# --- the horn profile, measured ----------------------------------------------------------


def test_the_horn_profile_takes_out_what_horns_cannot_play_and_full_range_keeps_it(
    corpus: Corpus, library: AudioLibrary
) -> None:
    for source in (corpus.music, corpus.street):
        before = below_cut_off_db(source)
        horn = below_cut_off_db(library.prepare([source], profile="horn").path)
        full = below_cut_off_db(library.prepare([source], profile="full-range").path)
        assert before > -10, f"{source.name}: {before:.1f} dB below {CUT_OFF_HZ} Hz"
        # Music keeps its bass on full-range speakers...
        assert abs(full - before) <= 3, f"{source.name}: {before:.1f} -> {full:.1f} dB"
        # ...and the horns get next to none of it, where it would only eat their power:
        # at 110 Hz the 24 dB/octave high-pass at 180 Hz takes 18 dB, at 55 Hz 41 dB.
        assert horn <= before - 18, f"{source.name}: {before:.1f} -> {horn:.1f} dB"


def test_the_horn_profile_lifts_the_presence_band(corpus: Corpus, library: AudioLibrary) -> None:
    source = corpus.speech(-18.0)
    horn = presence_db(library.prepare([source], profile="horn").path)
    full = presence_db(library.prepare([source], profile="full-range").path)
    lift = horn - full
    assert HORN.presence_db - 2 <= lift <= HORN.presence_db + 2, f"{lift:.1f} dB"


def test_the_horn_profile_narrows_the_loudness_range(
    corpus: Corpus, library: AudioLibrary
) -> None:
    before = loudness(corpus.varying)
    assert before.range_lu >= 12  # sentences 14 dB apart
    horn = library.prepare([corpus.varying], profile="horn").measured
    full = library.prepare([corpus.varying], profile="full-range").measured
    assert horn is not None
    assert full is not None
    # The quiet sentence is brought nearer the loud ones: at most half the range left,
    # and clearly less than with level and true peak alone.
    assert horn.range_lu <= before.range_lu / 2, (before, horn)
    assert horn.range_lu <= full.range_lu - 2, (full, horn)


def test_the_profiles_are_what_the_documentation_says() -> None:
    assert audio_chain.PROFILE_NAMES == ("horn", "full-range")
    assert set(audio_chain.PROFILES) == set(audio_chain.PROFILE_NAMES)
    assert audio_chain.DEFAULT_PROFILE == "horn"
    assert FULL_RANGE.shaping(TARGET) == []
    assert FULL_RANGE.opus_application == "audio"
    shaping = HORN.shaping(TARGET)
    assert shaping[:2] == ["highpass=f=180:poles=2"] * 2
    assert shaping[2] == "equalizer=f=2800:t=o:w=1.5:g=4"
    assert shaping[3].startswith("acompressor=threshold=-18dB:ratio=2.5:")
    with pytest.raises(ValueError, match="unknown audio profile 'indoor': write one of horn"):
        audio_chain.profile("indoor")
    docs = (ROOT / "docs" / "audio.md").read_text(encoding="utf-8")
    for value in ("180 Hz", "2800 Hz", "+4 dB", "2.5:1", "-1 dBTP", "-16 LUFS"):
        assert value in docs, value


# --- live audio: the same chain in one pass ------------------------------------------------


@pytest.mark.parametrize("profile", ["horn", "full-range"])
@pytest.mark.parametrize("kind", ["speech", "shouted", "street"])
def test_the_chain_holds_the_true_peak_in_one_pass_for_live_audio(
    kind: str, profile: str, corpus: Corpus, tmp_path: Path
) -> None:
    """A rebroadcast or a microphone cannot be measured first: the stream graph runs once,
    on a source at its nominal level and on one 6 dB hotter than that."""
    source = corpus.speech(0.0) if kind == "speech" else getattr(corpus, kind)
    level = loudness(source).integrated_lufs
    chosen = audio_chain.profile(profile)
    graph = audio_chain.stream_graph(
        chosen, sample_rate=48000, target_lufs=TARGET, true_peak_dbtp=CEILING
    )
    for hotter in (0.0, 6.0):
        out = tmp_path / f"live-{hotter:g}.opus"
        gain = audio_chain.STREAM_SOURCE_LUFS + hotter - level  # to the nominal level, or over
        run_ffmpeg(
            ["-i", str(source), "-ac", "1", "-ar", "48000", "-af", f"volume={gain:.2f}dB,{graph}",
             "-c:a", "libopus", "-b:a", "24k", "-application", chosen.opus_application,
             "-f", "ogg", "-y", str(out)],
            what=str(out),
        )  # fmt: skip
        heard = loudness(out, opus=True)
        assert heard.true_peak_dbtp <= CEILING, (hotter, heard)
        if hotter == 0:  # at the nominal level: near the target without measuring
            assert abs(heard.integrated_lufs - TARGET) <= 3, heard


# --- quiet sources: decided by loudness --------------------------------------------------


def test_quiet_speech_is_kept_whole_and_brought_up(corpus: Corpus, library: AudioLibrary) -> None:
    quiet = corpus.speech(-40.0)
    segment = segment_from_pcm(decode_pcm(quiet, sample_rate=48000).pcm, 48000)
    windows = [segment[at : at + 10].dBFS for at in range(0, len(segment), 10)]
    louder = [level for level in windows if level >= -50]
    # By RMS alone it is silence: hardly a 10 ms of it reaches -50 dBFS...
    assert len(louder) < len(windows) / 10, f"{len(louder)} of {len(windows)}"
    # ...but its loudness says speech: it is kept whole and brought to the target.
    prepared = library.prepare([quiet])
    loud = library.prepare([corpus.speech(0.0)])
    assert prepared.duration_s == pytest.approx(loud.duration_s, abs=0.1)
    assert prepared.duration_s >= segment.duration_seconds - 0.5
    assert prepared.measured is not None
    assert_on_target(prepared.measured, "speech at -40 dBFS peak")


@pytest.mark.parametrize("seconds", [0.3, 1.0])
def test_a_sound_shorter_than_the_meter_is_measured_repeated(
    seconds: float, library: AudioLibrary, tmp_path: Path
) -> None:
    """BS.1770 integrates 400 ms blocks: ebur128 finds nothing in a 0.3 s chime, which
    must neither be refused as silent nor brought up 54 dB."""
    chime = tmp_path / "chime.wav"
    run_ffmpeg(["-f", "lavfi", "-i", f"sine=frequency=880:sample_rate=48000:duration={seconds}",
                "-af", "volume=-6dB", "-y", str(chime)], what=str(chime))
    if seconds < 0.4:
        assert loudness(chime).integrated_lufs == -70.0  # the meter alone: nothing
    prepared = library.prepare([chime])
    assert prepared.measured is not None
    assert_on_target(prepared.measured, f"a {seconds} s chime")
    assert prepared.measured == loudness(prepared.path, seconds=prepared.duration_s, opus=True)
    assert prepared.measured.range_lu == 0


def test_the_silence_threshold_follows_the_loudness_and_the_noise_floor(corpus: Corpus) -> None:
    def threshold(path: Path) -> float:
        decoded = decode_pcm(path, sample_rate=48000, measure=True)
        assert decoded.loudness is not None
        return silence_threshold(decoded.loudness, segment_from_pcm(decoded.pcm, 48000))

    assert threshold(corpus.speech(0.0)) == -50  # ordinary level: the usual threshold
    assert threshold(corpus.speech(-30.0)) == pytest.approx(-69.3, abs=0.2)  # 20 LU under
    assert threshold(corpus.street) == -50


def hiss(path: Path, rms_dbfs: float, seconds: float = 3) -> Path:
    amplitude = 10 ** (rms_dbfs / 20) * math.sqrt(3)  # uniform noise: RMS = peak / sqrt(3)
    run_ffmpeg(["-f", "lavfi", "-i", f"aevalsrc='{amplitude:.6f}*(2*random(0)-1)':s=48000:"
                f"d={seconds}", "-y", str(path)], what=str(path))
    return path


@pytest.mark.parametrize(
    ("make_source", "says"),
    [
        (lambda c, tmp: c.speech(-48.0), "the audio is too quiet to use (loudness -6"),
        (lambda c, tmp: hiss(tmp / "hiss.wav", -80), "the audio is silent (peak"),
        (lambda c, tmp: hiss(tmp / "steady-hiss.wav", -55), "no audible sound (nothing louder"),
    ],
    ids=["speech at -48 dBFS peak", "hiss at -80 dBFS", "steady hiss at -55 dBFS"],
)
def test_what_is_really_silent_or_too_quiet_is_refused_naming_the_file(
    make_source: object, says: str, corpus: Corpus, library: AudioLibrary, tmp_path: Path
) -> None:
    assert callable(make_source)
    source: Path = make_source(corpus, tmp_path)
    with pytest.raises(AudioError) as refused:
        library.prepare([corpus.speech(0.0), source])
    assert str(refused.value).startswith(f"{source}: {says}"), str(refused.value)
    assert refused.value.path == source


def test_say_prepares_an_ogg_for_the_audio_profile_of_its_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.cli_speech import _profile

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "province:\n  id: tinh-x\n  name: Tỉnh X\n  communes:\n"
        "    - {id: xa-a, name: Xã A, clusters: [{id: a-01, name: Chợ A}, {id: a-02, name: B}]}\n"
        "    - {id: xa-b, name: Xã B, audio_profile: full-range,\n"
        "       clusters: [{id: b-01, name: Hội trường}]}\n",
        encoding="utf-8",
    )
    monkeypatch.setattr("controller.sources.DEFAULT_FLEET", fleet)

    def profile(*targets: str) -> str:
        return _profile(argparse.Namespace(target=list(targets) or None), None)

    assert profile() == "horn"
    assert profile("xa-b") == "full-range"
    assert profile("xa-a") == "horn"
    assert profile("all") == "horn"  # most of them
