"""`loa-controller demo --json`, as `make demo` runs it: every cluster accounted for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_plays_the_bulletin_everywhere_and_the_urgent_announcement_where_targeted() -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "controller.cli", "demo", "--json"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120, cwd=ROOT, check=False,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
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
    assert elapsed < 60, f"the demo took {elapsed:.0f} s; it must finish within a minute"
    assert "73 simulated agents" in proc.stderr
