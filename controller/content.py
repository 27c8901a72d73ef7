"""A programme's audio added to the playlists' audio folder (the web app's content page).

An uploaded file is checked as `loa-controller check` and preparation check it (it
decodes, is not too long, is loud enough and audible: AudioLibrary.probe), then kept
normalised: mono 16-bit WAV at 48 kHz, brought to the fleet's loudness target (EBU R128,
`audio.loudness_lufs`) without its true peak going over -1 dBTP. It is written under a
plain file name (letters without marks, digits, '-', '_'), never over another file
unless asked, and atomically, so a running controller never reads half of it. The
SHA-256 of the file kept, and of the Opus each audio profile's clusters will get, are
what a manager compares with what airs.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from controller import ffmpeg
from controller.audio import AudioError, AudioLibrary
from controller.folding import fold

MASTER_RATE = 48_000
DEFAULT_TARGET_LUFS = -16.0
PEAK_CEILING_DBTP = -1.0
AUDIO_SUFFIXES = (".wav",)


@dataclass(frozen=True)
class AudioFile:
    """An audio file of the folder: its name as a playlist writes it, and its hash."""

    name: str  # relative to the playlists' folder: audio/ten-tep.wav
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class AddedAudio:
    file: AudioFile
    duration_s: float
    lufs_before: float
    lufs_after: float
    prepared: dict[str, str]  # audio profile -> SHA-256 of the Opus its clusters get


class ContentError(ValueError):
    """An upload refused, saying why and what to do."""


def audio_folder(playlist_paths: Iterable[Path]) -> Path | None:
    """Where uploaded audio goes: `audio/` beside the first playlist file, or in the first
    playlist folder."""
    for path in playlist_paths:
        return (path if path.is_dir() else path.parent) / "audio"
    return None


def plain_name(filename: str) -> str:
    """A file name a playlist can write as it is: "Bản tin sáng 1.mp3" -> ban-tin-sang-1.wav."""
    stem = Path(filename).stem
    plain = re.sub(r"[^a-z0-9_]+", "-", fold(stem)).strip("-_")
    if not plain:
        raise ContentError(
            f"{filename!r}: give the file a name with letters or digits (e.g. ban-tin-sang)"
        )
    return plain[:80] + ".wav"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def listing(folder: Path) -> list[AudioFile]:
    """The audio files of the folder, by name."""
    if not folder.is_dir():
        return []
    return [
        AudioFile(f"{folder.name}/{p.name}", p, p.stat().st_size, sha256_of(p))
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
    ]


def add_audio(
    upload: Path,
    folder: Path,
    filename: str,
    library: AudioLibrary,
    profiles: Iterable[str],
    *,
    replace: bool = False,
    target_lufs: float | None = DEFAULT_TARGET_LUFS,
) -> AddedAudio:
    """Check the uploaded file, keep it normalised in folder, and prepare it for each audio
    profile. AudioError when it cannot air, ContentError when the name is taken."""
    name = plain_name(filename)
    final = folder / name
    if final.exists() and not replace:
        raise ContentError(
            f"{folder.name}/{name} already exists: choose another name, or replace it "
            "(every programme naming it then airs the new audio, after approval if it needs it)"
        )
    duration = library.probe(upload)  # AudioError saying why it cannot air
    try:
        decoded = ffmpeg.decode_pcm(upload, sample_rate=MASTER_RATE, measure=True)
    except ffmpeg.FfmpegError as exc:
        raise AudioError(upload, f"it cannot be decoded ({exc})", "Upload another file") from None
    assert decoded.loudness is not None  # asked for with measure=True
    before = decoded.loudness.integrated_lufs
    gain = 0.0 if target_lufs is None else target_lufs - before
    gain = min(gain, PEAK_CEILING_DBTP - decoded.loudness.true_peak_dbtp)
    segment = ffmpeg.segment_from_pcm(decoded.pcm, MASTER_RATE).apply_gain(gain)
    folder.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=".upload-", suffix=".wav", dir=folder)
    os.close(fd)
    try:
        with open(scratch, "wb") as out:  # pydub leaves a file it opens itself unclosed
            segment.export(out, format="wav")
        os.replace(scratch, final)
    finally:
        Path(scratch).unlink(missing_ok=True)
    kept = AudioFile(f"{folder.name}/{name}", final, final.stat().st_size, sha256_of(final))
    prepared = {p: library.prepare([final], profile=p).sha256 for p in sorted(set(profiles))}
    return AddedAudio(kept, duration, before, before + gain, prepared)
