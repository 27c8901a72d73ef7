"""The processing chain audio goes through before it reaches the speakers: one ffmpeg
filter graph, built here and nowhere else.

A cluster's speakers decide what its audio should sound like (its *audio profile*,
chosen per fleet node in config/fleet.yaml):

- ``horn`` (the default): the 30 W horns on a pole in a street. They reproduce nothing
  below about 200 Hz, wind and traffic mask quiet syllables, and several horns across a
  village blur what is said. So: a high-pass below the horns' range (what they cannot
  play only heats them and eats the limiter's headroom), a presence lift where speech is
  understood (consonants, 2-4 kHz), and gentle compression that brings quiet syllables
  and sentences closer to loud ones.
- ``full-range``: indoor or full-range speakers (a hall, a school, a market's column
  speakers). Nothing is filtered or compressed, and the Opus encoder is tuned for music
  rather than speech, so music keeps its bass and dynamics.

Every profile then ends the same way: a gain that brings the audio to its loudness
target, and a true-peak limiter (a lookahead limiter run at four times the sample rate,
so it sees the peaks between samples too) set below the configured true-peak ceiling by
a headroom for the Opus encoder's overshoot.

The graph is one single-pass filter string (`graph`): nothing in it needs the whole
recording. Prepared bulletins (controller.audio) run it more than once only to *choose
its gains*: measure, run, encode, decode, measure, adjust. Live audio (a rebroadcast, a
microphone) can run the same graph as a streaming filter with gains set in advance
(`stream_graph`). This module builds strings; it runs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

ProfileName = Literal["horn", "full-range"]
#: libopus's tuning: "voip" favours speech (and high-passes what it is given), "audio"
#: keeps music's full range.
OpusApplication = Literal["voip", "audio"]
PROFILE_NAMES: tuple[ProfileName, ...] = get_args(ProfileName)
DEFAULT_PROFILE: ProfileName = "horn"

#: The limiter looks at the audio at this many times its sample rate (true peak, ITU-R
#: BS.1770 measures at 4x as well).
OVERSAMPLING = 4
#: The limiter's lookahead (attack) and release, in milliseconds: short enough not to
#: pump on speech, long enough not to distort it.
LIMITER_ATTACK_MS = 5.0
LIMITER_RELEASE_MS = 60.0
#: Where the limiter is set, below the true-peak ceiling, for a first try: Opus at speech
#: bit rates overshoots the peaks it is given by about 1 dB (measured on the test corpus,
#: tests/test_audio_chain.py). Prepared bulletins lower the limiter further when the
#: decoded result still exceeds the ceiling.
OPUS_HEADROOM_DB = 1.5
#: The same for live audio, which cannot be measured and encoded again: wider.
STREAM_HEADROOM_DB = 2.5
#: The loudness a live source is taken to have when nothing better is known (EBU R128's
#: broadcast target, which VOV and provincial stations deliver).
STREAM_SOURCE_LUFS = -23.0


@dataclass(frozen=True)
class Profile:
    """How audio is shaped for one kind of speaker. None turns a stage off."""

    name: ProfileName
    description: str
    #: High-pass cut-off (Hz) and its steepness: `highpass_sections` 12 dB/octave
    #: Butterworth sections in a row (2: 24 dB/octave, -6 dB at the cut-off).
    highpass_hz: float | None = None
    highpass_sections: int = 2
    #: Presence lift: a peaking band centred at `presence_hz`, `presence_octaves` wide,
    #: raised by `presence_db`.
    presence_hz: float | None = None
    presence_octaves: float = 1.5
    presence_db: float = 0.0
    #: Compression: above `compress_below_lu` under the loudness target (the level the
    #: audio is brought to before this stage), the level rises only 1/`compress_ratio`
    #: as fast; `compress_knee_db` of soft knee around the threshold.
    compress_below_lu: float | None = None
    compress_ratio: float = 1.0
    compress_attack_ms: float = 10.0
    compress_release_ms: float = 300.0
    compress_knee_db: float = 6.0
    #: How the Opus encoder is tuned for this profile.
    opus_application: OpusApplication = "voip"
    #: For live audio: the gain that makes up what the shaping takes from speech at the
    #: target loudness (prepared bulletins measure it instead). Measured on the test
    #: corpus's speech.
    stream_makeup_db: float = 0.0

    def shaping(self, reference_lufs: float) -> list[str]:
        """The profile's own filters, for audio brought to reference_lufs before them."""
        filters: list[str] = []
        if self.highpass_hz is not None:
            filters += [f"highpass=f={self.highpass_hz:g}:poles=2"] * self.highpass_sections
        if self.presence_hz is not None and self.presence_db:
            filters.append(
                f"equalizer=f={self.presence_hz:g}:t=o:w={self.presence_octaves:g}"
                f":g={self.presence_db:g}"
            )
        if self.compress_below_lu is not None and self.compress_ratio > 1:
            threshold = reference_lufs - self.compress_below_lu
            knee = 10 ** (self.compress_knee_db / 20)
            filters.append(
                f"acompressor=threshold={threshold:g}dB:ratio={self.compress_ratio:g}"
                f":attack={self.compress_attack_ms:g}:release={self.compress_release_ms:g}"
                f":knee={knee:.4f}:detection=rms"
            )
        return filters


HORN = Profile(
    name="horn",
    description="outdoor horn speakers: high-pass, presence lift, gentle compression",
    highpass_hz=180.0,
    highpass_sections=2,
    presence_hz=2800.0,
    presence_octaves=1.5,
    presence_db=4.0,
    compress_below_lu=2.0,
    compress_ratio=2.5,
    compress_attack_ms=10.0,
    compress_release_ms=300.0,
    compress_knee_db=6.0,
    stream_makeup_db=7.0,
)
FULL_RANGE = Profile(
    name="full-range",
    description="indoor or full-range speakers: level and true peak only, music intact",
    opus_application="audio",
)
PROFILES: dict[ProfileName, Profile] = {HORN.name: HORN, FULL_RANGE.name: FULL_RANGE}


def profile(name: str) -> Profile:
    """The profile called name; ValueError listing the known ones otherwise."""
    try:
        return PROFILES[name]  # type: ignore[index]  # checked by the lookup itself
    except KeyError:
        known = ", ".join(PROFILE_NAMES)
        raise ValueError(f"unknown audio profile {name!r}: write one of {known}") from None


def limiter(ceiling_dbtp: float, sample_rate: int) -> list[str]:
    """A true-peak limiter at ceiling_dbtp: oversampled, limited, brought back to the rate."""
    limit = min(1.0, max(0.0625, 10 ** (ceiling_dbtp / 20)))  # alimiter's range
    return [
        f"aresample={sample_rate * OVERSAMPLING}",
        f"alimiter=limit={limit:.6f}:attack={LIMITER_ATTACK_MS:g}"
        f":release={LIMITER_RELEASE_MS:g}:level=0:latency=1",
        f"aresample={sample_rate}",
    ]


def graph(
    chosen: Profile,
    *,
    sample_rate: int,
    reference_lufs: float,
    gain_in_db: float,
    gain_out_db: float,
    ceiling_dbtp: float | None,
) -> str:
    """The whole chain as one ffmpeg filter graph (mono audio at sample_rate in and out).

    gain_in_db brings the source to reference_lufs (the level the profile's compressor is
    set for); gain_out_db brings the shaped audio to the loudness target; the limiter
    holds the peaks at ceiling_dbtp (None: no limiter, to measure what comes before it).
    """
    filters = [f"volume={gain_in_db:.3f}dB", *chosen.shaping(reference_lufs)]
    filters.append(f"volume={gain_out_db:.3f}dB")
    if ceiling_dbtp is not None:
        filters += limiter(ceiling_dbtp, sample_rate)
    return ",".join(filters)


def stream_graph(
    chosen: Profile,
    *,
    sample_rate: int,
    target_lufs: float,
    true_peak_dbtp: float,
    source_lufs: float = STREAM_SOURCE_LUFS,
) -> str:
    """The chain for live audio, in one pass with gains set in advance.

    The source is taken to sit at source_lufs (a rebroadcast's nominal level, or a
    microphone's once set up); the profile's stream_makeup_db stands in for the measured
    make-up gain, and the limiter sits STREAM_HEADROOM_DB under the ceiling, since the
    encoded result cannot be measured and made again.
    """
    return graph(
        chosen,
        sample_rate=sample_rate,
        reference_lufs=target_lufs,
        gain_in_db=target_lufs - source_lufs,
        gain_out_db=chosen.stream_makeup_db,
        ceiling_dbtp=true_peak_dbtp - STREAM_HEADROOM_DB,
    )
