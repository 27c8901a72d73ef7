"""The voices a province speaks with, by name: which engine, which of its voices, how fast.

Three are built in, espeak-ng's Vietnamese voices:

=============  ==================  ================================
name           espeak-ng voice     speaks
=============  ==================  ================================
``mien-bac``   ``vi``              Northern Vietnamese (the default)
``mien-trung`` ``vi-vn-x-central`` Central Vietnamese
``mien-nam``   ``vi-vn-x-south``   Southern Vietnamese
=============  ==================  ================================

The controller config adds voices, or replaces a built-in one, under
``speech.voices`` (another speed or pitch, or a `command` engine: a neural voice or a
vendor's program). The fleet file names the voice of the province, and of any district
or commune that speaks differently (``voice: mien-nam``); see controller.fleet.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from protocol.l10n import _

EngineName = Literal["espeak-ng", "command"]
DEFAULT_VOICE = "mien-bac"
#: espeak-ng's speed (words per minute) and pitch (0-99) for the built-in voices: a
#: little slower than espeak-ng's 175, for horns on poles heard across a rice field.
DEFAULT_SPEED = 150
DEFAULT_PITCH = 50
#: What a `command` voice may write in its arguments, replaced before it runs.
PLACEHOLDERS = ("{out}", "{voice}", "{speed}", "{pitch}")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


@dataclass(frozen=True)
class Voice:
    """One voice: engine, the engine's own voice name, speed (words/min) and pitch."""

    name: str
    engine: EngineName = "espeak-ng"
    voice: str = "vi"
    speed: int = DEFAULT_SPEED
    pitch: int = DEFAULT_PITCH
    #: For the command engine: the program and its arguments (PLACEHOLDERS replaced).
    command: tuple[str, ...] = ()
    timeout_s: float = 120.0

    def describe(self) -> str:
        if self.engine == "command":
            return f"{self.name}: command {' '.join(self.command)}"
        return f"{self.name}: espeak-ng {self.voice}, {self.speed} words/min, pitch {self.pitch}"


BUILTIN: dict[str, Voice] = {
    "mien-bac": Voice("mien-bac", voice="vi"),
    "mien-trung": Voice("mien-trung", voice="vi-vn-x-central"),
    "mien-nam": Voice("mien-nam", voice="vi-vn-x-south"),
}


def check_voice_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(_(
            "voice name {name!r}: use 1-64 lower-case letters, digits, '-' or '_' (no "
            "accents or spaces), e.g. mien-nam", name=name,
        ))
    return name


def catalogue(configured: Mapping[str, Voice] | None = None) -> dict[str, Voice]:
    """The built-in voices, with those of the config added or put in their place."""
    return {**BUILTIN, **(configured or {})}
