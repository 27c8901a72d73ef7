"""scripts/fuzz.py in miniature: each mode runs end to end with a few payloads.

These check that the harness runs a real agent or controller process, cleans up, and
reports what it promises (every figure, the targets, its own section of the results
file); the figures at full size are the harness's business (docs/benchmarks.md), but a
small run must already meet the targets that do not depend on the machine's speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import have_mosquitto, require

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "scripts" / "fuzz.py"
FIGURES = ("sent", "crashes", "plays_unsigned", "relay_switches", "rss_growth_mb",
           "valid_after_s")  # fmt: skip

pytestmark = pytest.mark.slow


def fuzz(*args: str) -> tuple[dict[str, Any], str]:
    require("mosquitto", have_mosquitto(), "apt-get install mosquitto")
    proc = subprocess.run(
        [sys.executable, str(FUZZ), *args, "--json"],
        capture_output=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result, proc.stderr.decode()


def check(result: dict[str, Any], mode: str, sent: int) -> None:
    assert result["fuzz"] == mode
    assert all(key in result for key in FIGURES)
    assert result["sent"] == sent
    assert result["crashes"] == 0
    assert result["tracebacks"] == 0
    assert result["valid_after_s"] is not None  # the valid emergency (or event) got through
    assert isinstance(result["rss_growth_mb"], float)
    assert isinstance(result["pass"], bool)
    assert {t["what"] for t in result["targets"]} >= {"crashes", "RSS growth"}


def test_agent_mode_sends_every_kind_and_nothing_plays_or_switches(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    result, stderr = fuzz("agent", "--count", "600", "--doc", str(doc))
    check(result, "agent", 600)
    assert result["plays_unsigned"] == 0
    assert result["relay_switches"] == 0
    assert result["emergency_relay_on"]  # the relay on the pty does switch, for the real one
    assert set(result["by_kind"]) >= {"chunk-forged", "command-unsigned", "command-tampered"}
    assert "[fuzz" in stderr  # progress on stderr, the JSON alone on stdout
    text = doc.read_text(encoding="utf-8")
    assert "<!-- bench:fuzz-agent:begin -->" in text
    assert "python scripts/fuzz.py agent --count 600" in text
    assert "Not run yet: `python scripts/fuzz.py intake`" in text  # the others: placeholders


def test_flood_mode_times_an_emergency_sent_through_the_flood() -> None:
    result, _ = fuzz("flood", "--count", "3000", "--flood-s", "1")
    check(result, "flood", 3000)
    assert result["plays_unsigned"] == 0
    assert result["relay_switches"] == 0
    assert result["agent_cpu_s"] > 0


def test_intake_mode_stores_nothing_out_of_range_and_no_stranger(tmp_path: Path) -> None:
    result, _ = fuzz("intake", "--count", "800", "--warm-up", "500")
    check(result, "intake", 800)
    assert result["plays_unsigned"] is None  # an agent's figure
    assert result["unknown_rows"] == 0
    assert result["out_of_range_stored"] == 0
    assert result["resend_amplification"] < 100
