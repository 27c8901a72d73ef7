"""`loa-controller demo --json`, as `make demo` runs it: every cluster accounted for; and
the same against a mosquitto over TLS (`--broker mqtts://... --ca-file`)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import have_mosquitto, require
from tls_support import Authority, tls_mosquitto

ROOT = Path(__file__).resolve().parent.parent


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "demo", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120, cwd=ROOT, check=False,
    )


def test_demo_plays_the_bulletin_everywhere_and_the_urgent_announcement_where_targeted(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'demo.db'}"
    started = time.monotonic()
    proc = demo("--json", "--store", store)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_outcomes(proc)
    assert elapsed < 60, f"the demo took {elapsed:.0f} s; it must finish within a minute"

    # The demo's store kept: the report lists every cluster with the seconds it aired,
    # and the clusters that aired the urgent announcement (emergency level).
    report = subprocess.run(
        [sys.executable, "-m", "controller.cli", "report", "--store", store, "--format", "csv"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=60, cwd=ROOT, check=False,
    )
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader(io.StringIO(report.stdout.removeprefix("\ufeff"))))
    clusters = {r["Mã cụm loa"]: r for r in rows if r["Mã cụm loa"] != "Tổng cộng"}
    outcomes = {c["cluster"]: c for c in json.loads(proc.stdout)["clusters"]}
    assert set(clusters) == set(outcomes)
    assert len(clusters) == 73
    for cid, row in clusters.items():
        assert float(row["Số giây đã phát"]) > 0, row
        urgent = outcomes[cid]["urgent"] == "finished"
        assert row["Đã phát xong mức khẩn cấp"] == ("1" if urgent else "0"), row
        assert row["Bị ngắt"] == ("1" if urgent else "0"), row
    aired_urgent = [c for c, r in clusters.items() if r["Đã phát xong mức khẩn cấp"] == "1"]
    assert len(aired_urgent) == 10
    # a second demo on the same store is refused: its plays would count as sent already
    again = demo("--store", store)
    assert again.returncode == 1
    assert "give the demo a new store file" in again.stderr


def test_the_demo_runs_over_tls_with_a_pinned_ca(tmp_path: Path) -> None:
    require("mosquitto", have_mosquitto(), "apt-get install mosquitto")
    ca = Authority.create(tmp_path / "pki")
    cert, key = ca.issue(tmp_path / "tls")
    broker = tls_mosquitto(tmp_path / "broker", cert, key)
    broker.start()
    try:
        url = f"mqtts://localhost:{broker.port}"
        proc = demo("--json", "--broker", url, "--ca-file", str(ca.cert))
    finally:
        broker.kill()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"using broker {url}, TLS with the CA of {ca.cert}" in proc.stderr
    check_outcomes(proc)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--ca-file", "ca.pem"], "--ca-file needs --broker mqtts://"),
        (["--broker", "mqtt://localhost:1883", "--ca-file", "ca.pem"], "--ca-file is for a TLS"),
        (["--broker", "mqtts://localhost:8883", "--ca-file", "/nonexistent/ca.pem"],
         "cannot read the broker's CA certificate /nonexistent/ca.pem"),
    ],
)  # fmt: skip
def test_a_ca_file_the_demo_cannot_use_is_refused_at_once(args: list[str], said: str) -> None:
    proc = demo(*args)
    assert proc.returncode == 1
    assert said in proc.stderr
    assert "simulated agents" not in proc.stderr


def check_outcomes(proc: subprocess.CompletedProcess[str]) -> None:
    result = json.loads(proc.stdout)
    clusters = result["clusters"]
    assert len(clusters) == 73
    assert len({c["commune"] for c in clusters}) == 40
    bulletin = Counter(c["bulletin"] for c in clusters)
    urgent = Counter(c["urgent"] for c in clusters)
    assert set(bulletin) <= {"finished", "interrupted"}, bulletin
    assert set(urgent) <= {"finished", "not-targeted"}, urgent
    assert urgent["finished"] >= 1
    # The urgent announcement preempted the bulletin exactly where it was sent.
    for c in clusters:
        assert (c["bulletin"] == "interrupted") == (c["urgent"] == "finished"), c
    assert "73 simulated agents" in proc.stderr
