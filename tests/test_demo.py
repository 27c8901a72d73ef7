"""`loa-controller demo --json`, as `make demo` runs it: every cluster accounted for; and
the same against a mosquitto over TLS (`--broker mqtts://... --ca-file`)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import MosquittoBroker, free_port, have_mosquitto, require
from fleet_rig import FleetRig
from paho.mqtt.enums import CallbackAPIVersion
from tls_support import Authority, tls_mosquitto

from controller.store.clusters import ClusterRow

ROOT = Path(__file__).resolve().parent.parent
#: A cluster of the demo's fleet (config/fleet.yaml), run here as a real one.
SHARED_CLUSTER = "kinh-cung-01"


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


def retained(broker: MosquittoBroker) -> dict[str, bytes]:
    """Every retained message on the broker: what a new subscription to # is handed
    before a probe published after it comes back."""
    got: dict[str, bytes] = {}
    back = threading.Event()
    probe = f"probe/{os.getpid()}/{time.monotonic_ns()}"

    def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        if msg.topic == probe:
            back.set()
        elif msg.retain and msg.payload:
            got[msg.topic] = bytes(msg.payload)

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"snapshot-{os.getpid()}")
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.subscribe("#", qos=1)
        deadline = time.monotonic() + 10
        while not back.wait(0.3):
            assert time.monotonic() < deadline, "the probe did not come back"
            client.publish(probe, b"x", qos=1)
    finally:
        client.loop_stop()
        client.disconnect()
    return got


def test_the_demo_on_a_broker_a_real_fleet_uses_leaves_it_untouched(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    """A real controller and a real agent process (a cluster id the demo's fleet has too,
    with the production client ids) on mosquitto; `loa-controller demo --broker` on the
    same broker: the real store, the real sessions and the real retained messages are
    as they were, and the demo leaves no retained message of its own."""
    rig = FleetRig(tmp_path / "real", mosquitto_broker, [SHARED_CLUSTER])
    try:
        ctl = rig.start_controller()
        rig.start_agent(SHARED_CLUSTER)
        rig.wait_online(SHARED_CLUSTER)
        before = retained(mosquitto_broker)
        assert f"loa/v1/cluster/{SHARED_CLUSTER}/membership" in before
        assert f"loa/v1/cluster/{SHARED_CLUSTER}/state" in before
        events, rows = ctl.store.events.count(), summary(ctl.store.clusters.fleet_rows())

        proc = demo("--json", "--broker", mosquitto_broker.url)
        assert proc.returncode == 0, proc.stderr[-3000:]
        check_outcomes(proc)
        assert "removed the demo's" in proc.stderr

        after = retained(mosquitto_broker)
        assert after == before  # theirs untouched, none of the demo's left
        assert ctl.broker_state.connections == 1  # never lost its session to the demo
        assert ctl.link.connected
        assert getattr(ctl.link, "takeovers", 0) == 0
        assert "lost connection" not in rig.log(SHARED_CLUSTER)
        assert ctl.store.events.count() == events  # nothing of the demo's stored
        assert summary(ctl.store.clusters.fleet_rows()) == rows  # last_seen moves on
        assert [r.id for r in ctl.store.clusters.fleet_rows()] == [SHARED_CLUSTER]
        assert ctl.intake.stats.unknown == 0  # the demo's 73 clusters were never heard
    finally:
        rig.close()


def summary(rows: list[ClusterRow]) -> list[ClusterRow]:
    return [dataclasses.replace(r, last_seen=None) for r in rows]


def test_a_demo_that_cannot_reach_its_broker_says_so_in_one_line(tmp_path: Path) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    proc = demo("--broker", url)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"demo failed: cannot connect to broker {url}: "), proc.stderr
    assert "Traceback" not in proc.stderr
    proc = demo("--json", "--broker", url)
    assert proc.returncode == 1
    answer = json.loads(proc.stdout)
    assert answer["ok"] is False
    assert answer["reason"].startswith(f"cannot connect to broker {url}: ")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_demo_still_removes_its_retained_messages(
    mosquitto_broker: MosquittoBroker, how: signal.Signals
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "demo", "--broker", mosquitto_broker.url],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert proc.stderr is not None
        said = []
        for line in proc.stderr:  # until the controller has published the memberships
            said.append(line)
            if "waiting for it to start" in line:
                break
        else:
            raise AssertionError("".join(said))
        assert any(t.startswith("loa-demo-") for t in retained(mosquitto_broker))
        proc.send_signal(how)
        _out, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, rest
    assert "demo interrupted" in rest
    assert "Traceback" not in rest
    assert retained(mosquitto_broker) == {}  # nothing of the demo's left


def make_dry_run(target: str, venv: Path) -> list[str]:
    """The pip installs `make TARGET` would run in a new virtual environment (make -n)."""
    require("make", shutil.which("make") is not None, "apt-get install make")
    done = subprocess.run(["make", "-n", "-B", target, f"VENV={venv}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    return [line for line in done.stdout.splitlines() if " -m pip install " in line
            and "--upgrade pip" not in line]


def test_make_demo_installs_the_controller_only_and_make_test_and_lint_the_tools(
    tmp_path: Path,
) -> None:
    venv = tmp_path / "venv"
    assert [line.split()[-1] for line in make_dry_run("demo", venv)] == ["'.[controller]'"]
    for target in ("test", "lint", "venv"):
        installs = [line.split()[-1] for line in make_dry_run(target, venv)]
        assert installs[-1] == "'.[controller,test,dev]'", (target, installs)
