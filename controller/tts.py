"""Text-to-speech (chuyển văn bản thành giọng nói) for urgent announcements, offline.

`TextToSpeech` is the small interface the urgent service uses; `EspeakNg` is the one
engine we ship with: espeak-ng and its Vietnamese voice (`vi`), run as a program, no
network. Where no engine is installed, `available()` says so and why, and the page and
the API tell the user plainly to upload or record audio instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from controller.samples import SpeechError, speech

#: Longest text spoken in one announcement (about five minutes of speech).
MAX_TEXT_CHARS = 4000


class TtsUnavailableError(RuntimeError):
    """No text-to-speech engine can speak here."""


class TextToSpeech(Protocol):
    name: str

    def available(self) -> str | None:
        """None when the engine can speak, else what is missing and what to do."""
        ...

    def speak(self, text: str, out: Path) -> Path:
        """Speak text into a WAV file at out; TtsUnavailableError or ValueError if not."""
        ...


class EspeakNg:
    """espeak-ng with one voice (Vietnamese by default)."""

    name = "espeak-ng"

    def __init__(self, voice: str = "vi") -> None:
        self.voice = voice

    def available(self) -> str | None:
        if shutil.which("espeak-ng") is None:
            return (
                "no text-to-speech engine is installed on the controller "
                "(apt-get install espeak-ng); upload or record the announcement instead"
            )
        return None

    def speak(self, text: str, out: Path) -> Path:
        text = " ".join(text.split())
        if not text:
            raise ValueError("the text is empty: write what the speakers should say")
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(
                f"the text has {len(text)} characters; at most {MAX_TEXT_CHARS} are spoken "
                "in one announcement"
            )
        missing = self.available()
        if missing:
            raise TtsUnavailableError(missing)
        try:
            if not speech(out, text, voice=self.voice):
                raise TtsUnavailableError(self.available() or "espeak-ng vanished")
        except SpeechError as exc:
            raise TtsUnavailableError(str(exc)) from None
        return out
