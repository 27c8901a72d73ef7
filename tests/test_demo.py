"""`loa-controller demo --json`, as `make demo` runs it: every cluster accounted for; and
the same against a mosquitto over TLS (`--broker mqtts://... --ca-file`)."""

from __future__ import annotations

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


def test_demo_plays_the_bulletin_everywhere_and_the_urgent_announcement_where_targeted() -> None:
    started = time.monotonic()
    proc = demo("--json")
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_outcomes(proc)
    assert elapsed < 60, f"the demo took {elapsed:.0f} s; it must finish within a minute"


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
