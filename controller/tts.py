"""Text-to-speech (chuyển văn bản thành giọng nói): typed text to a WAV, offline.

`TextToSpeech` is the small interface the urgent service, the web app's "Nghe thử" and
`loa-controller say` use; `Speech` is its implementation: the text is first rewritten
into the words to say (controller.speech_text: numbers, dates, units, abbreviations),
then spoken by the voice asked for (controller.voices) through that voice's engine.

Engines sit behind one interface, `Engine`:

- `EspeakNg`: espeak-ng run as a program, with the voice's name, speed and pitch;
- `CommandEngine`: any program that reads the words on its standard input and writes
  a WAV file (to the path put in place of ``{out}`` in its arguments, or to its standard
  output): how an operator plugs in a neural voice or a vendor's engine.

Where an engine cannot speak, `available()` says what is missing and what to do, and
the page and the API tell the user plainly to upload or record audio instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from controller.abbreviations import dictionary
from controller.config import SpeechConfig
from controller.ffmpeg import stderr_tail
from controller.samples import SpeechError, speech
from controller.speech_text import SpeechText
from controller.vi_numbers import NumberWords
from controller.voices import DEFAULT_VOICE, Voice, catalogue
from protocol.l10n import Text, say
from protocol.validation import suggest

#: Longest text spoken in one announcement (about five minutes of speech).
MAX_TEXT_CHARS = 4000
#: The largest WAV a command may write (a 5-minute announcement at 48 kHz is ~29 MB).
MAX_WAV_BYTES = 200 * 1024 * 1024


class TtsUnavailableError(RuntimeError):
    """No text-to-speech engine can speak here."""


class TextToSpeech(Protocol):
    def available(self, voice: str | None = None) -> str | None:
        """None when the voice can speak, else what is missing and what to do."""
        ...

    def speak(self, text: str, out: Path, voice: str | None = None) -> Path:
        """Speak text into a WAV file at out; TtsUnavailableError or ValueError if not."""
        ...


class Engine(Protocol):
    """One way of turning words into a WAV file."""

    name: str

    def missing(self, voice: Voice) -> Text | None:
        """None when this engine can speak with voice, else what is missing."""
        ...

    def synthesise(self, words: str, voice: Voice, out: Path) -> None:
        """Speak words (already normalised) into a WAV at out; TtsUnavailableError if not."""
        ...


class EspeakNg:
    """espeak-ng: the voice's espeak-ng voice name, speed (-s) and pitch (-p)."""

    name = "espeak-ng"

    def missing(self, voice: Voice) -> Text | None:
        if shutil.which("espeak-ng") is None:
            return Text(
                "no text-to-speech engine is installed on the controller "
                "(apt-get install espeak-ng); upload or record the announcement instead"
            )
        return None

    def synthesise(self, words: str, voice: Voice, out: Path) -> None:
        try:
            if not speech(out, words, voice=voice.voice, speed=voice.speed, pitch=voice.pitch):
                raise TtsUnavailableError(self.missing(voice) or Text("espeak-ng vanished"))
        except SpeechError as exc:
            raise TtsUnavailableError(exc.args[0] if exc.args else str(exc)) from None


class CommandEngine:
    """Any program that reads text on its standard input and writes a WAV file.

    The voice's ``command`` is run without a shell; in its arguments ``{out}`` becomes
    the WAV file to write (left out: the WAV is read from the program's standard
    output), ``{voice}``, ``{speed}`` and ``{pitch}`` the voice's settings. The words
    arrive as UTF-8 on standard input. A program that fails, runs past the voice's
    timeout or writes no WAV is reported with the end of what it wrote on stderr.
    """

    name = "command"

    def missing(self, voice: Voice) -> Text | None:
        if not voice.command:
            return Text("voice {voice}: no command to run (speech.voices.{voice}.command)",
                        voice=voice.name)
        program = voice.command[0]
        if os.sep in program:
            if not (os.path.isfile(program) and os.access(program, os.X_OK)):
                return Text(
                    "voice {voice}: {program} is not an executable file; check "
                    "speech.voices.{voice}.command in the controller config",
                    voice=voice.name, program=program,
                )
        elif shutil.which(program) is None:
            return Text(
                "voice {voice}: the program {program!r} is not on the PATH; install it "
                "or write its full path in speech.voices.{voice}.command",
                voice=voice.name, program=program,
            )
        return None

    def synthesise(self, words: str, voice: Voice, out: Path) -> None:
        missing = self.missing(voice)
        if missing:
            raise TtsUnavailableError(missing)
        values = {
            "{out}": str(out), "{voice}": voice.voice, "{speed}": str(voice.speed),
            "{pitch}": str(voice.pitch),
        }
        argv = []
        for written in voice.command:
            arg = written
            for key, value in values.items():
                arg = arg.replace(key, value)
            argv.append(arg)
        to_file = any("{out}" in arg for arg in voice.command)
        try:
            proc = subprocess.run(
                argv, input=words.encode("utf-8"), capture_output=True,
                timeout=voice.timeout_s, check=False,
            )
        except subprocess.TimeoutExpired:
            raise TtsUnavailableError(Text(
                "voice {voice}: {program} did not finish within {timeout:g} s",
                voice=voice.name, program=argv[0], timeout=voice.timeout_s,
            )) from None
        except OSError as exc:
            raise TtsUnavailableError(Text(
                "voice {voice}: {program} could not start ({why})",
                voice=voice.name, program=argv[0], why=exc.strerror,
            )) from None
        if proc.returncode != 0:
            raise TtsUnavailableError(Text(
                "voice {voice}: {program} failed with status {status}: {tail}",
                voice=voice.name, program=argv[0], status=proc.returncode,
                tail=stderr_tail(proc.stderr),
            ))
        who = Text("voice {voice}: {program}", voice=voice.name, program=argv[0])
        if not to_file:
            if len(proc.stdout) > MAX_WAV_BYTES:
                raise TtsUnavailableError(
                    Text("{who} wrote more than {mb} MB", who=who, mb=MAX_WAV_BYTES >> 20)
                )
            out.write_bytes(proc.stdout)
        _check_wav(out, who)


def _check_wav(path: Path, who: Text) -> None:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        raise TtsUnavailableError(Text("{who} wrote no WAV file", who=who)) from None
    if size > MAX_WAV_BYTES:
        raise TtsUnavailableError(
            Text("{who} wrote more than {mb} MB", who=who, mb=MAX_WAV_BYTES >> 20)
        )
    if size <= 44 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise TtsUnavailableError(Text(
            "{who} wrote no speech in WAV form ({size} bytes); it must write a RIFF/WAVE file",
            who=who, size=size,
        ))


ENGINES: dict[str, Engine] = {"espeak-ng": EspeakNg(), "command": CommandEngine()}


class UnknownVoiceError(ValueError):
    """A voice name that is neither built in nor in speech.voices."""


class Speech:
    """Text to speech with the province's words and voices (the TextToSpeech in use)."""

    def __init__(
        self,
        voices: Mapping[str, Voice] | None = None,
        text: SpeechText | None = None,
        *,
        engines: Mapping[str, Engine] | None = None,
        default_voice: str = DEFAULT_VOICE,
    ) -> None:
        self.voices = catalogue(voices)
        self.text = text or SpeechText()
        self.engines = dict(engines or ENGINES)
        self.default_voice = default_voice

    def voice(self, name: str | None = None) -> Voice:
        """The voice of that name (the default for None); UnknownVoiceError if none."""
        name = name or self.default_voice
        found = self.voices.get(name)
        if found is None:
            close = suggest(name, self.voices)
            voices = ", ".join(sorted(self.voices))
            if close:
                raise UnknownVoiceError(Text(
                    "no voice {name!r}: did you mean {close!r}? the voices are {voices}",
                    name=name, close=close, voices=voices,
                ))
            raise UnknownVoiceError(
                Text("no voice {name!r}: the voices are {voices}", name=name, voices=voices)
            )
        return found

    def available(self, voice: str | None = None) -> str | None:
        try:
            chosen = self.voice(voice)
        except UnknownVoiceError as exc:
            return say(exc)
        missing = self.engines[chosen.engine].missing(chosen)
        return None if missing is None else str(missing)

    def words(self, text: str) -> str:
        """What the voice will say for text."""
        return self.text.words(text)

    def speak(self, text: str, out: Path, voice: str | None = None) -> Path:
        text = " ".join(text.split())
        if not text:
            raise ValueError(Text("the text is empty: write what the speakers should say"))
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(Text(
                "the text has {n} characters; at most {max} are spoken "
                "in one announcement", n=len(text), max=MAX_TEXT_CHARS,
            ))
        chosen = self.voice(voice)
        engine = self.engines[chosen.engine]
        missing = engine.missing(chosen)
        if missing:
            raise TtsUnavailableError(missing)
        engine.synthesise(self.words(text), chosen, out)
        return out


def speech_for(config: SpeechConfig | None = None) -> Speech:
    """The Speech of a controller config's `speech:` section (ConfigError if its
    abbreviation files are wrong)."""
    config = config or SpeechConfig()
    words = NumberWords(zero_tens=config.numbers.zero_tens, thousand=config.numbers.thousand)
    text = SpeechText(numbers=words, abbreviations=dictionary(config.abbreviations))
    return Speech(config.voice_table(), text)
