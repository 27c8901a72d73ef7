"""Enrolment on real parts: a real mosquitto, the controller as `loa-controller run`
builds it, each box as its own `loa-agent run` process, and the manager's decisions
through `loa-controller enrol ...` in yet another process, as in the field.

The box makes its key at its first start and asks to join with its bundle's token; until
a manager approves, nothing it publishes is taken; once approved, it is told so and what
it signs is stored, under its key. A token used once, or expired, registers nothing. A
replaced box is registered through `enrol replace`, which retires the old key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import MosquittoBroker, wait_until
from sqlalchemy import select

from controller.audit import AuditLog
from controller.config import load_controller_config
from controller.main import Controller, Settings
from controller.store.schema import events
from controller.trust import Refused
from device_agent.identity import KEY_FILE, AgentIdentity, Enrolment, read_key, read_status
from protocol import topics
from protocol.mqtt import MqttLink
from protocol.signing import generate_keypair

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

FLEET = """\
province:
  id: tinh-enrol
  name: Tỉnh Thử
  communes:
    - id: xa-e
      name: Xã E
      clusters:
        - {id: e-01, name: Cụm Một}
        - {id: e-02, name: Cụm Hai}
"""


def key_in(data: Path) -> AgentIdentity:
    """The key a box made in its data folder (read as a thief would, touching nothing)."""
    return AgentIdentity(read_key(data / KEY_FILE))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


class Rig:
    def __init__(self, tmp: Path, broker: MosquittoBroker) -> None:
        self.tmp = tmp
        self.broker = broker
        generate_keypair(tmp / "controller.key", tmp / "controller.pub")
        (tmp / "fleet.yaml").write_text(FLEET, encoding="utf-8")
        (tmp / "playlists").mkdir()
        self.config = tmp / "controller.yaml"
        self.config.write_text(
            f"broker_url: {broker.url}\nclient_id: loa-controller-enrol\n"
            "fleet: fleet.yaml\nplaylists: [playlists]\n"
            "store_url: sqlite:///controller.db\nprivate_key: controller.key\n"
            "content_dir: content\n",
            encoding="utf-8",
        )
        self.controller = Controller(Settings.from_config(load_controller_config(self.config)))
        self.controller.start()
        self.boxes: dict[str, subprocess.Popen[bytes]] = {}

    def cli(self, *args: str) -> str:
        """`loa-controller ARGS --config ...` in its own process; its standard output."""
        done = subprocess.run(
            [sys.executable, "-m", "controller.cli", *args, "--config", str(self.config)],
            env=_env(), capture_output=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    def box(self, name: str, cluster: str, token: str | None) -> Path:
        """Write the agent config of a box (its own data folder), with its token file."""
        lines = [
            f"cluster_id: {cluster}", f"broker_url: {self.broker.url}",
            "controller_public_key: controller.pub", f"data_dir: data-{name}",
            "keepalive: 5", "outbox_resend_s: 1", "output: {kind: null}",
        ]
        if token is not None:
            (self.tmp / f"{name}.token").write_text(token + "\n", encoding="utf-8")
            lines.append(f"enrolment_token_file: {name}.token")
        config = self.tmp / f"{name}.yaml"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return self.tmp / f"data-{name}"

    def start(self, name: str) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        self.boxes[name] = subprocess.Popen(
            [sys.executable, "-m", "device_agent.cli", "run", "--config",
             str(self.tmp / f"{name}.yaml")],
            env=_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self, name: str) -> None:
        proc = self.boxes.pop(name)
        proc.terminate()
        proc.wait(15)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(encoding="utf-8", errors="replace")

    def told(self, name: str, status: str, timeout: float = 20) -> Enrolment:
        """Wait until the box has been told this about its key."""
        folder = self.tmp / f"data-{name}"

        def answer() -> Enrolment | None:
            found = read_status(folder) if folder.exists() else None
            return found if found is not None and found.status == status else None

        wait_until(answer, timeout, f"{name} to be told {status}")
        found = answer()
        assert found is not None
        return found

    def state(self, cluster: str) -> str:
        health = self.controller.store.clusters.health().get(cluster)
        return health.state if health is not None else "unknown"

    def close(self) -> None:
        for name in list(self.boxes):
            self.stop(name)
        self.controller.stop()


@pytest.fixture
def rig(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[Rig]:
    r = Rig(tmp_path, mosquitto_broker)
    try:
        yield r
    finally:
        r.close()


def _ask_for_a_rejected_event(rig: Rig, cluster: str) -> None:
    """An unsigned command on the cluster's topic: the agent refuses it and reports a
    `rejected` event, which it signs like every event."""
    link = MqttLink(rig.broker.address, "test-forger")
    link.start()
    try:
        assert link.wait_connected(10)
        link.publish(topics.cluster_topic(cluster, "command"), b'{"v": 1, "id": "forged-0001"}')
    finally:
        link.stop()


def test_token_join_approval_then_signed_events_are_stored(rig: Rig) -> None:
    issued = json.loads(rig.cli("enrol", "token", "e-01", "--json", "--by", "quan-ly"))
    assert issued["auto_approve"] is False
    data = rig.box("box-1", "e-01", issued["token"])
    rig.start("box-1")
    rig.told("box-1", "pending")
    key = key_in(data).key_id
    listed = json.loads(rig.cli("enrol", "list", "--json"))
    assert [(p["cluster"], p["key"]) for p in listed["pending"]] == [("e-01", key)]
    # Until approved, what the box publishes is refused: it is not online for the controller.
    wait_until(lambda: rig.controller.keys.refused > 0, 20, "the box's messages refused")
    assert rig.state("e-01") != "online"

    rig.cli("enrol", "approve", "e-01", "--by", "quan-ly")
    rig.told("box-1", "registered")  # the running controller told it
    wait_until(lambda: rig.state("e-01") == "online", 20, "e-01 online once registered")
    _ask_for_a_rejected_event(rig, "e-01")
    store = rig.controller.store
    wait_until(lambda: store.events.count("rejected") == 1, 20, "its signed event stored")
    with store.engine.connect() as conn:
        assert conn.execute(select(events.c.key_id)).scalar() == key
    assert f"the controller registered this cluster's key {key}" in rig.log("box-1")
    actions = [(e.action, e.user) for e in reversed(AuditLog(store).entries())]
    assert actions == [("enrol-token", "quan-ly"), ("enrol-approve", "quan-ly")]


def test_a_token_used_once_or_expired_registers_nothing(rig: Rig) -> None:
    token = rig.controller.identities.issue_token(
        "e-01", by="test", now=datetime.now(UTC), auto_approve=True
    ).token
    rig.box("box-1", "e-01", token)
    rig.start("box-1")
    rig.told("box-1", "registered")
    rig.stop("box-1")
    # Another box with the same (copied) token: refused, and it says why.
    rig.box("copy", "e-01", token)
    rig.start("copy")
    refused = rig.told("copy", "refused")
    assert "already used" in str(refused.reason)
    wait_until(lambda: "refused to register this cluster's key" in rig.log("copy"), 10,
               "the refusal in the box's log")  # fmt: skip
    # A token past its expiry, for the other cluster.
    expired = rig.controller.identities.issue_token(
        "e-02", by="test", now=datetime.now(UTC) - timedelta(hours=2), ttl=timedelta(hours=1),
        auto_approve=True,
    ).token
    rig.box("late", "e-02", expired)
    rig.start("late")
    assert "expired" in str(rig.told("late", "refused").reason)
    assert set(rig.controller.identities.active_keys()) == {"e-01"}


def test_replacing_a_box_registers_the_new_key_and_retires_the_old(rig: Rig) -> None:
    first = rig.controller.identities.issue_token(
        "e-01", by="test", now=datetime.now(UTC), auto_approve=True
    ).token
    old_data = rig.box("old", "e-01", first)
    rig.start("old")
    rig.told("old", "registered")
    wait_until(lambda: rig.state("e-01") == "online", 20, "the old box online")
    rig.stop("old")  # the box is dead; a technician brings a new one

    out = rig.tmp / "bundle" / "enrolment.token"
    rig.cli("enrol", "replace", "e-01", "--out", str(out), "--by", "quan-ly")
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    new_data = rig.box("new", "e-01", out.read_text().strip())
    rig.start("new")
    rig.told("new", "pending")
    rig.cli("enrol", "approve", "e-01", "--by", "quan-ly")
    rig.told("new", "registered")
    wait_until(lambda: rig.state("e-01") == "online", 20, "the new box online")

    old_key, new_key = key_in(old_data), key_in(new_data)
    assert rig.controller.identities.active_keys()["e-01"][0] == new_key.key_id
    # The old box, if it ever comes back (or its key is stolen), is not believed.
    with pytest.raises(Refused):
        rig.controller.keys.open("e-01", "event", old_key.seal("event", {}))
    retired = [k for k in rig.controller.identities.keys("e-01") if k.status == "retired"]
    assert [k.key_id for k in retired] == [old_key.key_id]
    listed = rig.cli("enrol", "list").splitlines()
    row = next(line for line in listed if line.startswith("e-01 "))
    assert row.split()[:3] == ["e-01", new_key.key_id, "registered"]
    approved = AuditLog(rig.controller.store).entries()[0]
    assert approved.action == "enrol-approve"
    assert f"retired key {old_key.key_id} (box replaced)" in str(approved.detail)
