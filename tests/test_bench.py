"""scripts/bench.py in miniature: each mode runs end to end on a small fleet.

These check that the benchmarks run, clean up and report what they promise (keys, sane
values, the results file); the figures themselves are scripts/bench.py's business at
full size, never asserted here. The emulated 4G link (scripts/link_relay.py) is checked
on its own in test_link_relay.py.
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


@pytest.fixture
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


@pytest.mark.usefixtures("_components")
def test_live_every_agent_listens_on_one_timeline_beside_the_raw_broker() -> None:
    r = bench("live", "--agents", "10", "--seconds", "5", "--per-process", "5")
    check_common(r, "live")
    assert r["agents"] == 10
    assert r["processes"] == 2
    assert r["listening"] == 10
    assert r["lost_frames_max"] == 0
    # The agents hand each packet over at capture + the session's delay (less the
    # look-ahead), all at the same instants.
    assert r["delay_ms"] / 1000 < r["latency_p50_s"] <= r["latency_p99_s"] < 2.0
    assert r["spread_p95_ms"] < 100
    assert 1.0 < r["wire_ratio"] < 1.3
    assert r["raw_fanout_s"] is not None


@pytest.mark.usefixtures("_components")
def test_spread_every_agent_starts_the_scheduled_play_beside_plain_timers(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n", encoding="utf-8")
    r = bench("spread", "--agents", "20", "--trials", "1", "--per-process", "10",
              "--lead-s", "4", "--alone", "10", "--doc", str(doc))  # fmt: skip
    check_common(r, "spread")
    assert (r["agents"], r["processes"], r["trials"]) == (20, 2, 1)
    assert r["started"] == 20
    assert r["delivered_before_start"] == 20
    assert r["raw_woke"] == 20
    # Every agent started at or after its start time, never seconds late, and the
    # spread's ranks are in order; the plain timers woke at their instant too.
    assert 0 <= r["late_min_ms"] <= r["late_p50_ms"] <= r["late_max_ms"] < 2000
    assert 0 <= r["spread_p50_ms"] <= r["spread_p95_ms"] <= r["spread_max_ms"] <= r["range_ms"]
    assert 0 <= r["raw_late_min_ms"] <= r["raw_late_max_ms"] < 2000
    assert r["cpu_per_start_ms"] >= 0  # CPU time is read in ticks of 10 ms
    assert r["alone"] == 10
    assert 0 <= r["alone_late_min_ms"] <= r["alone_late_max_ms"] < 2000
    assert [t["what"] for t in r["targets"]] == [
        "agents started", "start spread p95 across agents"
    ]
    text = doc.read_text(encoding="utf-8")
    begin = text.index("<!-- bench:spread:begin -->")
    assert "plain timers" in text[begin:]
    assert ("**PASS**" in text[begin:]) or ("**FAIL**" in text[begin:])


@pytest.mark.usefixtures("_components")
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


@pytest.mark.usefixtures("_components")
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
    assert r["store_s"] > 0
    assert r["store_cpu_s"] >= 0
    # On loopback the delivery time is a figure, not a target.
    assert r["deliver_ratio"] > 0
    assert [t["what"] for t in r["targets"]] == [
        "agents holding the bulletin", "bytes on the wire per agent", "repeat bytes per agent"
    ]  # fmt: skip
    assert "link" not in r
    text = doc.read_text(encoding="utf-8")
    assert "Storing alone, without the network" in text
    assert "figures, not a target" in text
    assert "<!-- bench:delivery:begin -->" in text
    assert "<!-- bench:delivery:end -->" in text
    assert "Not run yet: `python scripts/bench.py urgent`" in text
    assert ("**PASS**" in text) or ("**FAIL**" in text)


@pytest.mark.usefixtures("_components")
def test_intake_stores_and_acknowledges_signed_events_and_writes_its_section(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n", encoding="utf-8")
    r = bench("intake", "--clusters", "20", "--events", "300", "--trials", "1",
              "--doc", str(doc))  # fmt: skip
    check_common(r, "intake")
    assert (r["store"], r["clusters"], r["events_per_trial"]) == ("sqlite", 20, 300)
    for shape in ("1", "3"):
        [trial] = r["shapes"][shape]["trials"]
        assert trial["events"] == 300
        assert trial["acked"] == trial["messages"]  # every message acknowledged
        assert 0 < trial["p50_ack_s"] <= trial["p99_ack_s"]
        assert trial["events_per_cpu_s"] > 0
        assert trial["raw_messages_per_s"] > 0
    assert r["events_per_cpu_s"] == r["shapes"]["1"]["events_per_cpu_s"]
    assert "<!-- bench:intake:begin -->" in doc.read_text(encoding="utf-8")


@pytest.mark.usefixtures("_components")
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


@pytest.mark.usefixtures("_components")
def test_urgent_over_4g_goes_through_the_link_and_writes_its_own_section(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    loopback = "<!-- bench:urgent:begin -->\nthe loopback figures, kept\n<!-- bench:urgent:end -->"
    doc.write_text(f"# Benchmarks\n\n{loopback}\n\n<!-- bench:delivery:begin -->\n"
                   "<!-- bench:delivery:end -->\n", encoding="utf-8")  # fmt: skip
    r = bench("urgent", "--link", "4g", "--agents", "5", "--trials", "1", "--doc", str(doc))
    check_common(r, "urgent")
    assert r["link"] == "4g"
    assert r["link_params"] == {
        "delay_s": 0.1, "jitter_s": 0.05, "loss": 0.01, "rto_s": 0.2, "mss": 1448, "seed": 1,
        "down_kbit": 0.0, "up_kbit": 0.0, "burst_bytes": 14480, "window_bytes": 262144,
        "quantum_s": 0.05,
    }  # fmt: skip
    assert r["played"] == 5
    # The agents and the raw subscribers (5 each) connected through the relay, and what
    # reached them was delayed by at least the link's shortest one-way delay.
    assert r["link_totals"]["connections"] == 10
    assert r["link_totals"]["down"]["bytes"] > 2 * 5 * r["encoded_bytes"]
    assert r["link_totals"]["down"]["packets"] >= r["link_totals"]["down"]["lost"] >= 0
    assert 0.05 <= r["p50_s"] <= r["max_s"] < 30
    assert 0.05 <= r["raw_p50_s"] <= r["raw_fanout_s"] < 30
    trial = r["per_trial"][0]["link"]
    assert trial["loa"]["down"]["bytes"] > 5 * r["encoded_bytes"]
    assert r["link_lost_loa"] == trial["loa"]["up"]["lost"] + trial["loa"]["down"]["lost"]
    assert r["cpu"]["loa"]["link_relay"]["user_s"] >= 0
    assert [t["what"] for t in r["targets"]] == ["agents playing", "max trigger → playing"]
    assert r["targets"][1]["limit"] == 3.0
    text = doc.read_text(encoding="utf-8")
    assert loopback in text  # the loopback section is left as it was
    begin = text.index("<!-- bench:urgent-4g:begin -->")
    assert text.index("<!-- bench:urgent:end -->") < begin < text.index("bench:delivery:begin")
    assert "over an emulated 4G link" in text[begin:]
    assert "**one way**" in text[begin:]


@pytest.mark.usefixtures("_components")
def test_delivery_over_4g_limits_each_connection_and_judges_against_the_raw_broker(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "benchmarks.md"
    loopback = "<!-- bench:delivery:begin -->\nloopback, kept\n<!-- bench:delivery:end -->"
    doc.write_text(f"# Benchmarks\n\n{loopback}\n\n<!-- bench:agent:begin -->\n"
                   "<!-- bench:agent:end -->\n", encoding="utf-8")  # fmt: skip
    # 400 kbit/s down: 50,000 bytes a second for each connection.
    r = bench("delivery", "--link", "4g", "--agents", "5", "--minutes", "0.2", "--trials", "1",
              "--link-down-kbit", "400", "--doc", str(doc))  # fmt: skip
    check_common(r, "delivery")
    assert r["link"] == "4g"
    assert r["link_params"]["down_kbit"] == 400
    assert r["link_params"]["up_kbit"] == 500  # the default
    assert r["delivered"] == r["repeat_delivered"] == 5
    # Agents and raw subscribers (5 each) came through the relay, and neither side had the
    # bulletin sooner than the downlink could carry it.
    assert r["link_totals"]["connections"] == 10
    burst = r["link_params"]["burst_bytes"]
    line = 8 * (r["wire_bytes_per_agent"] - burst) / 400_000 + 0.05  # the shortest delay
    assert r["line_s"] == pytest.approx(line, abs=2e-3)
    assert r["line_s"] < r["link_worst_s"]
    assert r["line_s"] < r["raw_fanout_s"]
    assert r["line_s"] < r["deliver_s"]
    assert r["link_window"]["loa"]["down"]["bytes"] >= 5 * r["encoded_bytes"]
    assert r["link_window"]["raw"]["down"]["bytes"] >= 5 * r["encoded_bytes"]
    assert r["relay_busy_pct"]["loa"] is not None
    assert r["relay_busy_pct"]["loa"] >= 0
    assert r["relay_ms_per_mb"] is not None
    assert r["relay_ms_per_mb"] >= 0
    assert r["cpu"]["raw"]["link_relay"]["user_s"] >= 0
    ratio_target = next(t for t in r["targets"] if t["what"] == "deliver_s / raw_fanout_s")
    assert ratio_target["limit"] == 1.25
    text = doc.read_text(encoding="utf-8")
    assert loopback in text  # the loopback section is left as it was
    begin = text.index("<!-- bench:delivery-4g:begin -->")
    assert text.index("<!-- bench:delivery:end -->") < begin < text.index("bench:agent:begin")
    assert "over an emulated 4G link" in text[begin:]
    assert "400 kbit/s towards the agent" in text[begin:]
    assert "What the emulated link itself cost" in text[begin:]


def test_make_bench_writes_every_section_4g_included(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`bench.py` with no mode (make bench) runs each mode at its defaults and the urgent
    and delivery benches over the emulated 4G link, each with a section of its own; the
    worst status is its own."""
    import bench
    import bench_report

    ran: list[tuple[str, str | None]] = []
    commands: list[str] = []

    def run_mode(args: Any, argv: list[str]) -> int:
        ran.append((args.mode, getattr(args, "link", None)))
        commands.append(bench_report.command_line([*argv, "--json"]))
        return 3 if args.mode == "delivery" else 0

    monkeypatch.setattr(bench, "run_mode", run_mode)
    assert bench.main([]) == 3
    assert ran == [
        ("urgent", "loopback"), ("urgent", "4g"), ("delivery", "loopback"), ("delivery", "4g"),
        ("agent", None), ("intake", None), ("live", "loopback"), ("live", "4g"),
        ("spread", None),
    ]  # fmt: skip
    assert commands == [  # what each section says made it
        "python scripts/bench.py urgent", "python scripts/bench.py urgent --link 4g",
        "python scripts/bench.py delivery", "python scripts/bench.py delivery --link 4g",
        "python scripts/bench.py agent", "python scripts/bench.py intake",
        "python scripts/bench.py live", "python scripts/bench.py live --link 4g",
        "python scripts/bench.py spread",
    ]  # fmt: skip
    parser = bench.build_parser()
    sections = {bench.section(parser.parse_args(argv)) for argv in bench.EVERY_SECTION}
    assert sections == {"urgent", "urgent-4g", "delivery", "delivery-4g", "agent", "intake",
                        "live", "live-4g", "spread"}
    # Delivery over 4G limits each connection's bandwidth by default; urgent does not.
    delivery = bench.link_params(parser.parse_args(["delivery", "--link", "4g"]))
    assert delivery is not None
    assert (delivery.down_kbit, delivery.up_kbit) == (2000, 500)
    urgent = bench.link_params(parser.parse_args(["urgent", "--link", "4g"]))
    assert urgent is not None
    assert (urgent.down_kbit, urgent.up_kbit) == (0, 0)


def test_storing_alone_writes_every_copy_whole_and_never_over_an_earlier_one(
    tmp_path: Path,
) -> None:
    import bench_fleet

    content = tmp_path / "bulletin.opus"
    content.write_bytes(bytes(range(256)) * 1000 + b"tail")
    folder = tmp_path / "store" / "one"
    wall, cpu = bench_fleet.store_copies(content, 65536, folder, ["ph-001", "ph-002"])
    assert wall > 0
    assert cpu >= 0
    assert sorted(p.name for p in folder.iterdir()) == ["ph-001", "ph-002"]
    assert all(p.read_bytes() == content.read_bytes() for p in folder.iterdir())
    with pytest.raises(FileExistsError):
        bench_fleet.store_copies(content, 65536, folder, ["ph-003"])


def test_fleets_take_one_process_per_core_and_the_open_files_they_need(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import resource

    import bench_fleet

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    assert bench_fleet.default_per_process(1000) == 500  # two processes on two cores
    assert bench_fleet.default_per_process(5) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert bench_fleet.default_per_process(1000) == 16
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert bench_fleet.default_per_process(1000) == bench_fleet.MAX_PER_PROCESS
    with pytest.raises(ValueError, match="--per-process: 1 to 500"):
        bench_fleet.check_per_process(501)
    bench_fleet.check_per_process(None)

    limits: dict[str, tuple[int, int]] = {"now": (1024, 4096)}
    monkeypatch.setattr(resource, "getrlimit", lambda _what: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda _what, new: limits.update(now=new))
    bench_fleet.allow_open_files(500)  # 64 + 4 per member
    assert limits["now"] == (2064, 4096)
    limits["now"] = (1024, 1500)
    with pytest.raises(ValueError, match=r"allows 1500 \(ulimit -Hn\): use --per-process 359"):
        bench_fleet.allow_open_files(500)
