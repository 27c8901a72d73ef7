"""scripts/bench.py in miniature: each mode runs end to end on a small fleet.

These check that the benchmarks run, clean up and report what they promise (keys, sane
values, the results file); the figures themselves are scripts/bench.py's business at
full size, never asserted here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import have_mosquitto, require

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench.py"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _components() -> None:
    require("mosquitto", have_mosquitto(), "apt-get install mosquitto")
    require("ffmpeg", shutil.which("ffmpeg") is not None, "apt-get install ffmpeg")
    require("opusdec", shutil.which("opusdec") is not None, "apt-get install opus-tools")
    require("aplay", shutil.which("aplay") is not None, "apt-get install alsa-utils")


def bench(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args, "--json", "--time-limit", "90"],
        capture_output=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    assert "[bench" in proc.stderr.decode()  # progress went to stderr, not stdout
    return result


def check_common(result: dict[str, Any], mode: str) -> None:
    assert result["bench"] == mode
    assert isinstance(result["pass"], bool)
    assert result["targets"]
    assert all(isinstance(t["pass"], bool) for t in result["targets"])
    assert result["pass"] == all(t["pass"] for t in result["targets"])
    assert result["machine"]["nproc"] >= 1
    assert result["machine"]["cpu"]
    assert result["broker"]["max_queued_messages"]
    assert result["elapsed_s"] > 0


def test_urgent_every_agent_plays_and_the_raw_baseline_is_measured() -> None:
    r = bench("urgent", "--agents", "20", "--trials", "1", "--per-process", "10")
    check_common(r, "urgent")
    assert r["agents"] == 20
    assert r["processes"] == 2
    assert r["played"] == 20
    assert 0 < r["p50_s"] <= r["p99_s"] <= r["max_s"] < 30
    assert 0 < r["raw_fanout_s"] < 30
    assert r["encoded_bytes"] > 20_000
    assert r["chunks"] >= 1
    assert r["received_p50_s"] <= r["p50_s"]
    assert r["cpu"]["loa"]["agents"]["user_s"] >= 0
    assert len(r["per_trial"]) == 1


def test_delivery_counts_each_agents_bytes_and_writes_its_section(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    r = bench("delivery", "--agents", "20", "--minutes", "0.2", "--doc", str(doc))
    check_common(r, "delivery")
    assert r["agents"] == 20
    assert r["delivered"] == 20
    assert r["repeat_delivered"] == 20
    encoded = r["encoded_bytes"]
    assert encoded > 10_000
    # Every agent received at least the audio plus the MQTT headers and the play command.
    assert encoded < r["wire_bytes_per_agent"] <= r["wire_bytes_per_agent_max"]
    assert r["overhead_pct"] > 0
    assert r["deliver_s"] > 0
    assert r["raw_fanout_s"] > 0
    assert r["repeat_bytes_per_agent"] > 0
    text = doc.read_text(encoding="utf-8")
    assert "<!-- bench:delivery:begin -->" in text
    assert "<!-- bench:delivery:end -->" in text
    assert "Not run yet: `python scripts/bench.py urgent`" in text
    assert ("**PASS**" in text) or ("**FAIL**" in text)


def test_agent_footprint_idle_and_playing(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nkept as it is\n", encoding="utf-8")
    r = bench("agent", "--minutes", "0.2", "--idle-s", "2", "--play-s", "2", "--doc", str(doc))
    check_common(r, "agent")
    assert set(r["outputs"]) == {"null", "opusdec", "ffmpeg"}  # the default always measured
    assert r["field_output"] == "opusdec"
    assert r["played"] is True
    assert 10 < r["idle_rss_mb"] < 500
    assert 0 <= r["idle_cpu_pct"] < 100
    assert r["outputs"]["ffmpeg"]["player_peak_rss_mb"] > 0  # the ffmpeg child was seen
    assert r["outputs"]["opusdec"]["player_peak_rss_mb"] > 0  # opusdec and aplay were seen
    assert r["outputs"]["null"]["player_peak_rss_mb"] == 0
    assert r["playing_peak_rss_mb"] == r["outputs"]["opusdec"]["playing_peak_rss_mb"]
    assert r["playing_peak_rss_mb"] >= r["outputs"]["null"]["idle_rss_mb"]
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nkept as it is\n")
    assert "<!-- bench:agent:begin -->" in text
