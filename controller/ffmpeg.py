"""Finding and running ffmpeg: the controller's one edge to the audio toolchain.

ffmpeg comes from PATH (the distribution's build), else from the imageio-ffmpeg wheel, which
ships a static ffmpeg and no ffprobe. Everything here therefore works with ffmpeg alone:
decoding, measuring and encoding never call ffprobe. pydub's own `AudioSegment.from_file`
would call ffprobe for any input that is not WAV, so the controller does not use it: ffmpeg
decodes every source to raw PCM and pydub gets that (`segment_from_pcm`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import queue
import re
import shutil
import subprocess
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.l10n import Text

log = logging.getLogger(__name__)

#: The PCM the controller works in: signed 16-bit little-endian, mono.
SAMPLE_WIDTH = 2
#: Lines of ffmpeg's stderr kept in error messages.
TAIL_LINES = 6

_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
# "[mp3 @ 0x55d0c1a3f8c0] " in front of a log line: the component is kept, not the address.
_COMPONENT = re.compile(r"\[([\w#:.-]+) @ 0x[0-9a-f]+\] ")
# Lines of ffmpeg's log that say nothing about why it failed.
_NOISE = re.compile(
    r"^(?:size=|video:|\s*(?:Metadata|encoder|Stream #|Duration|handler_name|vendor_id)\b)"
)


class FfmpegError(RuntimeError):
    """ffmpeg is missing, or one run of it failed; the text says which, why and what to do."""

    def __init__(self, message: Text | str, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


@functools.cache
def ffmpeg_exe() -> str:
    """The ffmpeg to run: `ffmpeg` on PATH, else the imageio-ffmpeg binary."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg  # optional fallback, imported only when needed
    except ImportError:
        raise FfmpegError(Text(
            "ffmpeg not found: it is not on PATH and the imageio-ffmpeg package is not "
            "installed. Install one of them: apt-get install ffmpeg, or "
            "pip install 'loa[controller]'"
        )) from None
    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError as exc:
        raise FfmpegError(Text(
            "ffmpeg not found: not on PATH, and imageio-ffmpeg has no binary for this "
            "machine ({why}). Install ffmpeg: apt-get install ffmpeg", why=exc,
        )) from None


@functools.cache
def ffprobe_exe() -> str | None:
    """ffprobe on PATH, or None (the imageio-ffmpeg wheel has none; nothing here needs it)."""
    return shutil.which("ffprobe")


def stderr_tail(stderr: bytes | str, lines: int = TAIL_LINES) -> str:
    """The last lines of ffmpeg's log that can explain a failure, joined by ' | '."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    kept = [
        _COMPONENT.sub(r"\1: ", line.strip())
        for line in text.replace("\r", "\n").splitlines()
        if line.strip() and not _NOISE.match(line)
    ]
    return " | ".join(kept[-lines:]) or "(ffmpeg printed nothing)"


def run_ffmpeg(
    args: list[str],
    *,
    input_data: bytes | None = None,
    timeout: float | None = None,
    what: str = "ffmpeg",
    loglevel: str = "error",
) -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg with args (everything after the program name); return the finished process.

    Raises FfmpegError naming `what` (say, the file being decoded) with the tail of
    ffmpeg's stderr when ffmpeg is missing, times out or exits non-zero.
    """
    argv = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", loglevel, *args]
    log.debug("running %s", argv)
    try:
        proc = subprocess.run(
            argv,
            input=input_data,
            stdin=None if input_data is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        tail = stderr_tail(exc.stderr or b"")
        raise FfmpegError(Text(
            "{what}: ffmpeg did not finish within {timeout:g} s ({tail}); "
            "check that the file is a local, complete audio file",
            what=what, timeout=timeout, tail=tail,
        ), tail) from None
    except OSError as exc:
        raise FfmpegError(Text(
            "{what}: cannot start ffmpeg at {exe} ({why}); "
            "reinstall ffmpeg (apt-get install ffmpeg)", what=what, exe=argv[0], why=exc.strerror,
        )) from None
    if proc.returncode != 0:
        tail = stderr_tail(proc.stderr)
        raise FfmpegError(Text("{what}: ffmpeg exited with status {status}: {tail}",
                               what=what, status=proc.returncode, tail=tail), tail)
    return proc


def _declared_duration(stderr: str) -> float | None:
    """The duration the input's container declares, when ffmpeg trusts it."""
    if "Estimating duration from bitrate" in stderr:
        return None  # a guess from the first frames: a VBR file would look truncated
    match = _DURATION.search(stderr)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass(frozen=True)
class DecodedPcm:
    """One file decoded to mono s16le PCM at sample_rate."""

    pcm: bytes
    sample_rate: int
    declared_s: float | None  # what the file says it lasts; None if unknown
    loudness: Loudness | None = None  # of the decoded PCM, when asked for

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / (SAMPLE_WIDTH * self.sample_rate)


def decode_pcm(
    path: Path, *, sample_rate: int, limit_s: float | None = None, measure: bool = False
) -> DecodedPcm:
    """Decode the first audio stream of path to mono s16le PCM (at most limit_s seconds),
    measuring its loudness on the way when asked to (the same run of ffmpeg).

    Raises FfmpegError with ffmpeg's reason when it cannot read the file.
    """
    args = ["-i", str(path)]
    if measure:
        args += [
            "-filter_complex",
            f"[0:a:0]aformat=sample_fmts=s16:sample_rates={sample_rate}:channel_layouts=mono,"
            f"asplit[pcm][level];[level]{EBUR128},anullsink",
            "-map", "[pcm]",
        ]  # fmt: skip
    else:
        args += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-ac", "1", "-ar", str(sample_rate)]
    if limit_s is not None:
        args += ["-t", f"{limit_s:.3f}"]
    args += ["-c:a", "pcm_s16le", "-f", "s16le", "-"]
    proc = run_ffmpeg(args, what=str(path), loglevel="info")
    decoded = DecodedPcm(
        pcm=proc.stdout,
        sample_rate=sample_rate,
        declared_s=_declared_duration(proc.stderr.decode(errors="replace")),
        loudness=_summary(proc.stderr, str(path)) if measure else None,
    )
    if measure and decoded.pcm and repeats_to_measure(decoded.duration_s) > 1:
        # Too short for the meter as it came: measured again, repeated.
        level = measure_pcm(decoded.pcm, sample_rate, what=str(path))
        decoded = dataclasses.replace(decoded, loudness=level)
    return decoded


def pydub_audio_segment() -> Any:
    """pydub's AudioSegment class, imported on first use, set to run ffmpeg_exe().

    The import is quiet: pydub warns when ffmpeg is not on PATH (it is configured here
    instead) and Python 3.11-3.12 warn that pydub's audioop is deprecated.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        from pydub import AudioSegment  # imported on first use: controller-only dependency

    # Without ffmpeg, pydub can still build and write WAV (samples.py).
    with contextlib.suppress(FfmpegError):
        AudioSegment.converter = ffmpeg_exe()
    return AudioSegment


def segment_from_pcm(pcm: bytes, sample_rate: int) -> Any:
    """A pydub AudioSegment over mono s16le PCM."""
    return pydub_audio_segment()(
        data=pcm, sample_width=SAMPLE_WIDTH, frame_rate=sample_rate, channels=1
    )


# --- loudness (EBU R128) -------------------------------------------------------------------

_EBUR128_I = re.compile(r"I:\s+(-?[\d.]+|-inf)\s+LUFS")
_EBUR128_LRA = re.compile(r"LRA:\s+(-?[\d.]+|-inf)\s+LU\b")
_EBUR128_PEAK = re.compile(r"Peak:\s+(-?[\d.]+|-inf)\s+dBFS")
#: The meter: true peak on, the per-100 ms lines it prints at the info level off.
EBUR128 = "ebur128=peak=true:framelog=verbose"
#: What ebur128 reports for audio with nothing above its absolute gate (-70 LUFS).
SILENT_LUFS = -70.0
#: Audio shorter than this is measured repeated to this length: BS.1770 integrates
#: 400 ms blocks, and ebur128 reports -70 LUFS (nothing) for a sound shorter than one.
#: Its loudness range (which compares 3 s windows) is then 0.
MIN_MEASURE_S = 3.0


def repeats_to_measure(seconds: float) -> int:
    """How many times audio of this length is played to be measured (1: as it is)."""
    if seconds <= 0 or seconds >= MIN_MEASURE_S:
        return 1
    return math.ceil(MIN_MEASURE_S / seconds)


@dataclass(frozen=True)
class Loudness:
    """What ffmpeg's ebur128 filter measures (EBU R128 / ITU-R BS.1770).

    integrated_lufs: programme loudness (-70.0: nothing above the absolute gate);
    true_peak_dbtp: the highest peak between samples, at 4x oversampling;
    range_lu: loudness range (LRA), the spread of the 3 s loudness, 10th to 95th percentile.
    """

    integrated_lufs: float
    true_peak_dbtp: float
    range_lu: float = 0.0


def _summary(stderr: bytes, what: str, *, repeated: bool = False) -> Loudness:
    text = stderr.decode(errors="replace")
    summary = text[text.rfind("Summary:"):] if "Summary:" in text else ""
    found = [
        pattern.findall(summary) for pattern in (_EBUR128_I, _EBUR128_PEAK, _EBUR128_LRA)
    ]
    if not all(found):
        raise FfmpegError(Text("measuring loudness of {what}: ffmpeg printed no summary",
                               what=what))
    integrated, peak, lra = (float(values[-1]) for values in found)
    return Loudness(integrated, peak, 0.0 if repeated else lra)


def _pcm_input(sample_rate: int) -> list[str]:
    return ["-f", "s16le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0"]


def measure_pcm(
    pcm: bytes, sample_rate: int, *, what: str, graph: str | None = None
) -> Loudness:
    """Loudness of mono s16le PCM (repeated if short: MIN_MEASURE_S), after the filter
    graph when one is given."""
    chain = f"{graph}," if graph else ""
    repeats = repeats_to_measure(len(pcm) / (SAMPLE_WIDTH * sample_rate))
    proc = run_ffmpeg(
        [*_pcm_input(sample_rate), "-af", f"{chain}{EBUR128}", "-f", "null", "-"],
        input_data=pcm * repeats, what=f"measuring loudness of {what}", loglevel="info",
    )
    return _summary(proc.stderr, what, repeated=repeats > 1)


def libopus_decoder() -> list[str]:
    """ffmpeg's input options to decode Opus with libopus, the decoder of opusdec and so
    of the agents (ffmpeg's own Opus decoder gives peaks up to 0.2 dB lower); none where
    this ffmpeg lacks it."""
    return ["-c:a", "libopus"] if _has_libopus(ffmpeg_exe()) else []


@functools.cache
def _has_libopus(exe: str) -> bool:
    proc = run_ffmpeg(["-decoders"], what=f"listing the decoders of {exe}", loglevel="error")
    listed = proc.stdout.decode(errors="replace")
    return re.search(r"^\s*A\S*\s+libopus\s", listed, re.M) is not None


def loudness(path: Path, *, seconds: float | None = None, opus: bool = False) -> Loudness:
    """Loudness, loudness range and true peak of a file, decoded as ffmpeg decodes it.

    seconds: how long it lasts, when known; a file shorter than MIN_MEASURE_S is then
    measured played over and over to that length. opus: an Ogg/Opus file, decoded as
    the agents decode it (libopus_decoder).
    """
    repeats = repeats_to_measure(seconds) if seconds is not None else 1
    loop = ["-stream_loop", str(repeats - 1)] if repeats > 1 else []
    decoder = libopus_decoder() if opus else []
    proc = run_ffmpeg(
        [*loop, *decoder, "-i", str(path), "-af", EBUR128, "-f", "null", "-"],
        what=f"measuring loudness of {path}", loglevel="info",
    )
    return _summary(proc.stderr, str(path), repeated=repeats > 1)


# --- live encoding ----------------------------------------------------------------------------

#: Seconds ffmpeg waits on a network read before it gives up on a stream (its own timeout,
#: beside the caller's stall detection).
LIVE_RW_TIMEOUT_S = 5


#: The source of a LiveEncoding fed by its owner (`feed`): a browser's recording as it comes.
FED = "pipe:"


def live_input_args(source: str) -> list[str]:
    """ffmpeg's input options for a live source: an http(s) stream (Icecast, HLS) read as
    it comes, `-` (this process's stdin), FED (what `feed` gives it), or a local file or
    device read at real-time pace."""
    if source == "-":
        return ["-i", "pipe:0"]
    if source == FED:
        return [
            "-fflags", "+nobuffer", "-formatprobesize", "2048", "-probesize", "8192",
            "-analyzeduration", "0", "-i", "pipe:0",
        ]  # fmt: skip
    if re.match(r"^[a-z][a-z0-9+.-]*://", source):
        return [
            "-rw_timeout", str(LIVE_RW_TIMEOUT_S * 1_000_000), "-fflags", "+nobuffer",
            # Probing a paced stream waits for its bytes: 64 KB by default, seconds of
            # audio. A few KB tell MP3, AAC, Ogg and HLS apart.
            "-formatprobesize", "2048", "-probesize", "8192", "-analyzeduration", "500000",
            "-i", source,
        ]  # fmt: skip
    return ["-re", "-i", source]


class LiveEncoding:
    """One ffmpeg that reads a live source, runs the chain and writes Ogg/Opus in pages of
    one packet (20 ms) to its stdout, read on a thread of its own: `read(timeout)` hands
    over what came, so that a source that stalls is seen as a read that times out."""

    def __init__(self, source: str, graph: str, *, bitrate_kbps: int, application: str,
                 what: str) -> None:  # fmt: skip
        self.what = what
        argv = [
            ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error",
            *live_input_args(source), "-vn", "-ac", "1", "-ar", "48000", "-af", graph,
            "-c:a", "libopus", "-b:a", f"{bitrate_kbps}k", "-vbr", "constrained",
            "-frame_duration", "20", "-application", application,
            "-f", "ogg", "-page_duration", "20000", "-flush_packets", "1", "pipe:1",
        ]  # fmt: skip
        log.debug("running %s", argv)
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if source == FED else (
                    None if source == "-" else subprocess.DEVNULL
                ),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            raise FfmpegError(Text("{what}: cannot start ffmpeg ({why})",
                                   what=what, why=exc.strerror)) from None
        self._out: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._err: list[bytes] = []
        threading.Thread(target=self._pump, name="live-encoder", daemon=True).start()
        threading.Thread(target=self._drain, name="live-encoder-log", daemon=True).start()

    def _pump(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        while data := os.read(stdout.fileno(), 65536):
            self._out.put(data)
        self._out.put(b"")  # the end

    def _drain(self) -> None:
        stderr = self._proc.stderr
        assert stderr is not None
        for line in stderr:
            self._err.append(line)
            del self._err[:-TAIL_LINES * 2]

    def feed(self, data: bytes) -> None:
        """Give a FED encoding more of its input (OSError once ffmpeg has gone)."""
        stdin = self._proc.stdin
        if stdin is None:
            raise OSError("this encoding reads its own input")
        stdin.write(data)
        stdin.flush()

    def end_input(self) -> None:
        """No more input: ffmpeg encodes what it has, then ends."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()

    def read(self, timeout: float) -> bytes | None:
        """What ffmpeg wrote since; b"" once it has ended; None if nothing came in timeout."""
        try:
            return self._out.get(timeout=timeout)
        except queue.Empty:
            return None

    def failure(self) -> str | None:
        """Once ended: None if ffmpeg exited with 0, else why (the tail of its log)."""
        try:
            code = self._proc.wait(5)
        except subprocess.TimeoutExpired:
            return "ffmpeg has not exited"
        if code == 0:
            return None
        return f"ffmpeg exited with status {code}: {stderr_tail(b''.join(self._err))}"

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(1)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
