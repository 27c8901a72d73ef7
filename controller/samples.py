"""Demo and test audio made on the spot, so that no recording of unknown licence ships.

Tones and chimes are generated with pydub (pure Python, no ffmpeg needed) and written as
WAV. Speech comes from espeak-ng where it is installed: this module is the edge to that
program, as controller/ffmpeg.py is the edge to ffmpeg.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from controller.ffmpeg import pydub_audio_segment, stderr_tail
from protocol.l10n import Text

#: The rate demo audio is made at (espeak-ng speaks at 22,050 Hz).
DEMO_RATE = 22050
TONE_RATE = 48000
#: Generated tones peak this far below full scale.
TONE_DBFS = -6.0
DEMO_SENTENCE = "Đây là bản tin thử nghiệm của đài truyền thanh xã. Xin cảm ơn bà con đã lắng nghe."
URGENT_SENTENCE = (
    "Thông báo khẩn. Nước sông đang lên nhanh. Đề nghị bà con đưa người và tài sản đến nơi an toàn."
)


class SpeechError(RuntimeError):
    """espeak-ng is installed but could not speak the text."""


def _sine(freq: float, ms: int, rate: int, volume_dbfs: float = TONE_DBFS) -> Any:
    pydub_audio_segment()  # imports and configures pydub quietly before its generators
    from pydub.generators import Sine  # pydub is imported on first use

    return Sine(freq, sample_rate=rate, bit_depth=16).to_audio_segment(
        duration=ms, volume=volume_dbfs
    )


def _silence(ms: int, rate: int) -> Any:
    return pydub_audio_segment().silent(duration=ms, frame_rate=rate)


def _write_wav(segment: Any, path: Path) -> Path:
    # pydub leaves the file it opens for a path unclosed; give it one that gets closed.
    with path.open("wb") as out:
        segment.export(out, format="wav")
    return path


def tone(path: Path, seconds: float, freq: float = 440) -> Path:
    """Write a sine tone of `seconds` at `freq` Hz as a mono 48 kHz WAV."""
    if seconds <= 0:
        raise ValueError(f"tone length must be > 0 s, got {seconds}")
    return _write_wav(_sine(freq, round(seconds * 1000), TONE_RATE), path)


def _chime_segment(rate: int) -> Any:
    """A two-tone "ding-dong" (E5 then C5), each note fading out; about 1.1 s."""
    ding = _sine(659.25, 450, rate).fade_out(350)
    dong = _sine(523.25, 650, rate).fade_out(550)
    return ding + dong


def chime(path: Path) -> Path:
    """Write a short two-tone chime (the sound before an announcement) as a WAV."""
    return _write_wav(_chime_segment(TONE_RATE), path)


def espeak_ng_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speech(
    path: Path, text: str, voice: str = "vi", *, speed: int | None = None,
    pitch: int | None = None,
) -> bool:
    """Speak text into a WAV at path with espeak-ng; False (nothing written) if not installed.

    speed: words per minute (espeak-ng -s, its default 175); pitch: 0-99 (-p, default 50).
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        return False
    options = [*(["-s", str(speed)] if speed else []), *(["-p", str(pitch)] if pitch is not None
                                                          else [])]
    try:
        proc = subprocess.run(
            [exe, "-v", voice, *options, "-w", str(path), "--stdin"],
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SpeechError(Text("{path}: espeak-ng did not finish within 60 s", path=path)) from None
    if proc.returncode != 0 or not path.exists() or path.stat().st_size <= 44:
        raise SpeechError(Text(
            "{path}: espeak-ng (voice {voice!r}) failed with status {status}: "
            "{tail}; list the voices with `espeak-ng --voices`",
            path=path, voice=voice, status=proc.returncode, tail=stderr_tail(proc.stderr),
        ))
    return True


def _demo(path: Path, seconds: float, opening: Any, sentence: str, tune: list[float]) -> bool:
    """opening, then sentence (spoken, or a tune of tones) repeated, cut to exactly seconds."""
    if seconds <= 0:
        raise ValueError(f"demo audio length must be > 0 s, got {seconds}")
    audio_segment = pydub_audio_segment()
    spoken = speech(path, sentence, voice="vi")
    if spoken:
        with path.open("rb") as spoken_wav:
            words = audio_segment.from_wav(spoken_wav).set_channels(1).set_frame_rate(DEMO_RATE)
    else:
        words = sum((_sine(freq, 280, DEMO_RATE) + _silence(70, DEMO_RATE)) for freq in tune)
    pause = _silence(400, DEMO_RATE)
    audio = opening + pause
    wanted_ms = round(seconds * 1000)
    while len(audio) < wanted_ms:
        audio += words + pause
    _write_wav(audio[:wanted_ms].fade_out(min(200, wanted_ms // 4)), path)
    return spoken


def demo_bulletin(path: Path, seconds: float) -> bool:
    """Write a demo bulletin of exactly `seconds` as a WAV: a chime, then speech.

    The Vietnamese sentence is spoken with espeak-ng where it is installed and repeated to
    fill the time; elsewhere a tune of tones stands in. Returns whether speech was used.
    """
    tune = [392.0, 440.0, 493.88, 523.25, 493.88, 440.0]
    return _demo(path, seconds, _chime_segment(DEMO_RATE), DEMO_SENTENCE, tune)


def demo_urgent(path: Path, seconds: float) -> bool:
    """Write a demo urgent announcement of exactly `seconds`: an alert warble, then speech.

    Like demo_bulletin, with a flood warning; returns whether speech was used.
    """
    warble = sum(_sine(freq, 150, DEMO_RATE, volume_dbfs=-3.0) for freq in (880.0, 660.0) * 3)
    tune = [880.0, 660.0, 880.0, 660.0]
    return _demo(path, seconds, warble, URGENT_SENTENCE, tune)
