"""Output backends: one contract for null, file, ffmpeg and opusdec, then what is particular
to each."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import wave
from array import array
from pathlib import Path

import pytest
from conftest import require, wait_until

from controller.ffmpeg import FfmpegError, ffmpeg_exe, run_ffmpeg
from device_agent.output import (
    FfmpegBackend,
    FileBackend,
    NullBackend,
    OpusdecBackend,
    OutputBackend,
    PlayOutcome,
    make_backend,
    parse_device,
)

STOP_WITHIN_S = 0.3


@pytest.fixture(scope="module")
def ffmpeg_path() -> str:
    """ffmpeg as the agent would be configured with it: PATH, else an explicit path."""
    found = shutil.which("ffmpeg")
    if found is None:
        try:
            found = ffmpeg_exe()
        except FfmpegError:
            found = None
    require("ffmpeg", found is not None, "apt-get install ffmpeg")
    assert found is not None
    return found


def opus_item(path: Path, seconds: float, freq: int) -> Path:
    """A mono Ogg/Opus bulletin item, as the controller prepares them."""
    run_ffmpeg(
        [
            "-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=48000:duration={seconds}",
            "-c:a", "libopus", "-b:a", "24k", "-application", "voip", "-f", "ogg", "-y",
            str(path),
        ],
        what=str(path),
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def opus_tools() -> tuple[str, str]:
    """opusdec and aplay, as the opusdec output finds them (PATH)."""
    opusdec, aplay = shutil.which("opusdec"), shutil.which("aplay")
    require("opusdec", opusdec is not None, "apt-get install opus-tools")
    require("aplay", aplay is not None, "apt-get install alsa-utils")
    assert opusdec is not None
    assert aplay is not None
    return opusdec, aplay


@pytest.fixture
def one_second(tmp_path: Path, ffmpeg_path: str) -> list[Path]:
    """A ~1 s bulletin in two items, so that backends join them."""
    return [
        opus_item(tmp_path / "a.opus", 0.6, 440),
        opus_item(tmp_path / "b.opus", 0.4, 660),
    ]


@pytest.fixture
def two_seconds(tmp_path: Path, ffmpeg_path: str) -> list[Path]:
    return [
        opus_item(tmp_path / "c.opus", 1.2, 440),
        opus_item(tmp_path / "d.opus", 0.8, 660),
    ]


@pytest.fixture(params=["null", "file", "ffmpeg-null", "opusdec-null"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, ffmpeg_path: str) -> OutputBackend:
    if request.param == "opusdec-null":
        opusdec, aplay = request.getfixturevalue("opus_tools")
        return make_backend("opusdec", device="null", opusdec=opusdec, aplay=aplay)
    if request.param == "null":
        return make_backend("null")
    if request.param == "file":
        return make_backend("file", out_dir=tmp_path / "out", ffmpeg=ffmpeg_path)
    return make_backend("ffmpeg", device="null", ffmpeg=ffmpeg_path)


class TestOutputContract:
    """What the player relies on, whichever backend the cluster uses."""

    def test_check_passes(self, backend: OutputBackend) -> None:
        assert backend.check() is None

    def test_plays_to_completion(self, backend: OutputBackend, one_second: list[Path]) -> None:
        started = time.monotonic()
        outcome = backend.play(one_second, 1.0, "bulletin-1", threading.Event())
        took = time.monotonic() - started
        assert outcome.error is None
        assert outcome.completed is True
        assert outcome.played_s == pytest.approx(1.0, abs=0.1)
        assert took >= 0.9  # played in real time, not as fast as it could decode

    def test_stop_midway_ends_the_play_promptly(
        self, backend: OutputBackend, two_seconds: list[Path]
    ) -> None:
        stop = threading.Event()
        result: list[tuple[PlayOutcome, float]] = []

        def play() -> None:
            outcome = backend.play(two_seconds, 2.0, "bulletin-2", stop)
            result.append((outcome, time.monotonic()))

        player = threading.Thread(target=play)
        started = time.monotonic()
        player.start()
        wait_until(lambda: time.monotonic() - started >= 0.6, what="0.6 s of the play")
        assert not result, "the play ended before it was stopped"
        stopped_at = time.monotonic()
        stop.set()
        wait_until(lambda: bool(result), timeout=5, what="the play to return after stop")
        player.join()
        outcome, returned_at = result[0]
        assert returned_at - stopped_at < STOP_WITHIN_S
        assert outcome.completed is False
        assert outcome.error is None
        assert 0.3 <= outcome.played_s <= 0.9

    def test_a_play_stopped_before_it_starts_plays_nothing(
        self, backend: OutputBackend, one_second: list[Path]
    ) -> None:
        stop = threading.Event()
        stop.set()
        started = time.monotonic()
        outcome = backend.play(one_second, 1.0, "bulletin-3", stop)
        assert time.monotonic() - started < STOP_WITHIN_S
        assert outcome.completed is False
        assert outcome.played_s < 0.1


def child_pids() -> set[int]:
    """The processes this test process has started and not yet reaped (Linux /proc)."""
    pids: set[int] = set()
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids.update(int(pid) for pid in children.read_text().split())
    return pids


@pytest.mark.parametrize("kind", ["ffmpeg", "opusdec"])
def test_stop_ends_the_output_processes(
    request: pytest.FixtureRequest, kind: str, ffmpeg_path: str, two_seconds: list[Path]
) -> None:
    require(
        "/proc/<pid>/task/<tid>/children",
        any(Path("/proc/self/task").glob("*/children")),
        "a Linux kernel with CONFIG_PROC_CHILDREN",
    )
    backend: OutputBackend
    if kind == "opusdec":
        opusdec, aplay = request.getfixturevalue("opus_tools")
        backend = OpusdecBackend(device="null", opusdec=opusdec, aplay=aplay)
    else:
        backend = FfmpegBackend(device="null", ffmpeg=ffmpeg_path)
    before = child_pids()
    stop = threading.Event()
    result: list[PlayOutcome] = []
    player = threading.Thread(
        target=lambda: result.append(backend.play(two_seconds, 2.0, "bulletin-7", stop))
    )
    player.start()
    wait_until(lambda: child_pids() - before, what=f"{kind} to start")
    stop.set()
    wait_until(lambda: bool(result), timeout=STOP_WITHIN_S, what="the play to end on stop")
    player.join()
    assert result[0].completed is False
    assert not child_pids() - before, f"{kind} still runs (or was never reaped) after stop"


# --- file ------------------------------------------------------------------------------------


def test_file_backend_writes_one_mono_48k_wav_per_play(
    tmp_path: Path, ffmpeg_path: str, one_second: list[Path]
) -> None:
    backend = FileBackend(tmp_path / "out", ffmpeg=ffmpeg_path, realtime=False)
    outcome = backend.play(one_second, 1.0, "play/7: bản tin", threading.Event())
    assert outcome.completed is True
    written = backend.path_for("play/7: bản tin")
    assert written.parent == tmp_path / "out"
    assert [p.name for p in written.parent.iterdir()] == [written.name]  # no temp file left
    with wave.open(str(written), "rb") as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (1, 48000, 2)
        seconds = wav.getnframes() / wav.getframerate()
    assert seconds == pytest.approx(1.0, abs=0.05)
    assert outcome.played_s == pytest.approx(seconds)


def test_file_backend_reports_an_unwritable_folder(tmp_path: Path, ffmpeg_path: str) -> None:
    in_the_way = tmp_path / "out"
    in_the_way.write_text("a file where the folder should be")
    backend = FileBackend(in_the_way, ffmpeg=ffmpeg_path)
    problem = backend.check()
    assert problem is not None
    assert str(in_the_way) in problem
    assert "not writable" in problem
    outcome = backend.play([tmp_path / "x.opus"], 1.0, "p", threading.Event())
    assert outcome.completed is False
    assert outcome.error is not None


# --- ffmpeg ----------------------------------------------------------------------------------


def test_ffmpeg_backend_reports_ffmpeg_failure_with_its_stderr(
    tmp_path: Path, ffmpeg_path: str, one_second: list[Path]
) -> None:
    corrupt = tmp_path / "corrupt.opus"
    corrupt.write_bytes(b"not an ogg stream at all\n" * 50)
    backend = FfmpegBackend(device="null", ffmpeg=ffmpeg_path)
    outcome = backend.play([one_second[0], corrupt], 1.0, "bulletin-4", threading.Event())
    assert outcome.completed is False
    assert outcome.error is not None
    assert "ffmpeg exited with status" in outcome.error
    assert "corrupt.opus" in outcome.error  # the stderr tail names the input


def test_ffmpeg_backend_reports_a_missing_item(tmp_path: Path, ffmpeg_path: str) -> None:
    missing = tmp_path / "gone.opus"
    outcome = FfmpegBackend(device="null", ffmpeg=ffmpeg_path).play(
        [missing], 1.0, "bulletin-5", threading.Event()
    )
    assert (outcome.completed, outcome.played_s) == (False, 0.0)
    assert outcome.error is not None
    assert str(missing) in outcome.error


def test_a_missing_ffmpeg_is_reported_with_what_to_do(
    tmp_path: Path, one_second: list[Path]
) -> None:
    nowhere = str(tmp_path / "bin" / "ffmpeg")
    for backend in (
        FfmpegBackend(device="null", ffmpeg=nowhere),
        FileBackend(tmp_path / "out", ffmpeg=nowhere),
    ):
        problem = backend.check()
        assert problem is not None
        assert "ffmpeg not found" in problem
        assert "apt-get install ffmpeg" in problem
        outcome = backend.play(one_second, 1.0, "bulletin-6", threading.Event())
        assert outcome.completed is False
        assert outcome.error == problem


def test_check_names_a_sound_device_that_cannot_be_opened(ffmpeg_path: str) -> None:
    problem = FfmpegBackend(device="alsa:loa_no_such_card", ffmpeg=ffmpeg_path).check()
    assert problem is not None
    # Either this ffmpeg has no ALSA output at all, or it cannot open that device.
    assert "loa_no_such_card" in problem or "cannot play to alsa" in problem


@pytest.mark.parametrize(
    ("device", "parsed"),
    [
        ("alsa:default", ("alsa", "default")),
        ("alsa:plughw:1,0", ("alsa", "plughw:1,0")),
        ("pulse:default", ("pulse", "default")),
        ("null", ("null", "-")),
    ],
)
def test_devices_are_parsed(device: str, parsed: tuple[str, str]) -> None:
    assert parse_device(device) == parsed


@pytest.mark.parametrize("device", ["default", "alsa:", "oss:/dev/dsp", ""])
def test_unknown_devices_are_refused_with_the_accepted_forms(device: str) -> None:
    with pytest.raises(ValueError, match="alsa:<device>"):
        FfmpegBackend(device=device)


def test_make_backend_builds_what_the_config_names(tmp_path: Path) -> None:
    ffmpeg = make_backend("ffmpeg", device="pulse:default", ffmpeg="/opt/ffmpeg")
    assert isinstance(ffmpeg, FfmpegBackend)
    assert (ffmpeg.name, ffmpeg.device, ffmpeg.ffmpeg) == ("ffmpeg", "pulse:default", "/opt/ffmpeg")
    file = make_backend("file", out_dir=tmp_path)
    assert isinstance(file, FileBackend)
    assert file.name == "file"
    assert file.out_dir == tmp_path
    assert isinstance(make_backend("null"), NullBackend)
    opus = make_backend("opusdec", device="alsa:plughw:1,0", opusdec="/opt/opusdec")
    assert isinstance(opus, OpusdecBackend)
    assert (opus.name, opus.alsa_device, opus.opusdec, opus.aplay) == (
        "opusdec", "plughw:1,0", "/opt/opusdec", "aplay",
    )
    with pytest.raises(ValueError, match="out_dir"):
        make_backend("file")


# --- opusdec ---------------------------------------------------------------------------------


def test_opusdec_backend_reports_a_decoder_failure_with_its_stderr(
    tmp_path: Path, opus_tools: tuple[str, str], one_second: list[Path]
) -> None:
    corrupt = tmp_path / "corrupt.opus"
    corrupt.write_bytes(b"not an ogg stream at all\n" * 50)
    backend = OpusdecBackend(device="null", opusdec=opus_tools[0], aplay=opus_tools[1])
    outcome = backend.play([one_second[0], corrupt], 1.0, "bulletin-4", threading.Event())
    assert outcome.completed is False
    assert outcome.error is not None
    assert "opusdec exited with status" in outcome.error
    assert "corrupt.opus" in outcome.error
    assert outcome.played_s == pytest.approx(0.6, abs=0.15)  # the first item played


def test_opusdec_backend_reports_a_device_aplay_cannot_open(
    opus_tools: tuple[str, str], one_second: list[Path]
) -> None:
    backend = OpusdecBackend(
        device="alsa:loa_no_such_card", opusdec=opus_tools[0], aplay=opus_tools[1]
    )
    problem = backend.check()
    assert problem is not None
    assert "no ALSA device 'loa_no_such_card'" in problem
    assert "aplay -l" in problem
    outcome = backend.play(one_second, 1.0, "bulletin-8", threading.Event())
    assert outcome.completed is False
    assert outcome.error is not None
    assert "aplay exited with status" in outcome.error
    assert "loa_no_such_card" in outcome.error


def test_opusdec_backend_reports_missing_programs_with_their_packages(
    tmp_path: Path, opus_tools: tuple[str, str], one_second: list[Path]
) -> None:
    nowhere = str(tmp_path / "bin" / "missing")
    for backend, package in (
        (OpusdecBackend(device="null", opusdec=nowhere, aplay=opus_tools[1]), "opus-tools"),
        (OpusdecBackend(device="null", opusdec=opus_tools[0], aplay=nowhere), "alsa-utils"),
    ):
        problem = backend.check()
        assert problem is not None
        assert "missing not found" in problem
        assert f"apt-get install {package}" in problem
        outcome = backend.play(one_second, 1.0, "bulletin-9", threading.Event())
        assert (outcome.completed, outcome.error) == (False, problem)


def test_opusdec_backend_plays_both_channels_at_the_volume_asked(
    tmp_path: Path, opus_tools: tuple[str, str], one_second: list[Path]
) -> None:
    """Through ALSA's file device (raw PCM written to a file), the samples aplay played."""
    peaks = {}
    for volume in (100, 50, 0):
        sink = tmp_path / f"played-{volume}.raw"
        backend = OpusdecBackend(
            device=f"alsa:file:{sink},raw", opusdec=opus_tools[0], aplay=opus_tools[1]
        )
        outcome = backend.play(one_second, 1.0, f"v{volume}", threading.Event(), volume)
        assert (outcome.completed, outcome.error) == (True, None)
        # s16 stereo at 48 kHz: 192,000 bytes a second; aplay pads each item's end to a
        # whole period (up to ~0.1 s here), so two items may come out ~0.2 s long
        assert sink.stat().st_size / 192_000 == pytest.approx(1.0, abs=0.2)
        samples = array("h", sink.read_bytes())
        # the same bulletin on left and right; opusdec's noise-shaped dither differs per
        # channel by a few steps (32 is -60 dBFS)
        assert max(abs(a - b) for a, b in zip(samples[0::2], samples[1::2], strict=True)) < 32
        peaks[volume] = max(abs(s) for s in samples)
    assert 0.47 < peaks[50] / peaks[100] < 0.53
    assert peaks[0] < 3


@pytest.mark.parametrize("device", ["pulse:default", "default", "alsa:"])
def test_opusdec_backend_refuses_devices_it_cannot_play_to(device: str) -> None:
    with pytest.raises(ValueError, match="alsa:"):
        OpusdecBackend(device=device)
