"""The truth during an outage of the broker, with real processes: mosquitto, agent
processes (`loa-agent run`, the `file` output: a WAV per airing), the controller as
`loa-controller run` builds it with its web app and API, `loa-controller fleet` as a
process.

(a) The broker is killed: the API refuses an urgent announcement at once, "not sent"
    with the reason and the time since when, records nothing; `fleet` says the
    controller is disconnected, not that the clusters are silent, and they stay online.
(b) The broker stalls (frozen) while an announcement is sent, and comes back after the
    announcement's expiry: every agent reports it `expired` and plays nothing.
(c) A broker restarted without its saved state: the controller's retained messages (a
    key rotation under way, the memberships) are published again.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import MosquittoBroker, free_port, require, wait_until
from fleet_rig import COMMUNE, ROOT, FleetRig

from controller.distribution import sent_as
from controller.keys import rotate
from controller.samples import tone
from controller.users import User, hash_password, save_users
from controller.web.app import create_app
from controller.web.server import WebServer, build_context
from protocol import topics
from protocol.mqtt import MqttLink

pytestmark = pytest.mark.slow

CLUSTERS = ["a-01", "a-02"]
PASSWORD = "mat-khau-thu-123"
EXPIRY_S = 4


class Rig:
    def __init__(self, tmp: Path, broker: MosquittoBroker) -> None:
        self.fleet = FleetRig(
            tmp, broker, CLUSTERS, controller_extra=f"urgent_expiry: {EXPIRY_S}s\n"
        )
        self.broker = broker
        self.tmp = tmp
        users = tmp / "users.yaml"
        save_users(users, [User(name="can-bo", role="operator", scope=[COMMUNE],
                                display_name="Cán bộ", password=hash_password(PASSWORD))])
        controller = self.fleet.start_controller()
        for cluster in CLUSTERS:
            self.fleet.start_agent(cluster)
        for cluster in CLUSTERS:
            self.fleet.wait_online(cluster)
        ctx = build_context(controller, users, tmp / "web", tz=controller.settings.timezone)
        self.web = WebServer(create_app(ctx), "127.0.0.1", free_port())
        self.web.start()
        self.http = httpx.Client(base_url=self.web.url, timeout=60)
        token = self.http.post(
            "/api/v1/login", json={"name": "can-bo", "password": PASSWORD}
        ).json()["token"]
        self.http.headers["Authorization"] = f"Bearer {token}"

    def upload(self) -> str:
        source = tone(self.tmp / "canh-bao.wav", 1.0, freq=660)
        with source.open("rb") as f:
            answer = self.http.post("/api/v1/audio", files={"audio": ("canh-bao.wav", f)})
        assert answer.status_code == 201, answer.text
        audio_id: str = answer.json()["audio_id"]
        return audio_id

    def send(self, audio_id: str) -> httpx.Response:
        return self.http.post("/api/v1/announcements", json={
            "targets": [COMMUNE], "level": "emergency", "audio_id": audio_id,
            "title": "Cảnh báo lũ",
        })

    def fleet_command(self) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "controller.cli", "fleet", "--config",
             str(self.fleet.controller_config)],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
            timeout=60, check=True,
        )
        return done.stdout

    def close(self) -> None:
        self.http.close()
        self.web.stop()
        self.fleet.close()


@pytest.fixture
def rig(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[Rig]:
    require("ffmpeg", shutil.which("ffmpeg") is not None, "apt-get install ffmpeg")
    found = Rig(tmp_path, mosquitto_broker)
    try:
        yield found
    finally:
        if mosquitto_broker.proc is not None:
            os.kill(mosquitto_broker.proc.pid, signal.SIGCONT)
        found.close()


def test_an_urgent_announcement_is_refused_at_once_while_the_broker_is_down(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    ctl = rig.fleet.ctl
    audio_id = rig.upload()
    rig.broker.kill()
    wait_until(lambda: ctl.broker_state.down_since() is not None, 10,
               "the controller to see its broker gone")
    since = ctl.broker_state.down_since()
    assert since is not None
    hhmm = since.astimezone(ctl.settings.timezone).strftime("%H:%M")

    answer = rig.send(audio_id)
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error.startswith(f"not sent: the broker has been unreachable since {hhmm}"), error
    assert rig.http.get("/api/v1/announcements").json() == []  # nothing recorded
    page = httpx.get(rig.web.url + "/login?lang=vi").text  # every page has the banner
    assert 'id="broker-down"' in page
    assert f"mất kết nối tới máy chủ MQTT (broker) từ {hhmm}" in page

    # Longer than the clusters' silence limit (1.5 × their 5 s keepalive): the controller
    # blames itself, not them.
    deaf = ctl.intake.stats.deaf_sweeps
    wait_until(lambda: ctl.intake.stats.deaf_sweeps >= deaf + 20, 20, "10 s of deaf sweeps")
    out = rig.fleet_command()
    note = r"NOTE: the controller is disconnected from its broker since \d\d:\d\d"
    assert re.search(note, out), out
    assert "when the controller last heard them" in out
    health = ctl.store.clusters.health()
    assert [health[c].state for c in CLUSTERS] == ["online", "online"]

    with caplog.at_level(logging.INFO, logger="controller.reconnect"):
        rig.broker.start()
        wait_until(lambda: ctl.broker_state.down_since() is None, 30, "the controller back")
        assert "disconnected" not in rig.fleet_command()
        assert 'id="broker-down"' not in httpx.get(rig.web.url + "/login?lang=vi").text
        outage = ctl.broker_state.last_outage_s
        assert outage is not None
        assert outage >= 10

        def said() -> list[str]:
            return [r.message for r in caplog.records
                    if "connected to the broker again" in r.message]

        wait_until(said, 15, "the reconnect line")
    line = said()[0]
    outage_said = r"again after an outage of (\d+ min )?\d+ s \(from \d\d:\d\d:\d\d\)"
    assert re.search(outage_said, line), line


def test_an_announcement_that_reaches_the_clusters_after_its_expiry_plays_nowhere(
    rig: Rig,
) -> None:
    audio_id = rig.upload()
    assert rig.broker.proc is not None
    os.kill(rig.broker.proc.pid, signal.SIGSTOP)  # the broker stalls: connections stay open
    try:
        answer = rig.send(audio_id)  # the controller cannot know yet: its link is up
        assert answer.status_code == 201, answer.text
        found = answer.json()
        latest = datetime.fromisoformat(found["latest_start"])
        assert latest - datetime.fromisoformat(found["created_at"]) == timedelta(seconds=EXPIRY_S)
        wait_until(lambda: datetime.now(UTC) > latest + timedelta(seconds=1), EXPIRY_S + 5,
                   "the announcement's expiry to pass")
    finally:
        os.kill(rig.broker.proc.pid, signal.SIGCONT)  # the broker comes back after it
    plays = sent_as(found["id"], rig.fleet.ctl.store.plays.clusters_of)
    assert plays
    for play_id, clusters in plays:
        for cluster in clusters:
            rig.fleet.wait_kind(play_id, cluster, "expired", timeout=40)
            kinds = rig.fleet.kinds(play_id, cluster)
            assert "playing" not in kinds, kinds
            assert "received" not in kinds, kinds
            assert rig.fleet.wavs(play_id, cluster) == []  # nothing aired
            assert "came too late" in rig.fleet.log(cluster)
    status = rig.http.get(f"/api/v1/announcements/{found['id']}").json()
    assert {c["status"] for c in status["clusters"]} == {"expired"}, status



def test_the_controllers_retained_messages_come_back_after_a_broker_lost_them(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    """A key rotation under way and the memberships are retained messages the controller
    owns: a broker restarted without its saved state has none of them; the controller
    publishes them all again once it is connected again."""
    rig = FleetRig(tmp_path, mosquitto_broker, CLUSTERS)
    rotate(tmp_path / "controller.key", CLUSTERS, datetime.now(UTC), timedelta(days=7))
    wanted = [topics.cluster_topic(c, channel) for c in CLUSTERS
              for channel in ("key", "membership")]
    try:
        ctl = rig.start_controller()
        assert set(retained(mosquitto_broker, wanted)) == set(wanted)

        mosquitto_broker.stop()
        mosquitto_broker.persistence_file.unlink()  # restarted without its state
        mosquitto_broker.start()
        # The controller finds its retained canary gone: the broker lost them all.
        wait_until(lambda: any(r.number >= 2 and r.retained_lost
                               for r in ctl.broker_watch.seen), 30,
                   "the controller back, finding the retained messages lost")
        wait_until(lambda: set(retained(mosquitto_broker, wanted)) == set(wanted), 30,
                   "the key rotation and the memberships on the broker again")
    finally:
        rig.close()


def retained(broker: MosquittoBroker, wanted: list[str]) -> dict[str, bytes]:
    """The retained messages on these topics, as a new subscriber gets them (those that
    came before a probe, or within 10 s)."""
    got: dict[str, bytes] = {}
    probe = topics.controller_topic("retained-probe", "canary")
    back = threading.Event()
    link = MqttLink(broker.address, f"reader-{time.monotonic_ns()}")
    for topic in wanted:
        link.subscribe(topic, lambda t, p: got.__setitem__(t, p) if p else None)
    link.subscribe(probe, lambda _t, _p: back.set())
    link.start()
    try:
        assert link.wait_connected(10)
        deadline = time.monotonic() + 10
        while not (back.is_set() and len(got) == len(wanted)):
            if time.monotonic() > deadline:
                break
            link.publish(probe, b"x")
            back.wait(0.3)
    finally:
        link.stop()
    return dict(got)
