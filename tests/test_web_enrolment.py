"""The web app and cluster identities, over real HTTP on a running controller and broker:
a forged `finished` is not counted by the API, and a manager approves a waiting box on
the enrolment page (CSRF and role checked)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from conftest import BrokerUnderTest, wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from web_rig import PASSWORD, WebRig

from controller.samples import tone
from device_agent.agent import Agent
from device_agent.identity import AgentIdentity
from device_agent.output import NullBackend
from protocol import topics
from protocol.clock import SystemClock
from protocol.messages import Event
from protocol.mqtt import MqttLink
from protocol.signing import Verifier, load_public_key


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[WebRig]:
    r = WebRig(tmp_path, broker.address)
    r.start(agents=["a-01"])
    try:
        yield r
    finally:
        r.stop()


def bearer(rig: WebRig, name: str) -> dict[str, str]:
    with rig.client() as c:
        r = c.post("/api/v1/login", json={"name": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def page_session(c: httpx.Client, name: str) -> str:
    """Sign in on the page; the session's CSRF token."""
    token = c.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    r = c.post("/login", data={"name": name, "password": PASSWORD, "csrf_token": token})
    assert r.status_code in (200, 303), r.text
    return c.get("/send").text.split('name="csrf_token" value="')[1].split('"')[0]


def test_the_api_does_not_count_a_forged_finished(rig: WebRig) -> None:
    """a-02 is switched off. Someone on the broker says it finished the announcement,
    unsigned or signed with a key of their own: the API still shows it offline."""
    auth = bearer(rig, "quan-ly")
    wav = tone(rig.tmp / "canh-bao.wav", 2.0)
    with rig.client() as c:
        with wav.open("rb") as f:
            audio_id = c.post("/api/v1/audio", headers=auth,
                              files={"audio": ("canh-bao.wav", f)}).json()["audio_id"]  # fmt: skip
        r = c.post("/api/v1/announcements", headers=auth,
                   json={"targets": ["a-02"], "audio_id": audio_id, "title": "Lũ"})
        assert r.status_code == 201, r.text
        sent = r.json()
        finished = json.loads(Event(
            cluster="a-02", outbox="a02-outbox", seq=1, at=datetime.now(UTC), kind="finished",
            play_id=sent["id"], bulletin="Lũ", level="emergency",
        ).to_json())
        forger = MqttLink(rig.broker, "test-forger")
        forger.start()
        try:
            assert forger.wait_connected(10)
            topic = topics.cluster_topic("a-02", "event")
            intake = rig.controller.intake
            received = intake.stats.received
            forger.publish(topic, json.dumps(finished).encode())
            stranger = AgentIdentity(Ed25519PrivateKey.generate())
            forger.publish(topic, stranger.seal("event", finished))
            wait_until(lambda: intake.stats.received >= received + 2, 10, "both forgeries")
            wait_until(intake.drained, 10, "the intake idle")
        finally:
            forger.stop()
        data = c.get(f"/api/v1/announcements/{sent['id']}", headers=auth).json()
        assert [x["status"] for x in data["clusters"]] == ["offline"]
        assert "finished" not in data["counts"]
        assert data["all_played"] is False
        assert rig.controller.store.events.count("finished") == 0


def test_a_manager_approves_a_waiting_box_on_the_enrolment_page(rig: WebRig) -> None:
    issued = rig.controller.identities.issue_token(
        "b-01", by="quan-ly", now=datetime.now(UTC)
    )
    data = rig.tmp / "new-box"
    identity = AgentIdentity.load_or_create(data)
    clock = SystemClock()
    started = clock.now()
    box = Agent(
        cluster_id="b-01",
        link=MqttLink(rig.broker, "loa-agent-b-01", will=identity.will("b-01", started)),
        verifier=Verifier(load_public_key(rig.tmp / "controller.pub")), output=NullBackend(),
        clock=clock, data_dir=data, groups=["xa-b"], durable=False, identity=identity,
        enrolment_token=issued.token,
    )
    box.start()
    try:
        def waiting() -> bool:
            found = identity.enrolment()
            return found is not None and found.status == "pending"

        wait_until(waiting, 20, "the box to be told it waits")
        with rig.client() as c:
            page_session(c, "can-bo-b")  # an operator: not theirs to approve
            assert c.get("/enrolments").status_code == 403
        with rig.client() as c:
            csrf = page_session(c, "quan-ly")
            page = c.get("/enrolments")
            assert page.status_code == 200
            assert f'data-cluster="b-01" data-key="{identity.key_id}"' in page.text
            assert "Đăng ký thiết bị" in page.text
            r = c.post("/enrolments/b-01/approve", data={"key": identity.key_id})
            assert r.status_code == 403  # no CSRF token
            r = c.post("/enrolments/b-01/approve",
                       data={"key": identity.key_id, "csrf_token": csrf})  # fmt: skip
            assert r.status_code in (200, 303)
            wait_until(box.registered, 10, "the box told it is registered")
            assert 'id="nothing"' in c.get("/enrolments").text
        wait_until(lambda: rig.state("b-01") == "online", 20, "b-01 online once registered")
        with rig.client() as c:
            audit = c.get("/api/v1/audit", headers=bearer(rig, "quan-ly")).json()
        assert any(e["action"] == "enrol-approve" and e["subject"] == "b-01" for e in audit)
    finally:
        box.stop()
