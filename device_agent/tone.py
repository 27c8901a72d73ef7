"""The test tone a technician plays to check the speakers (`loa-agent test-tone`) and that
`loa-agent check` sends through the output.

A 1 kHz sine at −12 dBFS, mono 16-bit 48 kHz WAV, with 20 ms fades so it starts and ends
without a click; written with the standard library (the agent has no audio toolkit).
"""

from __future__ import annotations

import math
import sys
import threading
import wave
from array import array
from dataclasses import dataclass
from pathlib import Path

from device_agent.output import FileBackend, OutputBackend, PlayOutcome
from device_agent.player import AmplifierControl

RATE = 48000
FREQUENCY_HZ = 1000.0
LEVEL = 10 ** (-12 / 20)  # −12 dBFS
FADE_S = 0.02


def write_tone(path: Path, seconds: float, frequency_hz: float = FREQUENCY_HZ) -> Path:
    """Write a sine tone of `seconds` to path (WAV); return path."""
    if seconds <= 0:
        raise ValueError("a test tone needs a duration above 0 seconds")
    frames = int(RATE * seconds)
    fade = max(1, int(RATE * FADE_S))
    peak = LEVEL * 32767
    step = 2 * math.pi * frequency_hz / RATE
    samples = array(
        "h",
        (
            int(peak * min(1.0, n / fade, (frames - 1 - n) / fade) * math.sin(step * n))
            for n in range(frames)
        ),
    )
    if sys.byteorder == "big":
        samples.byteswap()  # WAV is little-endian
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(samples.tobytes())
    return path


@dataclass(frozen=True)
class ToneResult:
    outcome: PlayOutcome
    relay_fault: str | None  # the amplifier relay failed (the tone may still have played)
    wav: Path | None = None  # the file output's WAV of the tone

    @property
    def ok(self) -> bool:
        return self.outcome.completed and self.outcome.error is None


def play_tone(
    output: OutputBackend,
    folder: Path,
    seconds: float,
    *,
    label: str = "loa-test-tone",
    amplifier: AmplifierControl | None = None,
    volume: int = 100,
    stop: threading.Event | None = None,
) -> ToneResult:
    """Play a test tone through output, with the amplifier switched on (and warmed up)
    first when there is one. The tone's source WAV is written to folder; the file output
    replaces the WAV of an earlier tone of the same label."""
    if isinstance(output, FileBackend) and output.out_dir.is_dir():
        for old in output.out_dir.glob(f"{label}*.wav"):
            old.unlink(missing_ok=True)
    tone = write_tone(folder / f"{label}-source.wav", seconds)
    stop = stop or threading.Event()
    powered = amplifier.power_on_for_play(stop) if amplifier is not None else True
    fault = amplifier.fault if amplifier is not None else None
    try:
        if not powered:
            return ToneResult(PlayOutcome(False, 0.0, error=f"amplifier relay: {fault}"), fault)
        outcome = output.play([tone], seconds, label, stop, volume)
        wav = output.path_for(label) if isinstance(output, FileBackend) else None
        return ToneResult(outcome, fault, wav if wav is not None and wav.is_file() else None)
    finally:
        if amplifier is not None:
            amplifier.play_finished()
        tone.unlink(missing_ok=True)
