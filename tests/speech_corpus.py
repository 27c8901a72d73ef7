"""A corpus of real-style audio for the audio tests, generated where the tests run.

Nothing of unknown licence ships: the speech is Vietnamese spoken by espeak-ng (the
controller's own text-to-speech engine), the noise and the music are synthesised by
ffmpeg with fixed seeds, so the same machine makes the same files every time. A test
session makes the corpus once (the `corpus` fixture of test_audio_chain.py).

- `speech(peak_dbfs)`: a warning read out, its sample peak at peak_dbfs (0, -18, -30,
  and the quiet -40 and -48 of the quiet-source tests);
- `central`, `southern`: the warning in espeak-ng's Central and Southern Vietnamese
  voices (the fleet's mien-trung and mien-nam), peaking at -6 dBFS: peakier than `vi`;
- `varying`: three sentences at very different levels (-1, -15 and -6 dBFS peaks), as
  when the speaker turns from the microphone: a wide loudness range;
- `shouted`: the warning shouted into a hot microphone: 18 dB too loud, compressed and
  clipped flat at full scale;
- `street`: the warning at -18 dBFS peak over street noise: traffic rumble (brown noise),
  wind (pink noise), an engine's 70 Hz hum and motorbike horns;
- `music`: a music bed with a bass line at 55 and 110 Hz (under the horns' range) and
  chords over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.ffmpeg import run_ffmpeg, segment_from_pcm
from controller.samples import speech

RATE = 48000
WARNING = (
    "Thông báo khẩn. Nước sông Hậu đang lên nhanh, lúc 14 giờ 30 đạt 2 mét 1. "
    "Đề nghị bà con đưa người và tài sản đến nơi an toàn."
)
SENTENCES = (
    "Ủy ban nhân dân xã thông báo lịch tiêm chủng cho trẻ em vào sáng thứ bảy.",
    "Bản tin nông nghiệp: bà con chú ý phun thuốc phòng rầy nâu cho lúa đông xuân.",
    "Gió mạnh cấp 8, giật cấp 10; tàu thuyền không ra khơi.",
)
#: The sample peaks of the three sentences of `varying`.
VARYING_PEAKS = (-1.0, -15.0, -6.0)
PEAKS = (0.0, -18.0, -30.0, -40.0, -48.0)


@dataclass(frozen=True)
class Corpus:
    folder: Path

    def speech(self, peak_dbfs: float) -> Path:
        return self.folder / f"speech-peak{peak_dbfs:g}dBFS.wav"

    @property
    def central(self) -> Path:
        return self.folder / "central.wav"

    @property
    def southern(self) -> Path:
        return self.folder / "southern.wav"

    @property
    def varying(self) -> Path:
        return self.folder / "varying.wav"

    @property
    def shouted(self) -> Path:
        return self.folder / "shouted.wav"

    @property
    def street(self) -> Path:
        return self.folder / "street.wav"

    @property
    def music(self) -> Path:
        return self.folder / "music.wav"


def _ffmpeg(*args: str) -> None:
    run_ffmpeg(list(args), what="making the test corpus")


def _at_peak(source: Path, peak_dbfs: float, out: Path) -> Path:
    """source, as a mono 48 kHz WAV whose highest sample is at peak_dbfs."""
    _ffmpeg("-i", str(source), "-ac", "1", "-ar", str(RATE), "-f", "s16le", "-y", f"{out}.pcm")
    raw = Path(f"{out}.pcm")
    segment = segment_from_pcm(raw.read_bytes(), RATE)
    raw.unlink()
    scaled = segment.apply_gain(peak_dbfs - segment.max_dBFS)
    with out.open("wb") as f:
        scaled.export(f, format="wav")
    return out


def make(folder: Path) -> Corpus:
    """Make the whole corpus in folder (espeak-ng and ffmpeg must be installed)."""
    corpus = Corpus(folder)
    spoken = folder / "spoken.wav"
    speech(spoken, WARNING)
    for peak in PEAKS:
        _at_peak(spoken, peak, corpus.speech(peak))
    for voice, out in (("vi-vn-x-central", corpus.central), ("vi-vn-x-south", corpus.southern)):
        said = folder / f"{voice}.wav"
        speech(said, WARNING, voice=voice)
        _at_peak(said, -6.0, out)

    parts = []
    for n, (sentence, peak) in enumerate(zip(SENTENCES, VARYING_PEAKS, strict=True)):
        said = folder / f"sentence-{n}.wav"
        speech(said, sentence)
        parts.append(_at_peak(said, peak, folder / f"sentence-{n}-at-peak.wav"))
    inputs = [arg for part in parts for arg in ("-i", str(part))]
    _ffmpeg(*inputs, "-filter_complex", f"concat=n={len(parts)}:v=0:a=1", "-c:a", "pcm_s16le",
            "-y", str(corpus.varying))

    # 18 dB too hot: a fast compressor, then the 16-bit converter clips what is left over.
    _ffmpeg("-i", str(corpus.speech(0.0)), "-af",
            "volume=18dB,acompressor=threshold=-10dB:ratio=8:attack=1:release=50:makeup=2",
            "-c:a", "pcm_s16le", "-y", str(corpus.shouted))

    seconds = 12
    horns = "+".join(
        f"0.25*sin(2*PI*{f}*t)*between(t,{at},{at + 0.35})"
        for at, f in ((2.0, 415), (2.5, 415), (7.2, 523), (9.8, 466))
    )
    _ffmpeg(
        "-f", "lavfi", "-i", f"anoisesrc=color=brown:amplitude=0.35:seed=7:r={RATE}:d={seconds}",
        "-f", "lavfi", "-i", f"anoisesrc=color=pink:amplitude=0.05:seed=8:r={RATE}:d={seconds}",
        "-f", "lavfi", "-i",
        f"aevalsrc='0.12*sin(2*PI*70*t)*(0.7+0.3*sin(2*PI*0.4*t))+{horns}':s={RATE}:d={seconds}",
        "-i", str(corpus.speech(-18.0)),
        "-filter_complex", "[3]adelay=1500:all=1[said];[0][1][2][said]amix=inputs=4:normalize=0"
        ":duration=first",
        "-c:a", "pcm_s16le", "-y", str(corpus.street),
    )  # fmt: skip

    bass = "0.3*sin(2*PI*55*t)*gt(mod(t,1),0.08)+0.18*sin(2*PI*110*t)*gt(mod(t+0.5,1),0.08)"
    chords = "0.08*(sin(2*PI*261.6*t)+sin(2*PI*329.6*t)+sin(2*PI*392*t)+sin(2*PI*523.3*t))"
    _ffmpeg(
        "-f", "lavfi", "-i", f"aevalsrc='{bass}+{chords}*(0.6+0.4*sin(2*PI*0.5*t))':s={RATE}:d=8",
        "-c:a", "pcm_s16le", "-y", str(corpus.music),
    )  # fmt: skip
    return corpus
