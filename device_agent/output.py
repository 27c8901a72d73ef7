"""Output backends: where a cluster's audio goes.

One small interface, three implementations chosen by the agent config:
- `ffmpeg`: streams the bulletin through ffmpeg to the sound card (ALSA or PulseAudio);
- `file`: writes what it would have played as one WAV per play (tests, the demo);
- `null`: plays nothing, takes the bulletin's duration (fleet simulation).

`play` blocks until the audio has finished or `stop` is set, whichever comes first.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol


@dataclass(frozen=True)
class PlayOutcome:
    """How one play on the output ended."""

    completed: bool  # False: stopped early (preempted or stop command)
    played_s: float  # seconds of audio that went out
    error: str | None = None  # set when the output failed; completed is then False


class OutputBackend(Protocol):
    name: str

    def play(
        self, items: list[Path], duration_s: float, label: str, stop: threading.Event
    ) -> PlayOutcome:
        """Play the items in order (total duration_s); return when done or when stop is set."""
        ...

    def check(self) -> str | None:
        """None if the output can play now, else what is wrong and what to try."""
        ...


class NullBackend:
    """Plays nothing; takes the audio's duration, or less when stopped."""

    name: Literal["null"] = "null"

    def play(
        self, items: list[Path], duration_s: float, label: str, stop: threading.Event
    ) -> PlayOutcome:
        started = time.monotonic()
        stopped = stop.wait(duration_s)
        played = min(duration_s, time.monotonic() - started)
        return PlayOutcome(completed=not stopped, played_s=played)

    def check(self) -> str | None:
        return None
