"""Output backends: where a cluster's audio goes.

One small interface, four implementations chosen by the agent config (each also opens a
live sink: a stream of 20 ms Opus packets handed over as they are due, see
device_agent/live.py):
- `opusdec` (the default): decodes the Ogg/Opus items with opusdec (opus-tools) and
  plays them with aplay (alsa-utils) on an ALSA device: two small programs, a few MB;
- `ffmpeg`: streams the bulletin through ffmpeg to the sound card (ALSA or PulseAudio);
- `file`: writes what it would have played as one WAV per play (tests, the demo);
- `null`: plays nothing, takes the bulletin's duration (fleet simulation).

`play` blocks until the audio has finished or `stop` is set, whichever comes first.

The ffmpeg and file backends are the agent's edge to ffmpeg, the opusdec backend its edge
to opusdec and aplay. The agent does not depend on pydub or imageio-ffmpeg: the programs
are found on PATH, or their paths come from the config.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wave
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, Protocol

from protocol.l10n import N_, _
from protocol.live import SLOT_SAMPLES
from protocol.ogg import OggWriter


@dataclass(frozen=True)
class PlayOutcome:
    """How one play on the output ended."""

    completed: bool  # False: stopped early (preempted or stop command)
    played_s: float  # seconds of audio that went out
    error: str | None = None  # set when the output failed; completed is then False


class OutputBackend(Protocol):
    name: str

    def play(
        self,
        items: list[Path],
        duration_s: float,
        label: str,
        stop: threading.Event,
        volume: int = 100,
    ) -> PlayOutcome:
        """Play the items in order (total duration_s) at volume percent (linear gain);
        return when done or when stop is set."""
        ...

    def check(self) -> str | None:
        """None if the output can play now, else what is wrong and what to try."""
        ...

    def open_live(self, label: str, pre_skip: int, volume: int = 100) -> LiveSink:
        """A sink for a live session's audio (raises OSError if it cannot start)."""
        ...


class LiveSink(Protocol):
    """Where a live session's audio goes while it holds the output: 20 ms Opus packets of
    consecutive slots (silence packets in the gaps), written as they fall due."""

    def write(self, packets: Sequence[bytes]) -> None:
        """Hand these packets over (the output plays them after those written before);
        raises OSError if the output has gone."""
        ...

    def close(self) -> str | None:
        """Finish (what was written still plays out); None, or what went wrong."""
        ...


class CountingSink:
    """A live sink that plays nothing: it counts what it was handed (null output)."""

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0

    def write(self, packets: Sequence[bytes]) -> None:
        self.packets += len(packets)
        self.bytes += sum(len(p) for p in packets)

    def close(self) -> str | None:
        return None


class _OggPipeSink:
    """A live sink feeding an Ogg/Opus stream to a program's stdin (ffmpeg, opusdec),
    a page per packet, so that nothing waits in a page."""

    def __init__(self, children: list[_Child], stdin: IO[bytes], pre_skip: int,
                 where: str, done: Callable[[], None] | None = None) -> None:  # fmt: skip
        self._children = children
        self._stdin = stdin
        self._where = where
        self._done = done
        self._ogg = OggWriter()
        self._granule = 0
        self._stdin.write(self._ogg.head(1, pre_skip))

    def write(self, packets: Sequence[bytes]) -> None:
        pages = []
        for packet in packets:
            self._granule += SLOT_SAMPLES
            pages.append(self._ogg.packet(packet, self._granule))
        self._stdin.write(b"".join(pages))
        self._stdin.flush()

    def close(self) -> str | None:
        with contextlib.suppress(OSError):
            self._stdin.close()
        failure: str | None = None
        for child in self._children:
            try:
                child.proc.wait(CHECK_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.end()
            child.end()
            failure = failure or child.failure()
        if failure is None and self._done is not None:
            self._done()
        return f"{self._where}: {failure}" if failure else None


class NullBackend:
    """Plays nothing; takes the audio's duration, or less when stopped."""

    name: str = "null"

    def play(
        self,
        items: list[Path],
        duration_s: float,
        label: str,
        stop: threading.Event,
        volume: int = 100,
    ) -> PlayOutcome:
        started = time.monotonic()
        stopped = stop.wait(duration_s)
        played = min(duration_s, time.monotonic() - started)
        return PlayOutcome(completed=not stopped, played_s=played)

    def check(self) -> str | None:
        return None

    def open_live(self, label: str, pre_skip: int, volume: int = 100) -> LiveSink:
        return CountingSink()


# --- the ffmpeg edge -----------------------------------------------------------------------

#: How often a playing backend looks at its stop event (seconds).
STOP_POLL_S = 0.02
#: How long ffmpeg may take to exit on SIGTERM before it is killed (seconds).
TERMINATE_GRACE_S = 0.05
#: What every backend decodes to.
OUTPUT_RATE = 48000
#: Lines of ffmpeg's stderr kept for an error.
TAIL_LINES = 6
#: How long `check` waits for ffmpeg to open the sound card (seconds).
CHECK_TIMEOUT_S = 10.0

DeviceKind = Literal["alsa", "pulse", "null"]
DEVICE_HELP = N_(
    "write alsa:<device> (alsa:default, alsa:plughw:1,0), pulse:<sink> (pulse:default) or null"
)


def parse_device(device: str) -> tuple[DeviceKind, str]:
    """Split an output device setting ("alsa:default", "pulse:default", "null")."""
    if device == "null":
        return "null", "-"
    kind, sep, target = device.partition(":")
    if sep and target:
        if kind == "alsa":
            return "alsa", target
        if kind == "pulse":
            return "pulse", target
    raise ValueError(_("output device {device!r} is not understood: {help}", device=device,
                       help=_(DEVICE_HELP)))


def _ffmpeg_missing(ffmpeg: str) -> str:
    where = "" if os.sep in ffmpeg else " on PATH"
    return (
        f"ffmpeg not found ({ffmpeg!r} is not an executable{where}): install it "
        "(apt-get install ffmpeg) or set output.ffmpeg in the agent config to its full path"
    )


def _ffmpeg_for(items: list[Path], ffmpeg: str, stop: threading.Event) -> str | PlayOutcome:
    """The ffmpeg to play items with, or the outcome of a play that cannot start."""
    if stop.is_set():
        return PlayOutcome(completed=False, played_s=0.0)
    problem = _items_problem(items)
    exe = shutil.which(ffmpeg)
    if problem is None and exe is None:
        problem = _ffmpeg_missing(ffmpeg)
    if problem is not None or exe is None:
        return PlayOutcome(completed=False, played_s=0.0, error=problem)
    return exe


def _items_problem(items: list[Path]) -> str | None:
    if not items:
        return "nothing to play: the play has no audio items"
    for item in items:
        if not item.is_file():
            return f"{item}: audio file missing; the content cache must fetch it again"
    return None


def _concat(items: list[Path], volume: int = 100) -> tuple[list[str], str]:
    """ffmpeg inputs for the items and a filter graph joining them into one audio stream,
    at volume percent (linear gain; 100 leaves the samples untouched)."""
    inputs: list[str] = []
    for item in items:
        inputs += ["-i", str(item)]
    pads = "".join(f"[{n}:a:0]" for n in range(len(items)))
    graph = f"{pads}concat=n={len(items)}:v=0:a=1"
    if volume != 100:
        graph += f",volume={max(0, min(volume, 100)) / 100:.2f}"
    return inputs, graph


def _live_input(exe: str) -> list[str]:
    """ffmpeg reading a live session's Ogg/Opus stream on its stdin, as it comes."""
    return [
        exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
        "-probesize", "32", "-analyzeduration", "0", "-fflags", "+nobuffer",
        "-f", "ogg", "-i", "pipe:0",
    ]  # fmt: skip


def _volume_filter(volume: int) -> list[str]:
    if volume == 100:
        return []
    return ["-af", f"volume={max(0, min(volume, 100)) / 100:.2f}"]


def _safe_label(label: str) -> str:
    """A file name for a play's label (play ids may hold any character)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label).lstrip(".")[:120] or "play"


class _Child:
    """One running program (ffmpeg, opusdec, aplay). Its stderr is drained as it comes,
    keeping only the last lines, so a chatty program never blocks on a full pipe and
    nothing grows with the bulletin."""

    def __init__(self, argv: list[str], what: str, *, stdin: int = subprocess.DEVNULL,
                 stdout: int = subprocess.DEVNULL) -> None:  # fmt: skip
        self.what = what
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._drain, name=f"{what}-stderr", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        with stream:
            for raw in stream:
                line = raw.decode(errors="replace").strip()
                if line:
                    self._tail.append(line)

    def wait(self, stop: threading.Event) -> bool:
        """Wait until the program exits; if stop is set first, end it and return True."""
        while self.proc.poll() is None:
            if stop.wait(STOP_POLL_S):
                self.end()
                return True
        return False

    def end(self) -> None:
        """Stop the program now: SIGTERM, then SIGKILL if it has not exited within the grace."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._reader.join(1.0)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def failure(self) -> str | None:
        """None if the program exited with 0, else its status and the tail of its stderr."""
        if self.proc.returncode == 0:
            return None
        self._reader.join(1.0)
        tail = " | ".join(self._tail) or f"({self.what} printed nothing)"
        return f"{self.what} exited with status {self.proc.returncode}: {tail}"


def _start(argv: list[str]) -> _Child | str:
    """Start ffmpeg, or say why it could not start."""
    try:
        return _Child(argv, "ffmpeg")
    except OSError as exc:
        return f"cannot start ffmpeg at {argv[0]} ({exc.strerror}): reinstall it"


def _capped(seconds: float, duration_s: float) -> float:
    return min(seconds, duration_s) if duration_s > 0 else seconds


def _ended(
    stopped: bool, played: float, failure: Callable[[], str | None], where: str
) -> PlayOutcome:
    """How a play that ran ended: stopped, failed (`where: why`), or completed."""
    if stopped:
        return PlayOutcome(completed=False, played_s=played)
    why = failure()
    if why is not None:
        return PlayOutcome(completed=False, played_s=played, error=f"{where}: {why}")
    return PlayOutcome(completed=True, played_s=played)


class FfmpegBackend:
    """Streams the items through one ffmpeg process to the sound card.

    ffmpeg reads the files itself, so the bulletin is never held in the agent's memory.
    Device "null" decodes at real-time pace to nowhere: the whole path without a card.
    """

    name: str = "ffmpeg"

    def __init__(self, device: str = "alsa:default", ffmpeg: str = "ffmpeg") -> None:
        self.device = device
        self.kind, self.target = parse_device(device)
        self.ffmpeg = ffmpeg

    def _output_args(self) -> list[str]:
        if self.kind == "null":
            return ["-ac", "1", "-ar", str(OUTPUT_RATE), "-f", "null", "-"]
        # Both channels carry the bulletin: horns are often wired to left and right.
        common = ["-ac", "2", "-ar", str(OUTPUT_RATE)]
        if self.kind == "alsa":
            return [*common, "-f", "alsa", self.target]
        sink = [] if self.target == "default" else ["-device", self.target]
        return [*common, "-f", "pulse", *sink, "loa"]

    def play(
        self,
        items: list[Path],
        duration_s: float,
        label: str,
        stop: threading.Event,
        volume: int = 100,
    ) -> PlayOutcome:
        exe = _ffmpeg_for(items, self.ffmpeg, stop)
        if isinstance(exe, PlayOutcome):
            return exe
        inputs, graph = _concat(items, volume)
        if self.kind == "null":
            # Paced in the graph, after the join: `-re` paces each input from ffmpeg's start,
            # so a second item would be read at full speed while the first one plays.
            graph += ",arealtime"
        argv = [
            exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
            *inputs, "-filter_complex", f"{graph}[out]", "-map", "[out]",
            *self._output_args(),
        ]  # fmt: skip
        run = _start(argv)
        if isinstance(run, str):
            return PlayOutcome(completed=False, played_s=0.0, error=run)
        stopped = run.wait(stop)
        played = _capped(run.elapsed(), duration_s)
        return _ended(stopped, played, run.failure, f"{label} on {self.device}")

    def open_live(self, label: str, pre_skip: int, volume: int = 100) -> LiveSink:
        exe = shutil.which(self.ffmpeg)
        if exe is None:
            raise OSError(_ffmpeg_missing(self.ffmpeg))
        argv = [
            *_live_input(exe), *_volume_filter(volume), *self._output_args(),
        ]
        child = _Child(argv, "ffmpeg", stdin=subprocess.PIPE)
        assert child.proc.stdin is not None
        return _OggPipeSink([child], child.proc.stdin, pre_skip, f"{label} on {self.device}")

    def check(self) -> str | None:
        exe = shutil.which(self.ffmpeg)
        if exe is None:
            return _ffmpeg_missing(self.ffmpeg)
        if self.kind == "null":
            return None
        devices = subprocess.run(
            [exe, "-hide_banner", "-devices"], capture_output=True, timeout=CHECK_TIMEOUT_S,
            check=False,
        )  # fmt: skip
        if not re.search(rf"^\s*D?E\S*\s+{self.kind}\s", devices.stdout.decode(), re.MULTILINE):
            return (
                f"this ffmpeg ({exe}) cannot play to {self.kind} (built without it): install "
                "the distribution's ffmpeg (apt-get install ffmpeg) or set output.ffmpeg to "
                "one that has it"
            )
        argv = [
            exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
            "-f", "lavfi", "-i", f"anullsrc=r={OUTPUT_RATE}:cl=stereo", "-t", "0.1",
            *self._output_args(),
        ]  # fmt: skip
        try:
            opened = subprocess.run(argv, capture_output=True, timeout=CHECK_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return (
                f"ffmpeg did not open {self.device} within {CHECK_TIMEOUT_S:g} s: the device "
                "may be held by another program; check with `fuser -v /dev/snd/*`"
            )
        if opened.returncode == 0:
            return None
        lines = opened.stderr.decode(errors="replace").strip().splitlines()
        said = " | ".join(lines[-TAIL_LINES:]) or f"status {opened.returncode}"
        if self.kind == "alsa":
            return (
                f"no ALSA device {self.target!r} (ffmpeg: {said}): check that `aplay -l` lists "
                "the sound card and that the agent's user is in the 'audio' group, or set "
                "output.device to one that exists (e.g. alsa:plughw:1,0)"
            )
        return (
            f"cannot play to PulseAudio sink {self.target!r} (ffmpeg: {said}): check that a "
            "PulseAudio or PipeWire server runs for the agent's user (`pactl info`), or set "
            "output.device (e.g. pulse:default)"
        )


@contextlib.contextmanager
def _temp_wav(folder: Path) -> Iterator[Path]:
    """A temporary file in folder, so that renaming it into place is atomic; removed after."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=".", suffix=".wav.tmp")
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
    finally:
        temp.unlink(missing_ok=True)


def _wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


class FileBackend:
    """Writes what it would have played as one WAV per airing: `<out_dir>/<label>.wav`
    (`<label>-2.wav` for a second airing of the same play).

    The items are decoded (mono, 48 kHz, s16) before the play starts; when realtime, the
    play then takes the audio's duration (less when stopped), like a sound card would.
    """

    name: str = "file"

    def __init__(self, out_dir: Path, ffmpeg: str = "ffmpeg", realtime: bool = True) -> None:
        self.out_dir = out_dir
        self.ffmpeg = ffmpeg
        self.realtime = realtime

    def path_for(self, label: str) -> Path:
        return self.out_dir / f"{_safe_label(label)}.wav"

    def free_path_for(self, label: str) -> Path:
        """path_for(label), or `<label>-2.wav`, `-3`... if it exists: a play that airs
        twice (replayed after an interruption) leaves two files, never one overwritten."""
        first = self.path_for(label)
        path, n = first, 1
        while path.exists():
            n += 1
            path = first.with_name(f"{first.stem}-{n}.wav")
        return path

    def play(
        self,
        items: list[Path],
        duration_s: float,
        label: str,
        stop: threading.Event,
        volume: int = 100,
    ) -> PlayOutcome:
        exe = _ffmpeg_for(items, self.ffmpeg, stop)
        if isinstance(exe, PlayOutcome):
            return exe
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return PlayOutcome(
                completed=False, played_s=0.0, error=self._not_writable(exc.strerror)
            )
        inputs, graph = _concat(items, volume)
        with _temp_wav(self.out_dir) as temp:
            argv = [
                exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
                *inputs, "-filter_complex", f"{graph}[out]", "-map", "[out]",
                "-ac", "1", "-ar", str(OUTPUT_RATE), "-c:a", "pcm_s16le",
                "-fflags", "+bitexact", "-f", "wav", "-y", str(temp),
            ]  # fmt: skip
            run = _start(argv)
            if isinstance(run, str):
                return PlayOutcome(completed=False, played_s=0.0, error=run)
            if run.wait(stop):
                return PlayOutcome(completed=False, played_s=0.0)
            failure = run.failure()
            if failure is not None:
                return PlayOutcome(
                    completed=False, played_s=0.0, error=f"{label} to {self.out_dir}: {failure}"
                )
            seconds = _wav_seconds(temp)
            temp.replace(self.free_path_for(label))
        if not self.realtime:
            return PlayOutcome(completed=True, played_s=seconds)
        started = time.monotonic()
        stopped = stop.wait(seconds)
        return PlayOutcome(completed=not stopped, played_s=min(seconds, time.monotonic() - started))

    def open_live(self, label: str, pre_skip: int, volume: int = 100) -> LiveSink:
        """The session's audio as `<label>.wav`, written as it comes (renamed into place
        when the session lets the output go)."""
        exe = shutil.which(self.ffmpeg)
        if exe is None:
            raise OSError(_ffmpeg_missing(self.ffmpeg))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.out_dir, prefix=".", suffix=".wav.tmp")
        os.close(fd)
        temp = Path(name)
        argv = [
            *_live_input(exe), *_volume_filter(volume),
            "-ac", "1", "-ar", str(OUTPUT_RATE), "-c:a", "pcm_s16le",
            "-fflags", "+bitexact", "-f", "wav", "-y", str(temp),
        ]  # fmt: skip
        child = _Child(argv, "ffmpeg", stdin=subprocess.PIPE)
        assert child.proc.stdin is not None

        def done() -> None:
            temp.replace(self.free_path_for(label))

        return _OggPipeSink(
            [child], child.proc.stdin, pre_skip, f"{label} to {self.out_dir}", done
        )

    def _not_writable(self, reason: str | None) -> str:
        return (
            f"output folder {self.out_dir} is not writable ({reason}): make it writable by "
            "the agent's user, or set output.out_dir to another folder"
        )

    def check(self) -> str | None:
        if shutil.which(self.ffmpeg) is None:
            return _ffmpeg_missing(self.ffmpeg)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.out_dir):
                pass
        except OSError as exc:
            return self._not_writable(exc.strerror)
        return None


# --- opusdec and aplay -----------------------------------------------------------------------

#: Channels aplay is fed: both carry the bulletin (horns are often wired to left and right).
APLAY_CHANNELS = 2
#: Bytes of one second of what aplay is fed (signed 16-bit, 48 kHz, stereo).
APLAY_BYTES_PER_S = OUTPUT_RATE * 2 * APLAY_CHANNELS
#: What the feeder moves at a time: a tenth of a second of audio.
BLOCK_BYTES = APLAY_BYTES_PER_S // 10
#: opusdec's quietest gain (dB), used for volume 0: far below 16-bit's noise floor.
MIN_GAIN_DB = -128.0
RAW_FORMAT = ["-t", "raw", "-f", "S16_LE", "-r", str(OUTPUT_RATE), "-c", str(APLAY_CHANNELS)]
OPUSDEC_DEVICE_HELP = N_(
    "the opusdec output plays through ALSA: write alsa:<device> (alsa:default, "
    "alsa:plughw:1,0; alsa:pulse for a PulseAudio or PipeWire server) or null, "
    "or set output.kind: ffmpeg to play to pulse:<sink>"
)


def _program_missing(program: str, package: str, key: str) -> str:
    where = "" if os.sep in program else " on PATH"
    return (
        f"{Path(program).name} not found ({program!r} is not an executable{where}): install "
        f"it (apt-get install {package}) or set output.{key} in the agent config to its full path"
    )


def gain_db(volume: int) -> float | None:
    """opusdec's --gain for a volume in percent (linear gain); None for 100."""
    volume = max(0, min(volume, 100))
    if volume == 100:
        return None
    if volume == 0:
        return MIN_GAIN_DB
    return max(MIN_GAIN_DB, 20 * math.log10(volume / 100))


def _is_wav(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(12)
    return head[:4] == b"RIFF" and head[8:12] == b"WAVE"


def _wav_blocks(path: Path, volume: int) -> Iterator[bytes]:
    """A 16-bit 48 kHz WAV (the test tone) as aplay's raw stereo blocks, at volume."""
    with wave.open(str(path), "rb") as wav:
        channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
        if width != 2 or rate != OUTPUT_RATE or channels not in (1, 2):
            raise ValueError(
                f"{path.name} is a WAV of {channels} channel(s), {8 * width} bits, {rate} Hz: "
                f"this output plays Ogg/Opus, or 16-bit {OUTPUT_RATE} Hz WAV"
            )
        frames_per_block = BLOCK_BYTES // (2 * APLAY_CHANNELS)
        gain = max(0, min(volume, 100)) / 100
        while data := wav.readframes(frames_per_block):
            samples = array("h", data)
            if sys.byteorder == "big":
                samples.byteswap()
            if gain != 1:
                samples = array("h", (int(s * gain) for s in samples))
            if channels == 1:
                both = array("h", bytes(4 * len(samples)))
                both[0::2] = samples
                both[1::2] = samples
                samples = both
            if sys.byteorder == "big":
                samples.byteswap()
            yield samples.tobytes()


class _OpusPipeline:
    """One play: aplay on the device, fed by a thread that runs opusdec on each item in turn
    (or reads a WAV) and passes its PCM on, a tenth of a second at a time. Nothing grows
    with the bulletin: the audio stays in the files, the pipes and aplay's buffer."""

    def __init__(self, backend: OpusdecBackend, opusdec: str, aplay: str, items: list[Path],
                 volume: int, stop: threading.Event) -> None:  # fmt: skip
        self.backend = backend
        self.opusdec = opusdec
        self.items = items
        self.volume = volume
        self.stop = stop
        self.error: str | None = None
        self._lock = threading.Lock()
        self._ended = False
        self._decoder: _Child | None = None
        argv = [aplay, "-q", "-D", backend.alsa_device, *RAW_FORMAT, "-"]
        self.player = _Child(argv, "aplay", stdin=subprocess.PIPE)
        self._feeder = threading.Thread(target=self._feed, name="opusdec-feed", daemon=True)
        self._feeder.start()

    def _decoder_for(self, item: Path) -> _Child | None:
        gain = gain_db(self.volume)
        argv = [
            self.opusdec, "--quiet", "--rate", str(OUTPUT_RATE), "--force-stereo",
            *(["--gain", f"{gain:.2f}"] if gain is not None else []),
            *(["--no-dither"] if self.volume == 0 else []),
            str(item), "-",
        ]  # fmt: skip
        with self._lock:
            if self._ended:
                return None
            self._decoder = _Child(argv, "opusdec", stdout=subprocess.PIPE)
            return self._decoder

    def _feed(self) -> None:
        sink = self.player.proc.stdin
        assert sink is not None
        started = time.monotonic()
        sent = 0
        try:
            for item in self.items:
                decoder: _Child | None = None
                if _is_wav(item):
                    blocks = _wav_blocks(item, self.volume)
                else:
                    decoder = self._decoder_for(item)
                    if decoder is None:
                        return
                    out = decoder.proc.stdout
                    assert out is not None
                    blocks = iter(lambda: out.read(BLOCK_BYTES), b"")  # noqa: B023 (used now)
                for block in blocks:
                    if self.backend.paced:
                        ahead = sent / APLAY_BYTES_PER_S - (time.monotonic() - started)
                        if ahead > 0 and self.stop.wait(ahead):
                            return
                    sink.write(block)
                    sink.flush()
                    sent += len(block)
                if decoder is not None:
                    decoder.proc.wait()
                    failure = decoder.failure()
                    if failure is not None:
                        self.error = f"{item}: {failure}"
                        return
            if self.backend.paced:  # the last block takes its time, as on a sound card
                self.stop.wait(max(0.0, sent / APLAY_BYTES_PER_S - (time.monotonic() - started)))
        except (OSError, ValueError) as exc:  # aplay gone (its own failure says why), bad WAV
            if not isinstance(exc, BrokenPipeError):
                self.error = f"{item}: {exc}"
        finally:
            with contextlib.suppress(OSError):
                sink.close()  # aplay plays what it holds, then exits

    def wait(self) -> bool:
        """Wait until aplay exits; if stop is set first, end both programs and return True."""
        while self.player.proc.poll() is None:
            if self.stop.wait(STOP_POLL_S):
                self.end()
                return True
        self.end()
        return False

    def end(self) -> None:
        with self._lock:
            self._ended = True
            decoder = self._decoder
        if decoder is not None:
            decoder.end()
        self.player.end()
        self._feeder.join(1.0)

    def failure(self) -> str | None:
        return self.player.failure() or self.error


class OpusdecBackend:
    """Decodes the Ogg/Opus items with opusdec and plays them with aplay on an ALSA device.

    Two small programs (a few MB each, against ffmpeg's fifty) for the one format the
    controller sends; the test tone's WAV is fed to aplay directly. Volume is opusdec's
    gain. Device "null" is ALSA's null device, fed at real-time pace (the null device
    itself takes any amount at once): the whole path without a sound card.
    """

    name: str = "opusdec"

    def __init__(self, device: str = "alsa:default", opusdec: str = "opusdec",
                 aplay: str = "aplay") -> None:  # fmt: skip
        kind, target = parse_device(device)
        if kind == "pulse":
            raise ValueError(_("output device {device!r}: {help}", device=device,
                               help=_(OPUSDEC_DEVICE_HELP)))
        self.device = device
        self.alsa_device = "null" if kind == "null" else target
        self.paced = kind == "null"
        self.opusdec = opusdec
        self.aplay = aplay

    def _programs(self) -> tuple[str, str] | str:
        opusdec = shutil.which(self.opusdec)
        if opusdec is None:
            return _program_missing(self.opusdec, "opus-tools", "opusdec")
        aplay = shutil.which(self.aplay)
        if aplay is None:
            return _program_missing(self.aplay, "alsa-utils", "aplay")
        return opusdec, aplay

    def play(
        self,
        items: list[Path],
        duration_s: float,
        label: str,
        stop: threading.Event,
        volume: int = 100,
    ) -> PlayOutcome:
        if stop.is_set():
            return PlayOutcome(completed=False, played_s=0.0)
        problem = _items_problem(items)
        programs = self._programs()
        if problem is None and isinstance(programs, str):
            problem = programs
        if problem is not None or isinstance(programs, str):
            return PlayOutcome(completed=False, played_s=0.0, error=problem)
        try:
            run = _OpusPipeline(self, *programs, items, volume, stop)
        except OSError as exc:
            return PlayOutcome(
                completed=False, played_s=0.0,
                error=f"cannot start {exc.filename or 'aplay'} ({exc.strerror}): reinstall it",
            )  # fmt: skip
        stopped = run.wait()
        played = _capped(run.player.elapsed(), duration_s)
        return _ended(stopped, played, run.failure, f"{label} on {self.device}")

    def open_live(self, label: str, pre_skip: int, volume: int = 100) -> LiveSink:
        """opusdec reading the session's Ogg stream on its stdin, into aplay."""
        programs = self._programs()
        if isinstance(programs, str):
            raise OSError(programs)
        opusdec, aplay = programs
        gain = gain_db(volume)
        decoder = _Child([
            opusdec, "--quiet", "--rate", str(OUTPUT_RATE), "--force-stereo",
            *(["--gain", f"{gain:.2f}"] if gain is not None else []), "-", "-",
        ], "opusdec", stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        assert decoder.proc.stdin is not None
        assert decoder.proc.stdout is not None
        player = _Child(
            [aplay, "-q", "-D", self.alsa_device, *RAW_FORMAT, "-"], "aplay",
            stdin=decoder.proc.stdout.fileno(),
        )
        decoder.proc.stdout.close()  # aplay holds it now
        return _OggPipeSink(
            [decoder, player], decoder.proc.stdin, pre_skip, f"{label} on {self.device}"
        )

    def check(self) -> str | None:
        programs = self._programs()
        if isinstance(programs, str):
            return programs
        if self.paced:
            return None
        silence = bytes(APLAY_BYTES_PER_S // 10)
        argv = [programs[1], "-q", "-D", self.alsa_device, *RAW_FORMAT, "-"]
        try:
            opened = subprocess.run(
                argv, input=silence, capture_output=True, timeout=CHECK_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            return (
                f"aplay did not open {self.device} within {CHECK_TIMEOUT_S:g} s: the device "
                "may be held by another program; check with `fuser -v /dev/snd/*`"
            )
        if opened.returncode == 0:
            return None
        lines = opened.stderr.decode(errors="replace").strip().splitlines()
        said = " | ".join(lines[-TAIL_LINES:]) or f"status {opened.returncode}"
        return (
            f"no ALSA device {self.alsa_device!r} (aplay: {said}): check that `aplay -l` lists "
            "the sound card and that the agent's user is in the 'audio' group, or set "
            "output.device to one that exists (e.g. alsa:plughw:1,0)"
        )


BackendKind = Literal["opusdec", "ffmpeg", "file", "null"]


def make_backend(
    kind: BackendKind,
    *,
    device: str = "alsa:default",
    out_dir: Path | None = None,
    ffmpeg: str | None = None,
    opusdec: str = "opusdec",
    aplay: str = "aplay",
) -> OutputBackend:
    """The output backend the agent config names; ffmpeg defaults to `ffmpeg` on PATH."""
    if kind == "opusdec":
        return OpusdecBackend(device=device, opusdec=opusdec, aplay=aplay)
    exe = ffmpeg or shutil.which("ffmpeg") or "ffmpeg"
    if kind == "ffmpeg":
        return FfmpegBackend(device=device, ffmpeg=exe)
    if kind == "file":
        if out_dir is None:
            raise ValueError(
                "the file output needs a folder: set output.out_dir in the agent config"
            )
        return FileBackend(out_dir, ffmpeg=exe)
    if kind == "null":
        return NullBackend()
    raise ValueError(f"unknown output {kind!r}: write opusdec, ffmpeg, file or null")
