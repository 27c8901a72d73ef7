"""Health: the heartbeat's parts (temperature, disk, cache, clock offset), the heartbeat
on a real broker with the amplifier relay on a simulated board, and the controller's
view: the latest heartbeat per cluster, offline within 1.5 × keepalive of an agent
going silent (the broker's Last Will), and when it came back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_support import Keys, command, content, play_body
from conftest import MosquittoBroker, wait_until
from identity_support import body_of
from relay_sim import SimulatedBoard

from controller.config import load_controller_config
from controller.main import Controller, Settings
from device_agent.agent import Agent
from device_agent.config import AgentConfig, OutputConfig
from device_agent.health import ClockOffset, cpu_temperature, folder_size
from device_agent.main import build_agent
from device_agent.relays import RelayConfig
from protocol import topics
from protocol.messages import Heartbeat, parse
from protocol.mqtt import MqttLink
from protocol.signing import generate_keypair, public_pem

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)


# --- the parts ---------------------------------------------------------------------------


def zone(root: Path, n: int, kind: str, millidegrees: str) -> None:
    folder = root / f"thermal_zone{n}"
    folder.mkdir(parents=True)
    (folder / "type").write_text(kind + "\n")
    (folder / "temp").write_text(millidegrees + "\n")


def test_the_cpu_sensor_is_preferred_and_none_without_sensors(tmp_path: Path) -> None:
    assert cpu_temperature(tmp_path) is None
    zone(tmp_path, 0, "acpitz", "27800")
    assert cpu_temperature(tmp_path) == 27.8
    zone(tmp_path, 1, "cpu-thermal", "48312")  # a Raspberry Pi's SoC
    assert cpu_temperature(tmp_path) == 48.3
    zone(tmp_path, 2, "broken", "n/a")
    assert cpu_temperature(tmp_path) == 48.3


def test_cache_size_counts_the_files(tmp_path: Path) -> None:
    assert folder_size(tmp_path / "missing") == 0
    (tmp_path / "a.opus").write_bytes(b"x" * 1000)
    (tmp_path / "b.opus").write_bytes(b"x" * 24)
    assert folder_size(tmp_path) == 1024


def test_the_clock_offset_is_the_smallest_recent_sample() -> None:
    offset = ClockOffset(window_s=600)
    assert offset.estimate(T0, mono=100.0) is None
    # The agent is 2.0 s ahead; commands took 30 ms, 400 ms (queued) and 12 ms to arrive.
    for delay, mono in ((0.030, 10.0), (0.400, 20.0), (0.012, 30.0)):
        issued = T0 + timedelta(seconds=mono)
        received = issued + timedelta(seconds=2.0 + delay)
        offset.add(issued, received, mono=mono)
    now = T0 + timedelta(seconds=2.0 + 40)
    assert offset.estimate(now, mono=40.0) == 2.012  # never below the truth
    # Ten minutes later the samples have aged out.
    assert offset.estimate(now + timedelta(seconds=600), mono=640.0) is None


def test_a_step_of_the_wall_clock_discards_older_samples() -> None:
    offset = ClockOffset()
    offset.add(T0, T0 + timedelta(seconds=3), mono=10.0)  # 3 s ahead before NTP
    # NTP steps the clock back 3 s: the old sample no longer describes this clock.
    now = T0 + timedelta(seconds=5)
    assert offset.estimate(now, mono=18.0) is None
    offset.add(now - timedelta(seconds=0.02), now, mono=18.0)
    assert offset.estimate(now, mono=18.0) == 0.02


# --- the heartbeat, with the amplifier relay, on a real broker -------------------------


class Beats:
    def __init__(self, broker: MosquittoBroker, cluster: str) -> None:
        self.lock = threading.Lock()
        self.items: list[Heartbeat] = []
        self.link = MqttLink(broker.address, "test-heartbeats")
        self.link.subscribe(topics.cluster_topic(cluster, "heartbeat"), self._on, qos=0)
        self.link.start()
        assert self.link.wait_connected(10)

    def _on(self, _topic: str, payload: bytes) -> None:
        with self.lock:
            self.items.append(parse(Heartbeat, body_of(payload)))

    def last(self) -> Heartbeat | None:
        with self.lock:
            return self.items[-1] if self.items else None

    def count(self) -> int:
        with self.lock:
            return len(self.items)


@pytest.fixture
def board(tmp_path: Path) -> Iterator[SimulatedBoard]:
    b = SimulatedBoard("ascii", tmp_path / "ttyRELAY").start()
    yield b
    b.close()


@pytest.mark.slow
def test_heartbeats_carry_health_relay_state_and_a_relay_fault_at_once(
    mosquitto_broker: MosquittoBroker, tmp_path: Path, board: SimulatedBoard
) -> None:
    keys = Keys()
    key_file = tmp_path / "controller.pub"
    key_file.write_bytes(public_pem(keys.private.public_key()))
    config = AgentConfig(
        cluster_id="hb-01", broker_url=mosquitto_broker.url, controller_public_key=key_file,
        data_dir=tmp_path / "agent", groups=[], output=OutputConfig(kind="null", volume=70),
        heartbeat_s=30,
        relay=RelayConfig(driver="ascii", url=board.url, warm_up=timedelta(0),
                          idle_off=timedelta(minutes=5), reply_timeout_s=0.3),
    )
    beats = Beats(mosquitto_broker, "hb-01")
    agent: Agent = build_agent(config)
    agent.start()
    try:
        wait_until(lambda: beats.count() >= 1, 10, "the heartbeat sent on connecting")
        first = beats.last()
        assert first is not None
        assert first.relay == "unknown"  # not switched since the agent started
        assert first.volume == 70
        assert first.clock_offset_s is None  # no command yet
        assert first.disk_free_bytes is not None
        assert first.disk_free_bytes > 0
        assert first.cache_bytes == 0
        assert first.uptime_s < 10
        assert first.playing is None
        assert first.keepalive_s == 30  # the controller times its silence by it

        # A play: the relay goes on before it, and a command gives a clock offset sample.
        c = content(duration_s=5)
        now = datetime.now(UTC)
        cmd = command(keys.signer, play_body("p-hb", [c.ref], now), now, clusters=["hb-01"])
        link = beats.link
        link.publish(topics.cluster_topic("hb-01", "command"), cmd.to_json())
        for frame in c.frames():
            link.publish(topics.cluster_topic("hb-01", "content"), frame)
        wait_until(lambda: board.relay(0), 10, "the relay to switch on for the play")
        beat = agent.heartbeat()
        assert beat.relay == "on"
        assert beat.playing is not None
        assert beat.playing.play_id == "p-hb"
        assert beat.clock_offset_s is not None
        assert abs(beat.clock_offset_s) < 0.5  # one clock on this machine
        assert beat.cache_bytes == c.ref.size

        # The board is unplugged; an emergency needs the amplifier: a fault, sent in a
        # heartbeat at once rather than at the next heartbeat time (30 s).
        board.disappear()
        count = beats.count()
        now = datetime.now(UTC)
        alert = command(keys.signer, play_body("p-hb2", [c.ref], now, level="emergency"), now,
                        clusters=["hb-01"])
        link.publish(topics.cluster_topic("hb-01", "command"), alert.to_json())
        wait_until(lambda: beats.count() > count, 15, "a heartbeat on the relay fault")
        faulty = beats.last()
        assert faulty is not None
        assert faulty.relay is not None
        assert faulty.relay.startswith("fault: ")
    finally:
        agent.stop(timeout=2)
        beats.link.stop()


# --- the controller's view ---------------------------------------------------------------

FLEET = """\
province:
  id: tinh-hb
  name: Tỉnh Thử
  communes:
    - id: xa-hb
      name: Xã Sức Khoẻ
      clusters:
        - {id: hb-02, name: Cụm 2}
"""
KEEPALIVE = 5
HEARTBEAT_S = 1
# Beyond 1.5 x keepalive, the controller may take this long to mark a frozen agent offline:
# the writer thread wakes at the deadline (a few ms late at most) and the test polls the
# store every 10 ms; 0.5 s leaves room for a loaded 2-core machine.
SILENCE_MARGIN_S = 0.5
BROKER_CHECK_S = 6  # mosquitto 2.0 looks for silent clients every 6 s


def _agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "device_agent.cli", "run", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_the_controller_keeps_heartbeats_sees_a_silent_agent_go_offline_and_come_back(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    generate_keypair(tmp_path / "controller.key", tmp_path / "controller.pub")
    (tmp_path / "fleet.yaml").write_text(FLEET, encoding="utf-8")
    (tmp_path / "playlists").mkdir()
    controller_config = tmp_path / "controller.yaml"
    controller_config.write_text(
        f"broker_url: {mosquitto_broker.url}\nfleet: fleet.yaml\nplaylists: [playlists]\n"
        "store_url: sqlite:///controller.db\nprivate_key: controller.key\n"
        "content_dir: content\n",
        encoding="utf-8",
    )
    agent_config = tmp_path / "agent.yaml"
    agent_config.write_text(
        f"cluster_id: hb-02\nbroker_url: {mosquitto_broker.url}\n"
        "controller_public_key: controller.pub\ndata_dir: agent-data\n"
        "enrolment_token_file: enrolment.token\n"
        f"keepalive: {KEEPALIVE}\nheartbeat_s: {HEARTBEAT_S}\noutput: {{kind: null}}\n",
        encoding="utf-8",
    )
    controller = Controller(Settings.from_config(load_controller_config(controller_config)))
    issued = controller.identities.issue_token(
        "hb-02", by="test", now=controller.clock.now(), auto_approve=True
    )
    (tmp_path / "enrolment.token").write_text(issued.token + "\n", encoding="utf-8")
    controller.start()
    store = controller.store
    proc = _agent(agent_config, tmp_path / "agent.log")
    try:
        wait_until(lambda: store.clusters.health()["hb-02"].state == "online", 20, "online")
        online_since = store.clusters.health()["hb-02"].state_at
        # Heartbeats every second; acks of the agent's events give it a clock offset.
        wait_until(
            lambda: (store.clusters.health()["hb-02"].heartbeat or {}).get("uptime_s", 0) >= 2,
            15, "heartbeats to be stored",
        )
        beat = store.clusters.health()["hb-02"].heartbeat
        assert beat is not None
        assert beat["cluster"] == "hb-02"
        assert beat["version"]
        assert "relay" not in beat  # no relay configured: left out (null)

        # Killed outright: the kernel closes its connection, and the broker publishes
        # its Last Will at once.
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: store.clusters.health()["hb-02"].state == "offline",
                   1.5 * KEEPALIVE, "the Last Will after kill -9")
        print(f"offline {time.monotonic() - killed:.3f} s after kill -9 "
              f"(keepalive {KEEPALIVE} s, limit {1.5 * KEEPALIVE} s)")
        proc.wait(10)
        offline_since = store.clusters.health()["hb-02"].state_at
        assert offline_since is not None
        assert online_since is not None
        assert offline_since > online_since

        # Started again, it comes back; then it freezes, as a power cut or a dead 4G link
        # looks to the broker: the socket stays open and nothing more comes. The broker
        # would notice at its next check after 1.5 x keepalive (mosquitto 2.0 checks every
        # 6 s); the controller marks it offline itself once 1.5 x keepalive has passed since
        # the last heartbeat (which came at most HEARTBEAT_S before the freeze).
        proc = _agent(agent_config, tmp_path / "agent.log")
        wait_until(lambda: store.clusters.health()["hb-02"].state == "online", 20, "back")
        back_since = store.clusters.health()["hb-02"].state_at
        assert back_since is not None
        assert back_since > offline_since
        os.kill(proc.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        wait_until(lambda: store.clusters.health()["hb-02"].state == "offline",
                   1.5 * KEEPALIVE + SILENCE_MARGIN_S, "a frozen agent marked offline")
        silent_for = time.monotonic() - frozen
        print(f"offline {silent_for:.2f} s after the agent went silent "
              f"(keepalive {KEEPALIVE} s: 1.5 x = {1.5 * KEEPALIVE} s)")
        # not before 1.5 x keepalive since the last heartbeat, itself <= HEARTBEAT_S ago
        assert silent_for >= 1.5 * KEEPALIVE - HEARTBEAT_S - 0.1
        reason = store.clusters.health()["hb-02"].state_reason
        silent_since = store.clusters.health()["hb-02"].state_at
        assert reason is not None
        assert f"more than 1.5 × its keepalive of {KEEPALIVE} s" in reason
        # The broker's Last Will follows at its own check; it changes nothing stored. Thawed
        # only then, the agent reconnects rather than racing the broker's check.
        states = controller.intake.stats.states
        wait_until(lambda: controller.intake.stats.states > states, BROKER_CHECK_S + 2,
                   "the broker's Last Will as well")
        assert store.clusters.health()["hb-02"].state_at == silent_since
        os.kill(proc.pid, signal.SIGCONT)

        # It thaws, reconnects, and the controller shows since when it is back (a late
        # heartbeat on a connection the broker kept: tests/test_silence.py).
        wait_until(lambda: store.clusters.health()["hb-02"].state == "online", 20, "back")
        back_since = store.clusters.health()["hb-02"].state_at
        assert back_since is not None
        out = subprocess.run(
            [sys.executable, "-m", "controller.cli", "fleet", "--config", str(controller_config)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        line = next(x for x in out.splitlines() if x.startswith("hb-02"))
        local = back_since.astimezone(controller.settings.timezone)
        assert f"online since {local:%Y-%m-%d %H:%M:%S}" in line, out
        assert " ago, up " in line, out
        # The same table for a Vietnamese reader (--lang vi, or LANG=vi_VN.UTF-8).
        out = subprocess.run(
            [sys.executable, "-m", "controller.cli", "fleet", "--lang", "vi", "--config",
             str(controller_config)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        line = next(x for x in out.splitlines() if x.startswith("hb-02"))
        assert f"trực tuyến từ {local:%H:%M:%S ngày %d/%m/%Y}" in line, out
        assert " trước, đã chạy " in line, out
        assert any(x.startswith("cụm loa ") for x in out.splitlines()), out  # the header
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)
        controller.stop()


# --- the controller's store --------------------------------------------------------------


def test_the_store_keeps_since_when_and_the_latest_heartbeat(tmp_path: Path) -> None:
    from controller.store import Store

    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        t = T0
        first = store.clusters.set_state("c1", "online", t, since=t - timedelta(seconds=1))
        assert first == ("unknown", None)  # a cluster never heard of
        assert store.clusters.health()["c1"].state_at == t - timedelta(seconds=1)
        # The same retained state heard again (a controller restart) changes nothing.
        store.clusters.set_state("c1", "online", t + timedelta(minutes=5))
        assert store.clusters.health()["c1"].state_at == t - timedelta(seconds=1)
        before = store.clusters.set_state("c1", "offline", t + timedelta(minutes=6))
        assert before == ("online", t - timedelta(seconds=1))
        # Back: since the agent's own connect time.
        store.clusters.set_state(
            "c1", "online", t + timedelta(minutes=9), since=t + timedelta(minutes=8)
        )
        assert store.clusters.health()["c1"].state_at == t + timedelta(minutes=8)
        # Online again, reconnected meanwhile without the controller seeing it go.
        store.clusters.set_state(
            "c1", "online", t + timedelta(minutes=20), since=t + timedelta(minutes=19)
        )
        assert store.clusters.health()["c1"].state_at == t + timedelta(minutes=19)

        for n in (1, 2):
            beat = Heartbeat(cluster="c1", at=t + timedelta(minutes=n), uptime_s=60.0 * n)
            store.clusters.set_heartbeats([("c1", beat.at, beat.model_dump_json())],
                                 t + timedelta(minutes=n, seconds=1))
        health = store.clusters.health()["c1"]
        assert health.heartbeat is not None
        assert health.heartbeat["uptime_s"] == 120.0
        assert health.heartbeat_at == t + timedelta(minutes=2, seconds=1)
    finally:
        store.close()
