"""Voices and engines (controller.tts, controller.voices): espeak-ng's three Vietnamese
voices with their speed and pitch, the `command` engine with real external programs
made here, the voice of each fleet node, and the Hậu Giang example speaking Southern.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest
from conftest import require

from controller.config import SpeechConfig, VoiceConfig, load_controller_config
from controller.fleet import load_fleet
from controller.tts import (
    CommandEngine,
    Speech,
    TtsUnavailableError,
    UnknownVoiceError,
    speech_for,
)
from controller.voices import Voice
from protocol.config_errors import ConfigError
from protocol.l10n import say

ROOT = Path(__file__).resolve().parent.parent
TEXT = "Lúc 14h30, mực nước 1,5 m."
WORDS = "Lúc mười bốn giờ ba mươi phút, mực nước một phẩy năm mét."


@pytest.fixture
def espeak() -> str:
    found = shutil.which("espeak-ng")
    require("espeak-ng", found is not None, "apt-get install espeak-ng")
    assert found is not None
    return found


def espeak_wav(exe: str, out: Path, voice: str, words: str, speed: int = 150,
               pitch: int = 50) -> bytes:
    """What espeak-ng itself makes of these words with this voice, speed and pitch."""
    subprocess.run(
        [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), "--stdin"],
        input=words.encode(), check=True, capture_output=True, timeout=60,
    )
    return out.read_bytes()


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + dedent(body).lstrip("\n"), encoding="utf-8")
    path.chmod(0o755)
    return path


# --- espeak-ng --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "espeak_voice"),
    [("mien-bac", "vi"), ("mien-trung", "vi-vn-x-central"), ("mien-nam", "vi-vn-x-south")],
)
def test_each_built_in_voice_is_espeak_ngs_own(
    tmp_path: Path, espeak: str, name: str, espeak_voice: str
) -> None:
    speech = Speech()
    spoken = speech.speak(TEXT, tmp_path / "said.wav", voice=name).read_bytes()
    assert spoken == espeak_wav(espeak, tmp_path / "own.wav", espeak_voice, WORDS)


def test_the_three_regions_sound_different(tmp_path: Path, espeak: str) -> None:
    speech = Speech()
    heard = {
        speech.speak(TEXT, tmp_path / f"{v}.wav", voice=v).read_bytes()
        for v in ("mien-bac", "mien-trung", "mien-nam")
    }
    assert len(heard) == 3


def test_speed_and_pitch_of_a_configured_voice(tmp_path: Path, espeak: str) -> None:
    config = SpeechConfig(voices={
        "mien-nam-cham": VoiceConfig(voice="vi-vn-x-south", speed=110, pitch=30),
    })
    speech = speech_for(config)
    slow = speech.speak(TEXT, tmp_path / "slow.wav", voice="mien-nam-cham")
    assert slow.read_bytes() == espeak_wav(
        espeak, tmp_path / "own.wav", "vi-vn-x-south", WORDS, speed=110, pitch=30
    )
    usual = speech.speak(TEXT, tmp_path / "usual.wav", voice="mien-nam")
    assert slow.stat().st_size > usual.stat().st_size  # slower: longer


def test_an_unknown_voice_says_which_there_are() -> None:
    speech = Speech()
    with pytest.raises(UnknownVoiceError, match="did you mean 'mien-nam'") as raised:
        speech.voice("mien-nan")
    assert "có phải ý bạn là 'mien-nam'" in say(raised.value, "vi")  # the reader's language
    assert "mien-bac, mien-nam, mien-trung" in (speech.available("giong-la") or "")


# --- the command engine ------------------------------------------------------------------------


def test_a_command_voice_runs_a_real_program_that_writes_the_wav(
    tmp_path: Path, espeak: str
) -> None:
    heard = tmp_path / "heard.txt"
    program = script(tmp_path, "noi.sh", f"""
        # A stand-in for a vendor's engine: it keeps what it was given, and speaks it.
        cat > {heard}
        echo "$2 $3" > {tmp_path / "args.txt"}
        exec {espeak} -v "$2" -s "$3" -w "$1" < {heard}
    """)
    speech = speech_for(SpeechConfig(voices={
        "giong-tinh": VoiceConfig(
            engine="command", voice="vi-vn-x-south", speed=140,
            command=[str(program), "{out}", "{voice}", "{speed}"],
        ),
    }))
    assert speech.available("giong-tinh") is None
    out = speech.speak(TEXT, tmp_path / "said.wav", voice="giong-tinh")
    assert heard.read_text(encoding="utf-8") == WORDS  # the words, not the text
    assert (tmp_path / "args.txt").read_text().strip() == "vi-vn-x-south 140"
    assert out.read_bytes() == espeak_wav(espeak, tmp_path / "own.wav", "vi-vn-x-south",
                                          WORDS, speed=140)


def test_a_command_voice_may_write_the_wav_to_its_output(tmp_path: Path, espeak: str) -> None:
    program = script(tmp_path, "noi.sh", f"exec {espeak} -v vi --stdout\n")
    voice = Voice("ra-stdout", engine="command", command=(str(program),))
    out = tmp_path / "said.wav"
    CommandEngine().synthesise(WORDS, voice, out)
    assert out.read_bytes()[:4] == b"RIFF"
    assert out.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("body", "timeout_s", "message"),
    [
        ("echo 'model not found: /opt/tts/nu.onnx' >&2\nexit 3\n", 30,
         "failed with status 3: model not found: /opt/tts/nu.onnx"),
        ("echo 'not a wav' > \"$1\"\n", 30, "wrote no speech in WAV form"),
        ("exit 0\n", 30, "wrote no WAV file"),
        ("exec sleep 30\n", 0.5, "did not finish within 0.5 s"),
    ],
)
def test_a_command_that_fails_says_how(
    tmp_path: Path, body: str, timeout_s: float, message: str
) -> None:
    program = script(tmp_path, "hong.sh", body)
    voice = Voice("hong", engine="command", command=(str(program), "{out}"), timeout_s=timeout_s)
    with pytest.raises(TtsUnavailableError, match=message):
        CommandEngine().synthesise(WORDS, voice, tmp_path / "said.wav")


def test_a_command_that_is_not_there_is_reported_before_speaking(tmp_path: Path) -> None:
    engine = CommandEngine()
    gone = Voice("gone", engine="command", command=(str(tmp_path / "khong-co"), "{out}"))
    assert "is not an executable file" in str(engine.missing(gone) or "")
    unknown = Voice("unknown", engine="command", command=("khong-co-chuong-trinh-nay",))
    assert "is not on the PATH" in str(engine.missing(unknown) or "")
    said = engine.missing(unknown)
    assert said is not None
    assert "không có trong PATH" in said.in_("vi")


def test_a_command_voice_in_the_config_is_checked_where_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "controller.yaml"
    path.write_text(dedent("""
        fleet: fleet.yaml
        playlists: [playlists]
        private_key: controller.key
        content_dir: content
        speech:
          voices:
            giong-tinh:
              engine: command
            Giọng-Nam: {voice: vi-vn-x-south}
            cham: {engine: command, command: [/opt/tts, "{text}"]}
          numbers: {zero_tens: le}
        web:
          users_file: users.yaml
          work_dir: web
          tts_voice: vi
    """).lstrip(), encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_controller_config(path)
    report = str(exc.value)
    assert f"{path}:8:7: giong-tinh: engine: command needs `command:" in report
    assert f"{path}:9:5: Giọng-Nam: voice name 'Giọng-Nam': use 1-64 lower-case" in report
    assert f"{path}:10:11: cham: command: {{text}} is not replaced" in report
    assert (
        f"{path}:11:24: zero_tens: the text 'le' is not allowed; write one of 'linh' or 'lẻ'"
    ) in report
    assert f"{path}:15:14: tts_voice: tts_voice has moved" in report


# --- the fleet's voices ------------------------------------------------------------------------


def test_the_hau_giang_example_speaks_with_the_southern_voice(
    tmp_path: Path, espeak: str
) -> None:
    """`loa-controller say` in the repository, as a person tries it: the example fleet's
    province names mien-nam, so every commune of it speaks espeak-ng's vi-vn-x-south."""
    fleet = load_fleet(ROOT / "config" / "fleet.yaml")
    assert fleet.node_voice(fleet.province.id) == "mien-nam"
    assert {fleet.node_voice(c) for c in fleet.clusters} == {"mien-nam"}
    assert not (ROOT / "config" / "controller.yaml").exists()
    out = tmp_path / "thu.wav"
    exe = Path(sys.executable).parent / "loa-controller"
    done = subprocess.run(
        [str(exe), "say", TEXT, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "mien-nam: espeak-ng vi-vn-x-south" in done.stderr
    assert out.read_bytes() == espeak_wav(espeak, tmp_path / "own.wav", "vi-vn-x-south", WORDS)
    # The same after 1 July 2025 (Cần Thơ).
    merged = load_fleet(ROOT / "config" / "fleet-2025-07-01.yaml")
    assert merged.voice_for(sorted(merged.clusters)) == "mien-nam"


FLEET = """\
province:
  id: tinh-t
  name: Tỉnh Thử
  voice: mien-nam
  districts:
    - id: huyen-x
      name: Huyện Xuân
      voice: mien-trung
      communes:
        - id: xa-a
          name: Xã An
          clusters: [{id: a-01, name: Chợ An}]
        - id: xa-b
          name: Xã Bình
          voice: mien-bac
          clusters: [{id: b-01, name: Chợ Bình}]
        - id: xa-c
          name: Xã Cát
          clusters: [{id: c-01, name: Chợ Cát}]
  communes:
    - id: xa-d
      name: Xã Đông
      clusters: [{id: d-01, name: Chợ Đông}]
"""


@pytest.mark.parametrize(
    ("clusters", "voice"),
    [
        (["a-01"], "mien-trung"),  # the district's
        (["b-01"], "mien-bac"),  # its commune's own
        (["a-01", "c-01"], "mien-trung"),  # the same voice
        (["a-01", "b-01"], "mien-trung"),  # two voices: their common ancestor, the district
        (["b-01", "d-01"], "mien-nam"),  # across districts: the province
        (["d-01"], "mien-nam"),
    ],
)
def test_the_voice_of_a_set_of_clusters(tmp_path: Path, clusters: list[str], voice: str) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET, encoding="utf-8")
    assert load_fleet(path).voice_for(clusters) == voice


def test_a_fleet_naming_an_unknown_voice_is_refused_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET.replace("voice: mien-bac", "voice: mien-bak"), encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_fleet(path)
    assert str(exc.value).startswith(f"{path}:15:18: no voice 'mien-bak': did you mean 'mien-bac'?")
    # A voice of the config is known once the config's voices are given.
    path.write_text(FLEET.replace("voice: mien-bac", "voice: giong-tinh"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"define it under speech\.voices"):
        load_fleet(path)
    assert load_fleet(path, [*Speech().voices, "giong-tinh"]).node_voice("b-01") == "giong-tinh"
