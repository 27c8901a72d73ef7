"""Audio preparation: any recording in, one mono Ogg/Opus file out, stored by its SHA-256.

A bulletin is an optional intro, one or more source recordings and an optional outro.
Each file is decoded by ffmpeg (mp3, wav, ogg/opus, m4a, flac: anything ffmpeg reads, at
any rate and channel count) to mono PCM, checked (readable, complete, not empty, not too
long, loud enough to be brought up, and audible: one stretch with MIN_SOUND_MS of sound,
not just clicks in hiss) and trimmed of leading and trailing silence with pydub. What is
silence is decided per file from its loudness (`silence_threshold`): a quietly recorded
announcement is kept whole and brought up, not trimmed away.

The parts are joined with a short gap and go through the processing chain of the audio
profile of the clusters they are for (controller.audio_chain: high-pass, presence and
compression for horns; loudness and a true-peak limiter for every profile), then are
encoded ONCE to Ogg/Opus for speech. The gains are chosen by measuring (`_master`): the
source, the shaped audio, then the encoded result DECODED again, as an agent decodes
it, until its loudness is within LOUDNESS_TOLERANCE_LU of the target and its true peak
at or under the ceiling. The result is named `<root>/<sha256>.opus`, which is how the
agents ask for it (protocol/chunks.py), and what it measured is kept in the index.

Preparing the same files with the same settings and profile again is free:
`<root>/index.json` maps the SHA-256 of the sources' bytes, the settings and the profile
to the content already encoded. Processing and encoding are bit-exact, so the same input
on the same ffmpeg gives the same SHA-256.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller import audio_chain, ffmpeg
from controller.audio_chain import DEFAULT_PROFILE, OpusApplication, Profile
from controller.ffmpeg import Loudness
from protocol.chunks import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, chunk_count
from protocol.l10n import Text
from protocol.messages import ContentRef

if TYPE_CHECKING:
    from controller.config import AudioConfig

log = logging.getLogger(__name__)

#: Bump when the processing changes what comes out for the same input, to miss the cache.
PIPELINE_VERSION = 3  # 2: loudness normalisation; 3: profiles, true-peak limiter
#: Below this level (dBFS) audio counts as silence, for trimming and for refusing a file,
#: in a recording of ordinary level. A quieter recording gets a lower threshold of its own
#: (silence_threshold).
SILENCE_DBFS = -50.0
#: A source quieter than this (integrated loudness) is refused: bringing it up to the
#: target would bring up its hiss as much (49 dB to -16 LUFS). Speech recorded with its
#: peaks at -40 dBFS measures about -59 LUFS, at -48 dBFS about -67; ebur128 gives -70
#: for silence.
MIN_SOURCE_LUFS = -65.0
#: In a quiet recording, silence is what lies this far under its loudness...
QUIET_BELOW_LU = 20.0
#: ...but never less than this above its noise floor (the level its quietest
#: NOISE_FLOOR_SHARE of TRIM_STEP_MS windows stay under), so steady hiss is not sound.
ABOVE_NOISE_FLOOR_DB = 10.0
NOISE_FLOOR_SHARE = 0.1
#: Trimming looks at the audio in steps of this many milliseconds...
TRIM_STEP_MS = 10
#: ...and keeps this much of the silence it cuts, so that soft onsets are not clipped.
TRIM_KEEP_MS = 50
#: A file is refused as silent unless one stretch of it holds at least this much sound
#: louder than SILENCE_DBFS (measured TRIM_STEP_MS at a time, as trimming does). A click,
#: a pop or a connector's thump lasts from a few to some tens of milliseconds; the shortest
#: sounds meant to be heard, a beep or a one-word call, last longer (0.3 s tones serve as
#: short bulletins and intros). Without this, a near-silent recording with a click passed
#: on its peak, and trimming left a bulletin of little more than the click.
MIN_SOUND_MS = 250
#: Quieter dips shorter than this do not end a stretch of sound: the closure of a consonant
#: or the pause between words of quiet speech, the gaps of a beeping signal. Clicks further
#: apart than this count as separate stretches, of a few milliseconds each.
SOUND_GAP_MS = 500
#: Silence between intro, sources and outro.
GAP_MS = 500
#: A file that decodes this much shorter than it declares is cut short (truncated).
TRUNCATED_MIN_S = 0.5
TRUNCATED_FRACTION = 0.05
#: A prepared bulletin's loudness is within this of the target (the acceptance is 1 LU)...
LOUDNESS_TOLERANCE_LU = 0.5
#: ...found by adjusting the gain before the limiter until the processed audio is within
#: this of it (at most LEVEL_STEPS runs per encode), then encoding and measuring the
#: decoded result (at most ENCODES times).
LEVEL_STEP_LU = 0.2
LEVEL_STEPS = 4
ENCODES = 4
#: When the decoded result still peaks over the ceiling, the limiter is lowered by the
#: excess and this much more.
PEAK_MARGIN_DB = 0.2
#: The limiter takes at most this much off the highest peak. Audio whose peaks stand
#: further above its loudness (a bell, clicks, a beeping signal) is left under the
#: target rather than crushed into a buzz: the true peak is a ceiling, the loudness a
#: target. Speech takes up to about 19 dB: espeak-ng's voices are peaky (a sharp pulse
#: in every pitch period), the Central one most, and limiting a peak every few
#: milliseconds lowers the whole syllable, so each dB of gain brings a third of a dB.
MAX_LIMITING_DB = 20.0
#: Sample rates the Opus encoder takes.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
INDEX_NAME = "index.json"
SUFFIX = ".opus"


class AudioError(ValueError):
    """An audio file the controller cannot use: the text names it, says why and what to do."""

    def __init__(
        self, path: Path | None, reason: Text | str, advice: Text | str,
        detail: str | None = None,
    ) -> None:
        """reason, advice: for whoever reads it (the web app shows them in the page's
        language, never the path); detail: what a tool said, for the operator only."""
        where = str(path) if path is not None else "bulletin"
        said = f" ({detail})" if detail else ""
        super().__init__(f"{where}: {reason}{said}. {advice}")
        self.path = path
        self.reason = reason
        self.advice = advice
        self.detail = detail


@dataclass(frozen=True)
class AudioSettings:
    """How bulletins are encoded and what the controller accepts."""

    bitrate_kbps: int = 24
    sample_rate: int = 48000  # Opus works at 48 kHz internally
    max_duration_s: float = 3600
    chunk_size: int = DEFAULT_CHUNK_SIZE
    trim_silence: bool = True
    # Loudness (EBU R128) the bulletin is normalised to, and its true-peak ceiling; None
    # leaves the level as it came. -16 LUFS is the common target for speech outdoors.
    target_lufs: float | None = -16.0
    true_peak_dbtp: float = -1.0

    def __post_init__(self) -> None:
        problems = []
        if not 6 <= self.bitrate_kbps <= 510:
            problems.append(
                f"bitrate_kbps={self.bitrate_kbps}: Opus takes 6 to 510 (24 for speech)"
            )
        if self.sample_rate not in OPUS_RATES:
            rates = ", ".join(map(str, OPUS_RATES))
            problems.append(f"sample_rate={self.sample_rate}: Opus takes one of {rates}")
        if not (self.max_duration_s > 0 and math.isfinite(self.max_duration_s)):
            problems.append(f"max_duration_s={self.max_duration_s}: write a number of seconds > 0")
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            problems.append(f"chunk_size={self.chunk_size}: write 1 to {MAX_CHUNK_SIZE} bytes")
        if self.target_lufs is not None and not -40 <= self.target_lufs <= -5:
            problems.append(f"target_lufs={self.target_lufs}: write -40 to -5 (-16 for speech)")
        if not -9 <= self.true_peak_dbtp <= 0:
            problems.append(f"true_peak_dbtp={self.true_peak_dbtp}: write -9 to 0 (-1 is usual)")
        if problems:
            raise ValueError(Text("invalid audio settings: {problems}",
                                  problems="; ".join(problems)))

    @classmethod
    def from_config(cls, config: AudioConfig) -> AudioSettings:
        """The settings of the controller config's `audio:` section."""
        return cls(
            bitrate_kbps=config.bitrate_kbps,
            sample_rate=config.sample_rate_hz,
            chunk_size=config.chunk_size_kb * 1024,
            target_lufs=config.loudness_lufs,
            true_peak_dbtp=config.true_peak_dbtp,
        )

    def cache_fields(self) -> dict[str, Any]:
        """The settings that change what is encoded or accepted (chunking changes neither)."""
        fields = dataclasses.asdict(self)
        del fields["chunk_size"]
        return fields


@dataclass(frozen=True)
class PreparedAudio:
    """One encoded bulletin in the audio library."""

    sha256: str
    path: Path
    size: int
    duration_s: float
    chunk_size: int = DEFAULT_CHUNK_SIZE
    profile: str = DEFAULT_PROFILE
    #: Measured on the encoded file decoded again (None: prepared before it was measured).
    measured: Loudness | None = None

    def content_ref(self) -> ContentRef:
        """The manifest the agents get in a play command."""
        return ContentRef(
            sha256=self.sha256,
            size=self.size,
            duration_s=self.duration_s,
            chunk_size=self.chunk_size,
            chunks=chunk_count(self.size, self.chunk_size),
        )


def _check_file(path: Path) -> None:
    """Refuse what is not a readable, non-empty file, before ffmpeg sees it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AudioError(
            path, Text("file not found"),
            Text("Check the file name and folder in the playlist"),
        ) from None
    except OSError as exc:
        raise AudioError(
            path, Text("cannot be read ({why})", why=exc.strerror),
            Text("Check the path and its permissions"),
        ) from None
    if not path.is_file():
        raise AudioError(path, Text("is not a file"), Text("Give the path of an audio file"))
    if size == 0:
        raise AudioError(
            path, Text("the file is empty (0 bytes)"), Text("Copy or export the recording again")
        )
    if not os.access(path, os.R_OK):
        raise AudioError(
            path,
            Text("cannot be read (permission denied)"),
            Text("Give the controller's user read access to it"),
        )


def _undecodable(path: Path, exc: ffmpeg.FfmpegError) -> AudioError:
    if "matches no streams" in exc.stderr_tail:
        return AudioError(
            path, Text("the file holds no audio stream"),
            Text("Choose the sound recording itself"),
        )
    return AudioError(
        path,
        Text("ffmpeg cannot decode it as audio"),
        Text("Check that it is a complete sound recording; if so, export it again as MP3, "
             "WAV, OGG, M4A or FLAC"),
        detail=f"ffmpeg said: {exc.stderr_tail or exc}",
    )


def _check_audio(path: Path, duration_s: float, declared_s: float | None, max_s: float) -> None:
    """The refusals shared by prepare and probe, on what decoding a file found."""
    if duration_s > max_s:
        raise AudioError(
            path,
            Text("it lasts more than {max_s:g} s, the longest bulletin allowed "
                 "(max_duration_s)", max_s=max_s),
            Text("Cut it into shorter bulletins, or raise max_duration_s in the controller "
                 "config"),
        )
    if duration_s <= 0:
        raise AudioError(
            path,
            Text("no audio could be decoded from it (0 s)"),
            Text("Check that it is a complete sound recording, and export it again"),
        )
    if declared_s is not None and declared_s - duration_s > max(
        TRUNCATED_MIN_S, TRUNCATED_FRACTION * declared_s
    ):
        raise AudioError(
            path,
            Text("the file is cut short: it declares {declared_s:.1f} s but only "
                 "{duration_s:.1f} s could be decoded (an incomplete copy or download?)",
                 declared_s=declared_s, duration_s=duration_s),
            Text("Copy the file again from the original"),
        )


def _check_loud_enough(path: Path, level: Loudness, peak_dbfs: float) -> None:
    """Refuse a source too quiet to be brought up: silent, or under MIN_SOURCE_LUFS."""
    if level.integrated_lufs > ffmpeg.SILENT_LUFS and level.integrated_lufs >= MIN_SOURCE_LUFS:
        return
    if peak_dbfs == -math.inf:
        raise AudioError(
            path, Text("the audio is silent (no sound at all)"),
            Text("Check the recording level, or that this is the right file"),
        )
    if level.integrated_lufs <= ffmpeg.SILENT_LUFS:
        raise AudioError(
            path,
            Text("the audio is silent (peak {peak:.1f} dBFS; loudness under {lufs:g} LUFS)",
                 peak=peak_dbfs, lufs=ffmpeg.SILENT_LUFS),
            Text("Check the recording level, or that this is the right file"),
        )
    raise AudioError(
        path,
        Text("the audio is too quiet to use (loudness {lufs:.1f} LUFS, peak {peak:.1f} dBFS; "
             "under {least:g} LUFS its hiss would be brought up with it)",
             lufs=level.integrated_lufs, peak=peak_dbfs, least=MIN_SOURCE_LUFS),
        Text("Record it again nearer the microphone or with more input gain, or raise its "
             "level in an audio editor"),
    )


def silence_threshold(level: Loudness, segment: Any) -> float:
    """The level (dBFS, per TRIM_STEP_MS window) under which this recording is silence.

    SILENCE_DBFS for a recording of ordinary level. A quiet one gets a lower threshold,
    QUIET_BELOW_LU under its own loudness, but kept ABOVE_NOISE_FLOOR_DB over its noise
    floor: quiet speech is sound, a steady hiss at the same level is not.
    """
    relative = level.integrated_lufs - QUIET_BELOW_LU
    if relative >= SILENCE_DBFS:
        return SILENCE_DBFS
    levels = sorted(float(window.dBFS) for _, window in _windows(segment))
    floor = levels[int(len(levels) * NOISE_FLOOR_SHARE)] if levels else -math.inf
    return min(SILENCE_DBFS, max(relative, floor + ABOVE_NOISE_FLOOR_DB))


def _windows(segment: Any) -> Iterator[tuple[int, Any]]:
    """segment in consecutive TRIM_STEP_MS pieces (the last may be shorter), with their start."""
    for start in range(0, len(segment), TRIM_STEP_MS):
        yield start, segment[start : start + TRIM_STEP_MS]


def _sound_ms(segment: Any, threshold: float, enough_ms: int = MIN_SOUND_MS) -> int:
    """The most sound in one stretch of segment: how many milliseconds are louder than
    threshold, TRIM_STEP_MS at a time, where a quieter dip of SOUND_GAP_MS or more ends
    a stretch. Counting stops at enough_ms, so a real recording is decided at its start.
    """
    most = current = 0
    last: int | None = None  # where the last window louder than the threshold ended
    for start, window in _windows(segment):
        if window.dBFS < threshold:
            continue
        if last is not None and start - last >= SOUND_GAP_MS:
            current = 0
        current += len(window)
        last = start + len(window)
        most = max(most, current)
        if most >= enough_ms:
            break
    return most


def _check_audible(path: Path, segment: Any, threshold: float) -> None:
    """Refuse a file whose sound is only clicks or hiss: no stretch with MIN_SOUND_MS of it.

    Trimming cuts only what is quieter than threshold, so it leaves at least that much
    of a file accepted here.
    """
    if _sound_ms(segment, threshold) >= MIN_SOUND_MS:
        return
    peak_at, peak = 0, -1
    for start, window in _windows(segment):
        if window.max > peak:
            peak_at, peak = start, window.max
    raise AudioError(
        path,
        Text("no audible sound (nothing louder than {threshold:.0f} dBFS for {least:g} s; "
             "peak {peak:.1f} dBFS at {at:.2f} s)", threshold=threshold,
             least=MIN_SOUND_MS / 1000, peak=segment.max_dBFS, at=peak_at / 1000),
        Text("Check the recording level, or pick another file"),
    )


def _trimmed(segment: Any, threshold: float) -> Any:
    """segment without its leading and trailing silence (keeping TRIM_KEEP_MS of each)."""
    length = len(segment)  # milliseconds
    start = 0
    while start < length and segment[start : start + TRIM_STEP_MS].dBFS < threshold:
        start += TRIM_STEP_MS
    end = length
    while end > start and segment[max(start, end - TRIM_STEP_MS) : end].dBFS < threshold:
        end -= TRIM_STEP_MS
    return segment[max(0, start - TRIM_KEEP_MS) : min(length, end + TRIM_KEEP_MS)]


def encode_opus(
    pcm: bytes,
    sample_rate: int,
    bitrate_kbps: int,
    out: Path,
    *,
    graph: str | None = None,
    application: OpusApplication = "voip",
) -> None:
    """Encode mono s16le PCM, through the filter graph if given, to an Ogg/Opus file,
    bit-exact (same in, same out). application: "voip" for speech, "audio" for music.
    The bit rate is held (constrained VBR): music in "audio" mode would otherwise take
    up to twice it, and every byte crosses paid 4G links."""
    ffmpeg.run_ffmpeg(
        [
            "-f", "s16le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0",
            *(["-af", graph] if graph else []),
            "-ar", str(sample_rate), "-ac", "1",
            "-c:a", "libopus", "-b:a", f"{bitrate_kbps}k", "-vbr", "constrained",
            "-application", application,
            "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
            "-f", "ogg", "-y", str(out),
        ],
        input_data=pcm,
        what=f"encoding {out.name}",
    )  # fmt: skip


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextlib.contextmanager
def _temp_in(folder: Path, suffix: str) -> Iterator[Path]:
    """A temporary file in folder (so that a rename into place is atomic), removed after."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=".", suffix=suffix)
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
    finally:
        temp.unlink(missing_ok=True)


class AudioLibrary:
    """Prepared audio (bulletins, announcements) on disk, named by its SHA-256, with an
    index of what made each, so the same sources are never encoded twice."""

    def __init__(self, root: Path, settings: AudioSettings | None = None) -> None:
        self.root = root
        self.settings = settings or AudioSettings()
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    # --- the index ------------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    def _load_index(self) -> dict[str, dict[str, Any]]:
        empty: dict[str, dict[str, Any]] = {"prepared": {}, "content": {}}
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return empty
        except (OSError, ValueError) as exc:
            log.warning(
                "%s: unreadable (%s); starting an empty cache index, audio is re-encoded as needed",
                self.index_path,
                exc,
            )
            return empty
        if not (
            isinstance(data, dict)
            and isinstance(data.get("prepared"), dict)
            and isinstance(data.get("content"), dict)
        ):
            log.warning("%s: not a Loa content index; starting an empty one", self.index_path)
            return empty
        return {"prepared": data["prepared"], "content": data["content"]}

    def _save_index(self, index: dict[str, dict[str, Any]]) -> None:
        with _temp_in(self.root, ".json.tmp") as temp:
            temp.write_text(json.dumps({"version": 1, **index}, indent=1), encoding="utf-8")
            temp.replace(self.index_path)

    def _cache_key(self, parts: list[tuple[str, Path]], chosen: Profile) -> str:
        key = {
            "pipeline": PIPELINE_VERSION,
            "settings": self.settings.cache_fields(),
            "profile": dataclasses.asdict(chosen),
            "parts": [[role, _file_sha256(path)] for role, path in parts],
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    # --- lookups ----------------------------------------------------------------------------

    def path_of(self, sha256: str) -> Path:
        return self.root / f"{sha256}{SUFFIX}"

    def get(self, sha256: str) -> PreparedAudio | None:
        """The prepared audio with this SHA-256, or None if the store does not hold it."""
        with self._lock:
            entry = self._load_index()["content"].get(sha256)
        path = self.path_of(sha256)
        if not isinstance(entry, dict):
            return None
        try:
            size = path.stat().st_size
        except OSError:
            return None
        if size != entry.get("size"):
            return None
        measured = entry.get("measured")
        return PreparedAudio(
            sha256=sha256,
            path=path,
            size=size,
            duration_s=float(entry["duration_s"]),
            chunk_size=self.settings.chunk_size,
            profile=str(entry.get("profile", DEFAULT_PROFILE)),
            measured=Loudness(**measured) if isinstance(measured, dict) else None,
        )

    def read(self, sha256: str) -> bytes:
        """The encoded bytes of a prepared bulletin, verified against their SHA-256."""
        path = self.path_of(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyError(Text(
                "{path}: no prepared audio with SHA-256 {sha256} in the audio library; "
                "prepare the bulletin again", path=path, sha256=sha256,
            )) from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise AudioError(
                path,
                Text("the stored audio no longer matches its SHA-256 (damaged on disk)"),
                Text("Delete the file and prepare the bulletin again"),
            )
        return data

    # --- checking and preparing -----------------------------------------------------------------

    def probe(self, path: Path) -> float:
        """The duration of an audio file, or AudioError saying why it cannot be used.

        The file is decoded and checked as prepare does it, so that what `loa-controller
        check` accepts is what prepare accepts.
        """
        _check_file(path)
        segment, _, _ = self._decoded(path)
        return float(segment.duration_seconds)

    def _decoded(self, path: Path) -> tuple[Any, Loudness, float]:
        """One file decoded and checked, untrimmed, as a pydub AudioSegment, with its
        loudness and the level under which it is silence."""
        settings = self.settings
        try:
            decoded = ffmpeg.decode_pcm(
                path, sample_rate=settings.sample_rate, limit_s=settings.max_duration_s + 1,
                measure=True,
            )
        except ffmpeg.FfmpegError as exc:
            raise _undecodable(path, exc) from None
        _check_audio(path, decoded.duration_s, decoded.declared_s, settings.max_duration_s)
        assert decoded.loudness is not None  # asked for with measure=True
        segment = ffmpeg.segment_from_pcm(decoded.pcm, settings.sample_rate)
        peak = float(segment.max_dBFS) if decoded.pcm else -math.inf
        _check_loud_enough(path, decoded.loudness, peak)
        threshold = silence_threshold(decoded.loudness, segment)
        _check_audible(path, segment, threshold)
        return segment, decoded.loudness, threshold

    def _load(self, path: Path) -> tuple[Any, Loudness]:
        """One part, decoded, checked and trimmed, as a pydub AudioSegment, with its
        loudness."""
        segment, level, threshold = self._decoded(path)
        if self.settings.trim_silence:
            segment = _trimmed(segment, threshold)
        return segment, level

    def prepare(
        self,
        sources: list[Path],
        intro: Path | None = None,
        outro: Path | None = None,
        profile: str = DEFAULT_PROFILE,
    ) -> PreparedAudio:
        """Prepare intro + sources + outro as one Opus bulletin for clusters of this audio
        profile (controller.audio_chain); reuse it if already made."""
        chosen = audio_chain.profile(profile)
        if not sources:
            raise AudioError(
                None, Text("no source audio given"), Text("List at least one audio file")
            )
        parts = [("source", path) for path in sources]
        if intro is not None:
            parts.insert(0, ("intro", intro))
        if outro is not None:
            parts.append(("outro", outro))
        for _, path in parts:
            _check_file(path)

        key = self._cache_key(parts, chosen)
        with self._lock:
            index = self._load_index()
        cached_sha = index["prepared"].get(key)
        if isinstance(cached_sha, str):
            cached = self.get(cached_sha)
            if cached is not None:
                log.debug("cache hit for %s: %s", [str(p) for _, p in parts], cached_sha)
                return cached

        settings = self.settings
        gap = b"\0" * (ffmpeg.SAMPLE_WIDTH * settings.sample_rate * GAP_MS // 1000)
        pieces: list[bytes] = []
        levels: list[tuple[float, float]] = []  # (seconds, LUFS) of each part
        for _, path in parts:
            if pieces:
                pieces.append(gap)
            segment, level = self._load(path)
            pieces.append(bytes(segment.raw_data))
            levels.append((float(segment.duration_seconds), level.integrated_lufs))
        pcm = b"".join(pieces)
        del pieces
        duration_s = len(pcm) / (ffmpeg.SAMPLE_WIDTH * settings.sample_rate)
        names = ", ".join(str(path) for _, path in parts)
        if duration_s > settings.max_duration_s:
            raise AudioError(
                None,
                Text("the bulletin made of {names} lasts {duration_s:.0f} s, more than the "
                     "{most:g} s allowed (max_duration_s)", names=names,
                     duration_s=duration_s, most=settings.max_duration_s),
                Text("Split it into shorter bulletins, or raise max_duration_s in the "
                     "controller config"),
            )

        with _temp_in(self.root, ".opus.tmp") as temp:
            measured = self._master(pcm, _joined_loudness(levels), chosen, temp, names)
            sha256 = _file_sha256(temp)
            size = temp.stat().st_size
            temp.replace(self.path_of(sha256))

        prepared = PreparedAudio(
            sha256=sha256,
            path=self.path_of(sha256),
            size=size,
            duration_s=round(duration_s, 3),
            chunk_size=settings.chunk_size,
            profile=chosen.name,
            measured=measured,
        )
        with self._lock:
            index = self._load_index()
            index["prepared"][key] = sha256
            index["content"][sha256] = {
                "size": size, "duration_s": prepared.duration_s, "profile": chosen.name,
                "measured": dataclasses.asdict(measured),
            }
            self._save_index(index)
        log.info(
            "prepared %s for %s speakers (%d bytes, %.1f s, %.1f LUFS, LRA %.1f LU, true peak "
            "%.1f dBTP) from %s",
            sha256, chosen.name, size, prepared.duration_s, measured.integrated_lufs,
            measured.range_lu, measured.true_peak_dbtp, names,
        )
        return prepared

    def _master(
        self, pcm: bytes, source_lufs: float, chosen: Profile, out: Path, what: str
    ) -> Loudness:
        """Process pcm (about source_lufs loud) with the profile's chain, encode it to out,
        and return what the encoded file measures decoded again.

        The gains are found by measuring: the source's loudness brings it to the level
        the profile's compressor is set for; the shaped audio's, to the target; then each
        encoded result, decoded as an agent decodes it, corrects the gain before the
        limiter (the limiter and the encoder take some loudness off) and lowers the
        limiter when the encoder's overshoot took the true peak over the ceiling.
        """
        settings = self.settings
        rate = settings.sample_rate
        seconds = len(pcm) / (ffmpeg.SAMPLE_WIDTH * rate)
        target = settings.target_lufs if settings.target_lufs is not None else source_lufs

        def chain(gain_out: float, ceiling: float | None) -> str:
            return audio_chain.graph(
                chosen, sample_rate=rate, reference_lufs=target,
                gain_in_db=target - source_lufs, gain_out_db=gain_out, ceiling_dbtp=ceiling,
            )

        try:
            shaped = ffmpeg.measure_pcm(pcm, rate, what=what, graph=chain(0.0, None))
            ceiling = settings.true_peak_dbtp - audio_chain.OPUS_HEADROOM_DB

            def most(ceiling: float) -> float:  # the gain that limits MAX_LIMITING_DB
                return ceiling + MAX_LIMITING_DB - shaped.true_peak_dbtp

            gain_out = min(target - shaped.integrated_lufs, most(ceiling))
            tried: list[tuple[float, float, float]] = []  # (gain, ceiling, LUFS heard)
            kept: list[tuple[float, float, float]] = []  # tries under the ceiling: (|miss|, ...)
            for attempt in range(1, ENCODES + 1):
                self._encode(pcm, out, chain(gain_out, ceiling), chosen.opus_application)
                heard = ffmpeg.loudness(out, seconds=seconds, opus=True)
                log.debug(
                    "%s, try %d: gain %.2f dB, limiter %.2f dBTP: %.2f LUFS, %.2f dBTP",
                    what, attempt, gain_out, ceiling, heard.integrated_lufs,
                    heard.true_peak_dbtp,
                )
                over = heard.true_peak_dbtp - settings.true_peak_dbtp
                miss = target - heard.integrated_lufs
                held = over <= 0
                if held and abs(miss) <= LOUDNESS_TOLERANCE_LU:
                    return heard
                if held and miss > 0 and gain_out >= most(ceiling):
                    break  # as loud as it gets without crushing it
                tried.append((gain_out, ceiling, heard.integrated_lufs))
                if held:
                    kept.append((abs(miss), gain_out, ceiling))
                limiting = shaped.true_peak_dbtp + gain_out - ceiling
                if over > 0:
                    ceiling -= over + PEAK_MARGIN_DB
                gain_out = min(gain_out + _gain_step(tried, miss, limiting), most(ceiling))
            if over > 0:
                # The last try went over the ceiling. The peak rule wins over loudness:
                # take the try that held it and came nearest the target, or else this
                # one turned down by its overshoot, and encode that once more.
                if kept:
                    _, gain_out, ceiling = min(kept)
                else:
                    gain_out -= over + PEAK_MARGIN_DB
                    ceiling -= over + PEAK_MARGIN_DB
                self._encode(pcm, out, chain(gain_out, ceiling), chosen.opus_application)
                heard = ffmpeg.loudness(out, seconds=seconds, opus=True)
                over = heard.true_peak_dbtp - settings.true_peak_dbtp
                miss = target - heard.integrated_lufs
        except ffmpeg.FfmpegError as exc:
            raise AudioError(
                None, Text("processing {what} failed", what=what),
                Text("Check the ffmpeg build: it needs the ebur128, alimiter, acompressor, "
                     "equalizer and highpass filters and libopus (ffmpeg -filters; ffmpeg "
                     "-encoders)"),
                detail=str(exc),
            ) from None
        if over > 0:
            raise AudioError(
                None,
                Text("the bulletin made of {what} still peaks at {peak:.1f} dBTP after {tries} "
                     "tries, over the {most:g} dBTP allowed", what=what,
                     peak=heard.true_peak_dbtp, tries=ENCODES, most=settings.true_peak_dbtp),
                Text("Report it with the files; lowering true_peak_dbtp in the controller "
                     "config leaves the limiter more room meanwhile"),
            )
        if miss > 0 and gain_out >= most(ceiling):
            log.warning(
                "%s: prepared at %.1f LUFS, %.1f LU under the %.1f LUFS aimed at: its peaks "
                "stand so far above its loudness (short, sharp sounds) that more would crush "
                "them under the %.1f dBTP ceiling", what, heard.integrated_lufs, miss, target,
                settings.true_peak_dbtp,
            )
            return heard
        log.log(
            logging.WARNING if abs(miss) > 2 * LOUDNESS_TOLERANCE_LU else logging.INFO,
            "%s: prepared at %.1f LUFS, %.1f LU from the %.1f LUFS aimed at (true peak "
            "%.1f dBTP)", what, heard.integrated_lufs, -miss, target, heard.true_peak_dbtp,
        )
        return heard

    def _encode(self, pcm: bytes, out: Path, graph: str, application: OpusApplication) -> None:
        settings = self.settings
        try:
            encode_opus(
                pcm, settings.sample_rate, settings.bitrate_kbps, out, graph=graph,
                application=application,
            )
        except ffmpeg.FfmpegError as exc:
            raise AudioError(
                None,
                Text("encoding to Opus failed"),
                Text("Check that this ffmpeg has libopus (ffmpeg -encoders | grep opus)"),
                detail=str(exc),
            ) from None


def _joined_loudness(levels: list[tuple[float, float]]) -> float:
    """The loudness of parts played one after the other, from (seconds, LUFS) of each:
    their mean power weighted by duration (the gaps between them are silence, which the
    loudness gate leaves out anyway)."""
    total = sum(seconds for seconds, _ in levels)
    if total <= 0:
        return max(lufs for _, lufs in levels)
    power = sum(seconds * 10 ** (lufs / 10) for seconds, lufs in levels) / total
    return 10 * math.log10(power)


def _gain_step(tried: list[tuple[float, float, float]], miss: float, limiting: float) -> float:
    """How much to change the gain before the limiter to close a loudness miss (LU).

    A limiter working harder gives back less of each dB: the slope between the last two
    tries at the same limiter setting says how much (kept between 0.25 and 1 dB per dB).
    Without two such tries: 1 dB per dB, or half that when the limiter already takes more
    than 3 dB (limiting) off the highest peak.
    """
    slope = 0.5 if limiting > 3 else 1.0
    if len(tried) >= 2:
        (gain_a, ceiling_a, heard_a), (gain_b, ceiling_b, heard_b) = tried[-2:]
        if ceiling_a == ceiling_b and gain_a != gain_b:
            slope = min(1.0, max(0.25, (heard_b - heard_a) / (gain_b - gain_a)))
    return miss / slope
