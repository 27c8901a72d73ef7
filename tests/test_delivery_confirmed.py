"""Delivery confirmed end to end, on a running controller, mosquitto and agents.

The controller as `loa-controller run` builds it and in-process agents share one
ManualClock, so the test decides when a resend is due and when a latest start passes. A
bare subscriber on a cluster's own command topic sees what the controller sends it.

- An announcement to a commune where one cluster never answers: the one that answers
  is not sent it again; the silent one is sent it again on its own topic, with backoff,
  then recorded as missed, "not received: ...", in the urgent status (the data of the
  page and the API) and in `loa-controller fleet`, and counted there.
- The reconnect hook: after every connection the controller knows whether the broker
  kept its session and its retained messages (mosquitto with its default autosave,
  killed -9: neither; stopped cleanly: both), and sends again, at once, every play not
  yet confirmed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import BrokerUnderTest, MosquittoBroker, wait_until
from live_support import ROOT, LiveRig

from controller.confirmations import CONFIRMED, MISSED, PENDING, not_received_reason
from controller.distribution import PlaySpec
from controller.samples import tone
from controller.tts import speech_for
from controller.urgent import AnnouncementRequest, SystemPrincipal, service_for
from protocol import topics
from protocol.clock import ManualClock
from protocol.messages import Command
from protocol.mqtt import MqttLink

pytestmark = pytest.mark.slow

FLEET = """\
province:
  id: tinh-thu
  name: Tỉnh Thử
  communes:
    - id: xa-a
      name: Xã A
      clusters:
        - {id: a-01, name: Cụm A1}
        - {id: a-02, name: Cụm A2}
    - id: xa-b
      name: Xã B
      clusters:
        - {id: b-01, name: Cụm B1}
"""
MANAGER = SystemPrincipal(name="quan-ly", role="manager", scope=["tinh-thu"])


class CommandSpy:
    """Play commands on some clusters' own command topics, as a bare subscriber sees them."""

    PROBE = topics.cluster_topic("spy-probe", "command")

    def __init__(self, broker: BrokerUnderTest, clusters: list[str]) -> None:
        self._lock = threading.Lock()
        self._plays: list[tuple[str, Command]] = []
        self.unreadable: list[str] = []
        self._probed = threading.Event()
        self.link = MqttLink(broker.address, "command-spy")
        for cluster in clusters:
            self.link.subscribe(topics.cluster_topic(cluster, "command"), self._on_command)
        self.link.subscribe(self.PROBE, lambda _t, _p: self._probed.set())
        self.link.start()
        assert self.link.wait_connected(10)
        self.link.publish(self.PROBE, b"probe")  # back: the subscriptions are in place
        wait_until(self._probed.is_set, 10, "the spy's subscriptions")

    def _on_command(self, topic: str, payload: bytes) -> None:
        try:
            command = Command.model_validate_json(payload)
        except ValueError as exc:  # kept for the test to assert: the link only logs
            with self._lock:
                self.unreadable.append(f"{topic}: {exc}")
            return
        if command.body.kind == "play":
            with self._lock:
                self._plays.append((topic, command))

    def plays(self) -> list[tuple[str, Command]]:
        with self._lock:
            return list(self._plays)

    def stop(self) -> None:
        self.link.stop()


def settled(rig: LiveRig) -> None:
    """Let the controller's intake thread go round twice at the clock as it now reads: what
    was due by then has been done (and a command it sent has had its time to arrive)."""
    intake = rig.controller.intake
    before = intake.stats.sweeps
    wait_until(lambda: intake.stats.sweeps >= before + 3, 10, "the intake to go round")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest, clock: ManualClock) -> Iterator[LiveRig]:
    live = LiveRig(tmp_path, broker, fleet=FLEET, clock=clock, reload_interval_s=0)
    try:
        yield live
    finally:
        live.stop()


def test_a_cluster_that_never_answers_is_sent_it_again_then_recorded_not_received(
    rig: LiveRig, broker: BrokerUnderTest, clock: ManualClock, tmp_path: Path
) -> None:
    t0 = clock.now()
    controller = rig.start()
    rig.agent("a-01", ["xa-a", "tinh-thu"])  # a-02 has no agent: nothing will answer
    spy = CommandSpy(broker, ["a-01", "a-02"])
    try:
        service = service_for(controller, speech_for(), tmp_path / "urgent")
        sent = service.send(MANAGER, AnnouncementRequest(
            targets=["xa-a"], audio=tone(tmp_path / "bao.wav", 1.0), title="Báo lũ",
        ))
        confirmations = controller.confirmations

        def states() -> dict[str, str]:
            return {c: row[0] for c, row in confirmations.of_play(sent.id).items()}

        wait_until(lambda: states() == {"a-01": CONFIRMED, "a-02": PENDING}, 15,
                   "a-01 to confirm the announcement")
        progress = {p.cluster: p for p in service.get(MANAGER, sent.id).progress}
        assert progress["a-02"].status == "offline"
        assert progress["a-02"].reason == "not connected (never seen)"
        assert spy.plays() == []  # the announcement went to the commune's group topic

        # 10 s without a word from a-02: sent again, on its own topic; a-01 is not.
        clock.advance(10)
        wait_until(lambda: len(spy.plays()) == 1, 10, "the play sent again to a-02")
        topic, again = spy.plays()[0]
        assert topic == topics.cluster_topic("a-02", "command")
        assert again.to.clusters == ["a-02"]
        assert again.to.groups == []
        assert again.body.kind == "play"
        assert again.body.play_id == sent.id
        assert again.issued_at == t0 + timedelta(seconds=10)

        def reason_of(cluster: str) -> str | None:
            return next(p.reason for p in service.get(MANAGER, sent.id).progress
                        if p.cluster == cluster)

        wait_until(
            lambda: reason_of("a-02") == "not connected (never seen); sent 2 times, not "
            "confirmed yet", 10, "the status to count the sends",
        )
        # The next one 20 s later, not before.
        clock.advance(19)
        settled(rig)
        assert len(spy.plays()) == 1
        clock.advance(1)
        wait_until(lambda: len(spy.plays()) == 2, 10, "the second resend")

        # Past the announcement's latest start (and a little grace): not received.
        latest = sent.latest_start
        clock.set(latest + controller.confirmations.policy.miss_grace)
        wait_until(lambda: states()["a-02"] == MISSED, 10, "a-02 recorded as not received")
        reason = not_received_reason(latest, controller.settings.timezone)
        assert reason.startswith("not received: no confirmation from the cluster by ")
        found = service.get(MANAGER, sent.id)
        progress = {p.cluster: p for p in found.progress}
        assert (progress["a-02"].status, progress["a-02"].reason) == ("missed", reason)
        assert progress["a-01"].status in ("received", "delivered", "playing", "finished")
        page = found.to_json()  # what the status page polls and the API returns
        assert {"cluster": "a-02", "status": "missed", "reason": reason}.items() <= next(
            c for c in page["clusters"] if c["cluster"] == "a-02"
        ).items()
        assert page["counts"]["missed"] == 1
        assert len(spy.plays()) == 2  # never sent again once it can no longer start
        assert spy.unreadable == []
    finally:
        spy.stop()

    # `loa-controller fleet` shows it as a-02's last result, and counts it.
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli", "fleet", "--config", str(rig.config)],
        cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("a-02"))
    assert f"missed: Báo lũ ({reason})" in line, out
    assert "0 play(s) sent and waiting for their cluster's confirmation; 1 not received" in out
    rows = json.loads(subprocess.run(
        [sys.executable, "-m", "controller.cli", "fleet", "--config", str(rig.config), "--json"],
        cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout)
    a02 = next(r for r in rows if r["cluster"] == "a-02")
    assert a02["last_not_received"]["play_id"] == sent.id
    assert a02["last_not_received"]["reason"] == reason
    assert a02["unconfirmed"] == 0


def test_after_every_reconnection_what_is_not_confirmed_goes_again_at_once(
    tmp_path: Path, mosquitto_default_autosave: MosquittoBroker, clock: ManualClock
) -> None:
    broker = mosquitto_default_autosave
    rig = LiveRig(tmp_path, broker, fleet=FLEET, clock=clock, reload_interval_s=0)
    try:
        controller = rig.start()
        watch = controller.broker_watch
        wait_until(lambda: len(watch.seen) == 1, 15, "the first connection looked at")
        first = watch.seen[-1]
        assert first.first
        assert not first.broker_lost_state  # a first start cannot tell
        now = clock.now()
        audio = controller.library.prepare([tone(tmp_path / "tin.wav", 0.5)])
        controller.distributor.send_play(PlaySpec(
            play_id="tin-b@1", bulletin="Tin xã B", level="normal",
            start_at=now + timedelta(minutes=30), latest_start=now + timedelta(minutes=40),
            items=[audio], clusters=["b-01"],  # no agent: it stays unconfirmed
        ))
        stats = controller.distributor.stats
        assert stats.resent_commands == 0

        # mosquitto killed -9: it saved nothing since it started (default autosave).
        broker.kill()
        broker.start()
        wait_until(lambda: len(watch.seen) == 2, 30, "the reconnection looked at")
        lost = watch.seen[-1]
        assert not lost.session_present
        assert lost.retained_lost is True
        assert lost.broker_lost_state
        # Sent again at once: the clock has not moved.
        wait_until(lambda: stats.resent_commands == 1, 10, "the play sent again")
        assert clock.now() == now

        # Stopped cleanly, mosquitto saves, and has it all back after its restart: the
        # controller tells so, and still sends again what is not confirmed.
        broker.restart()
        wait_until(lambda: len(watch.seen) == 3, 30, "the next reconnection looked at")
        kept = watch.seen[-1]
        assert kept.session_present
        assert kept.retained_lost is False
        assert not kept.broker_lost_state
        wait_until(lambda: stats.resent_commands == 2, 10, "the play sent again")
    finally:
        rig.stop()
