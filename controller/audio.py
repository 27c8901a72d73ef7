"""Audio preparation: any recording in, one mono Ogg/Opus file out, stored by its SHA-256.

A bulletin is an optional intro, one or more source recordings and an optional outro.
Each file is decoded by ffmpeg (mp3, wav, ogg/opus, m4a, flac: anything ffmpeg reads, at
any rate and channel count) to mono PCM, checked (readable, complete, not empty, not too
long, and audible: one stretch with MIN_SOUND_MS of sound louder than SILENCE_DBFS, not
just clicks in hiss) and trimmed of leading and trailing silence with pydub; the parts
are joined with a short gap and encoded ONCE to Ogg/Opus for speech. The result is named
`<root>/<sha256>.opus`, which is how the agents ask for it (protocol/chunks.py).

Preparing the same files with the same settings again is free: `<root>/index.json` maps
the SHA-256 of the sources' bytes and the settings to the content already encoded.
Encoding is bit-exact, so the same input on the same ffmpeg gives the same SHA-256.
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
from typing import Any

from controller import ffmpeg
from protocol.chunks import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, chunk_count
from protocol.messages import ContentRef

log = logging.getLogger(__name__)

#: Bump when the processing changes what comes out for the same input, to miss the cache.
PIPELINE_VERSION = 2  # 2: loudness normalisation
#: Below this level (dBFS) audio counts as silence, for trimming and for refusing a file.
SILENCE_DBFS = -50.0
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
#: Sample rates the Opus encoder takes.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
INDEX_NAME = "index.json"
SUFFIX = ".opus"


class AudioError(ValueError):
    """An audio file the controller cannot use: the text names it, says why and what to do."""

    def __init__(self, path: Path | None, reason: str, advice: str) -> None:
        where = str(path) if path is not None else "bulletin"
        super().__init__(f"{where}: {reason}. {advice}")
        self.path = path
        self.reason = reason


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
            raise ValueError("invalid audio settings: " + "; ".join(problems))

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
            path, "file not found", "Check the file name and folder in the playlist"
        ) from None
    except OSError as exc:
        raise AudioError(
            path, f"cannot be read ({exc.strerror})", "Check the path and its permissions"
        ) from None
    if not path.is_file():
        raise AudioError(path, "is not a file", "Give the path of an audio file")
    if size == 0:
        raise AudioError(path, "the file is empty (0 bytes)", "Copy or export the recording again")
    if not os.access(path, os.R_OK):
        raise AudioError(
            path,
            "cannot be read (permission denied)",
            "Give the controller's user read access to it",
        )


def _undecodable(path: Path, exc: ffmpeg.FfmpegError) -> AudioError:
    if "matches no streams" in exc.stderr_tail:
        return AudioError(
            path, "the file holds no audio stream", "Choose the sound recording itself"
        )
    return AudioError(
        path,
        f"ffmpeg cannot decode it as audio (ffmpeg said: {exc.stderr_tail or exc})",
        "Check that it is a complete sound recording; if so, export it again as MP3, "
        "WAV, OGG, M4A or FLAC",
    )


def _check_audio(
    path: Path, duration_s: float, declared_s: float | None, peak_dbfs: float, max_s: float
) -> None:
    """The refusals shared by prepare and probe, on what decoding a file found."""
    if duration_s > max_s:
        raise AudioError(
            path,
            f"it lasts more than {max_s:g} s, the longest bulletin allowed (max_duration_s)",
            "Cut it into shorter bulletins, or raise max_duration_s in the controller config",
        )
    if duration_s <= 0:
        raise AudioError(
            path,
            "no audio could be decoded from it (0 s)",
            "Check that it is a complete sound recording, and export it again",
        )
    if declared_s is not None and declared_s - duration_s > max(
        TRUNCATED_MIN_S, TRUNCATED_FRACTION * declared_s
    ):
        raise AudioError(
            path,
            f"the file is cut short: it declares {declared_s:.1f} s but only "
            f"{duration_s:.1f} s could be decoded (an incomplete copy or download?)",
            "Copy the file again from the original",
        )
    if peak_dbfs < SILENCE_DBFS:
        level = "no sound at all" if peak_dbfs == -math.inf else f"peak {peak_dbfs:.1f} dBFS"
        raise AudioError(
            path,
            f"the audio is silent ({level}; anything below {SILENCE_DBFS:g} dBFS is silence)",
            "Check the recording level, or that this is the right file",
        )


def _windows(segment: Any) -> Iterator[tuple[int, Any]]:
    """segment in consecutive TRIM_STEP_MS pieces (the last may be shorter), with their start."""
    for start in range(0, len(segment), TRIM_STEP_MS):
        yield start, segment[start : start + TRIM_STEP_MS]


def _sound_ms(segment: Any, enough_ms: int = MIN_SOUND_MS) -> int:
    """The most sound in one stretch of segment: how many milliseconds are louder than
    SILENCE_DBFS, TRIM_STEP_MS at a time, where a quieter dip of SOUND_GAP_MS or more ends
    a stretch. Counting stops at enough_ms, so a real recording is decided at its start.
    """
    most = current = 0
    last: int | None = None  # where the last window louder than the threshold ended
    for start, window in _windows(segment):
        if window.dBFS < SILENCE_DBFS:
            continue
        if last is not None and start - last >= SOUND_GAP_MS:
            current = 0
        current += len(window)
        last = start + len(window)
        most = max(most, current)
        if most >= enough_ms:
            break
    return most


def _check_audible(path: Path, segment: Any) -> None:
    """Refuse a file whose sound is only clicks or hiss: no stretch with MIN_SOUND_MS of it.

    Trimming cuts only what is quieter than SILENCE_DBFS, so it leaves at least that much
    of a file accepted here.
    """
    if _sound_ms(segment) >= MIN_SOUND_MS:
        return
    peak_at, peak = 0, -1
    for start, window in _windows(segment):
        if window.max > peak:
            peak_at, peak = start, window.max
    raise AudioError(
        path,
        f"no audible sound (nothing louder than {SILENCE_DBFS:g} dBFS for "
        f"{MIN_SOUND_MS / 1000:g} s; peak {segment.max_dBFS:.1f} dBFS at {peak_at / 1000:.2f} s)",
        "Check the recording level, or pick another file",
    )


def _trimmed(segment: Any) -> Any:
    """segment without its leading and trailing silence (keeping TRIM_KEEP_MS of each)."""
    length = len(segment)  # milliseconds
    start = 0
    while start < length and segment[start : start + TRIM_STEP_MS].dBFS < SILENCE_DBFS:
        start += TRIM_STEP_MS
    end = length
    while end > start and segment[max(start, end - TRIM_STEP_MS) : end].dBFS < SILENCE_DBFS:
        end -= TRIM_STEP_MS
    return segment[max(0, start - TRIM_KEEP_MS) : min(length, end + TRIM_KEEP_MS)]


def encode_opus(pcm: bytes, sample_rate: int, bitrate_kbps: int, out: Path) -> None:
    """Encode mono s16le PCM to an Ogg/Opus file for speech, bit-exact (same in, same out)."""
    ffmpeg.run_ffmpeg(
        [
            "-f", "s16le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0",
            "-c:a", "libopus", "-b:a", f"{bitrate_kbps}k", "-application", "voip",
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

    def _cache_key(self, parts: list[tuple[str, Path]]) -> str:
        key = {
            "pipeline": PIPELINE_VERSION,
            "settings": self.settings.cache_fields(),
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
        return PreparedAudio(
            sha256=sha256,
            path=path,
            size=size,
            duration_s=float(entry["duration_s"]),
            chunk_size=self.settings.chunk_size,
        )

    def read(self, sha256: str) -> bytes:
        """The encoded bytes of a prepared bulletin, verified against their SHA-256."""
        path = self.path_of(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyError(
                f"{path}: no prepared audio with SHA-256 {sha256} in the audio library; "
                "prepare the bulletin again"
            ) from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise AudioError(
                path,
                "the stored audio no longer matches its SHA-256 (damaged on disk)",
                "Delete the file and prepare the bulletin again",
            )
        return data

    # --- checking and preparing -----------------------------------------------------------------

    def probe(self, path: Path) -> float:
        """The duration of an audio file, or AudioError saying why it cannot be used.

        The file is decoded and checked as prepare does it, so that what `loa-controller
        check` accepts is what prepare accepts.
        """
        _check_file(path)
        return float(self._decoded(path).duration_seconds)

    def _decoded(self, path: Path) -> Any:
        """One file decoded and checked, untrimmed, as a pydub AudioSegment."""
        settings = self.settings
        try:
            decoded = ffmpeg.decode_pcm(
                path, sample_rate=settings.sample_rate, limit_s=settings.max_duration_s + 1
            )
        except ffmpeg.FfmpegError as exc:
            raise _undecodable(path, exc) from None
        segment = ffmpeg.segment_from_pcm(decoded.pcm, settings.sample_rate)
        peak = float(segment.max_dBFS) if decoded.pcm else -math.inf
        _check_audio(path, decoded.duration_s, decoded.declared_s, peak, settings.max_duration_s)
        _check_audible(path, segment)
        return segment

    def _load(self, path: Path) -> Any:
        """One part, decoded, checked and trimmed, as a pydub AudioSegment."""
        segment = self._decoded(path)
        return _trimmed(segment) if self.settings.trim_silence else segment

    def prepare(
        self, sources: list[Path], intro: Path | None = None, outro: Path | None = None
    ) -> PreparedAudio:
        """Prepare intro + sources + outro as one Opus bulletin; reuse it if already made."""
        if not sources:
            raise AudioError(None, "no source audio given", "List at least one audio file")
        parts = [("source", path) for path in sources]
        if intro is not None:
            parts.insert(0, ("intro", intro))
        if outro is not None:
            parts.append(("outro", outro))
        for _, path in parts:
            _check_file(path)

        key = self._cache_key(parts)
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
        for _, path in parts:
            if pieces:
                pieces.append(gap)
            pieces.append(bytes(self._load(path).raw_data))
        pcm = b"".join(pieces)
        del pieces
        duration_s = len(pcm) / (ffmpeg.SAMPLE_WIDTH * settings.sample_rate)
        if duration_s > settings.max_duration_s:
            names = ", ".join(str(path) for _, path in parts)
            raise AudioError(
                None,
                f"the bulletin made of {names} lasts {duration_s:.0f} s, more than the "
                f"{settings.max_duration_s:g} s allowed (max_duration_s)",
                "Split it into shorter bulletins, or raise max_duration_s in the controller config",
            )

        if settings.target_lufs is not None:
            try:
                pcm = ffmpeg.normalise_pcm(
                    pcm, settings.sample_rate, target_lufs=settings.target_lufs,
                    true_peak_dbtp=settings.true_peak_dbtp,
                    what=", ".join(str(path) for _, path in parts),
                )
            except ffmpeg.FfmpegError as exc:
                raise AudioError(
                    None, f"loudness normalisation failed ({exc})",
                    "Check the ffmpeg build (it needs the loudnorm filter)",
                ) from None
        with _temp_in(self.root, ".opus.tmp") as temp:
            try:
                encode_opus(pcm, settings.sample_rate, settings.bitrate_kbps, temp)
            except ffmpeg.FfmpegError as exc:
                raise AudioError(
                    None,
                    f"encoding to Opus failed ({exc})",
                    "Check that this ffmpeg has libopus (ffmpeg -encoders | grep opus)",
                ) from None
            sha256 = _file_sha256(temp)
            size = temp.stat().st_size
            temp.replace(self.path_of(sha256))

        prepared = PreparedAudio(
            sha256=sha256,
            path=self.path_of(sha256),
            size=size,
            duration_s=round(duration_s, 3),
            chunk_size=settings.chunk_size,
        )
        with self._lock:
            index = self._load_index()
            index["prepared"][key] = sha256
            index["content"][sha256] = {"size": size, "duration_s": prepared.duration_s}
            self._save_index(index)
        log.info(
            "prepared %s (%d bytes, %.1f s) from %s",
            sha256,
            size,
            prepared.duration_s,
            ", ".join(str(path) for _, path in parts),
        )
        return prepared
