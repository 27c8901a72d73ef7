"""A box is never left deaf by a retained membership someone overwrote.

Findings these tests hold: overwriting a cluster's retained membership left a fresh or
reinstalled box with no groups (it heard no commune broadcast), since the controller
published memberships only when it started; and `loa-agent check` then told the
technician to copy the controller's key again. Real controller, real mosquitto, real
agent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MosquittoBroker, wait_until
from hostile_rig import HostileRig, hostile_rig

from device_agent.agent import Agent
from device_agent.check import run_checks
from device_agent.identity import AgentIdentity
from device_agent.output import NullBackend
from protocol import topics
from protocol.clock import SystemClock
from protocol.messages import MembershipBody
from protocol.mqtt import MqttLink
from protocol.signing import SignatureError, Verifier, load_public_key

pytestmark = pytest.mark.slow

REPUBLISH_S = 1.0


def forge_membership(rig: HostileRig, cluster: str) -> None:
    """An unsigned membership with no groups, retained over the controller's."""
    forged = {
        "v": 1, "id": "forged-membership-1", "issued_at": "2026-11-25T06:00:00Z",
        "expires_at": "2099-01-01T00:00:00Z", "to": {"clusters": [cluster]},
        "body": {"kind": "membership", "cluster": cluster, "groups": [], "version": 2**62},
    }  # fmt: skip
    rig.wire.send(topics.cluster_topic(cluster, "membership"), forged, retain=True)


def retained_membership(rig: HostileRig, cluster: str) -> bytes | None:
    """What a client subscribing now gets as the cluster's retained membership."""
    got: list[bytes] = []
    reader = MqttLink(rig.broker.address, f"reader-{cluster}")
    reader.subscribe(topics.cluster_topic(cluster, "membership"), lambda _t, p: got.append(p))
    reader.start()
    try:
        assert reader.wait_connected(10)
        wait_until(lambda: got, 5, "the retained membership")
    finally:
        reader.stop()
    return got[-1] if got else None


def signed_by_the_controller(rig: HostileRig, payload: bytes | None) -> bool:
    if not payload:
        return False
    try:
        Verifier(load_public_key(rig.tmp / "controller.pub")).verify(payload)
    except (SignatureError, ValueError):
        return False
    return True


def fresh_agent(rig: HostileRig, cluster: str) -> Agent:
    """A box just installed: no groups in its config, nothing on its SD card."""
    agent = Agent(
        cluster_id=cluster,
        link=MqttLink(rig.broker.address, f"loa-agent-{cluster}"),
        verifier=Verifier(load_public_key(rig.tmp / "controller.pub")),
        output=NullBackend(), clock=SystemClock(), data_dir=rig.tmp / "agents" / cluster,
        durable=False, identity=AgentIdentity.load_or_create(rig.tmp / "agents" / cluster),
    )  # fmt: skip
    agent.start()
    return agent


@pytest.fixture
def rig(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[HostileRig]:
    yield from hostile_rig(tmp_path, mosquitto_broker, republish_s=REPUBLISH_S)


def test_a_fresh_box_gets_its_groups_although_its_membership_was_overwritten(
    rig: HostileRig,
) -> None:
    forge_membership(rig, "h-02")
    agent = fresh_agent(rig, "h-02")
    try:
        wait_until(agent.ready, 15, "the agent to connect")
        wanted = tuple(rig.controller.fleet.groups_of("h-02"))
        wait_until(lambda: agent.membership.groups == wanted, 5 * REPUBLISH_S + 5,
                   "the controller's membership to come back")  # fmt: skip
        version = agent.membership.version
        assert version == rig.controller.memberships_publisher.version_of("h-02")
        # Overwritten again, now that the box has the controller's: it keeps it.
        forge_membership(rig, "h-02")
        rounds = rig.controller.memberships_publisher.rounds
        wait_until(lambda: rig.controller.memberships_publisher.rounds > rounds + 1, 10,
                   "two more rounds of republishing")  # fmt: skip
        assert agent.membership.groups == wanted
        assert agent.membership.version == version
    finally:
        agent.stop(timeout=2)


def test_the_controller_publishes_memberships_again_when_it_reconnects(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    """With republishing at an interval turned off, a reconnection alone brings the
    controller's membership back over a forged one."""
    for rig in hostile_rig(tmp_path, mosquitto_broker, republish_s=0):
        # The controller's own first publication must be in before the forgery: on a
        # loaded machine it could otherwise land after it and overwrite it.
        wait_until(lambda: signed_by_the_controller(rig, retained_membership(rig, "h-01")),  # noqa: B023 - waited on at once
                   20, "the controller's first membership")  # fmt: skip
        forge_membership(rig, "h-01")
        wait_until(lambda: not signed_by_the_controller(rig, retained_membership(rig, "h-01")),  # noqa: B023 - waited on at once
                   20, "the forged membership to be retained")  # fmt: skip
        mosquitto_broker.restart()  # it keeps its retained messages, the forged one too
        assert rig.wire.link.wait_connected(15)
        wait_until(lambda: signed_by_the_controller(rig, retained_membership(rig, "h-01")),  # noqa: B023 - waited on at once
                   20, "the controller's membership again")  # fmt: skip


def test_a_reload_gives_a_new_version_only_to_what_changed(rig: HostileRig) -> None:
    publisher = rig.controller.memberships_publisher
    before = {c: publisher.version_of(c) for c in ("h-01", "h-02")}
    fleet = (rig.tmp / "fleet.yaml").read_text(encoding="utf-8")
    moved = fleet.replace(
        "        - {id: h-02, name: Cụm 2}\n",
        "    - id: xa-k\n      name: Xã Khác\n      clusters:\n        - {id: h-02, name: Cụm 2}\n",
    )
    (rig.tmp / "fleet.yaml").write_text(moved, encoding="utf-8")
    result = rig.controller.reload()
    assert result.ok, result.report()
    assert result.memberships_sent == ["h-02"]
    after = {c: publisher.version_of(c) for c in ("h-01", "h-02")}
    assert after["h-01"] == before["h-01"]
    assert after["h-02"] is not None
    assert before["h-02"] is not None
    assert after["h-02"] > before["h-02"]
    retained = retained_membership(rig, "h-02")
    assert retained is not None
    body = MembershipBody.model_validate(json.loads(retained)["body"])
    assert (body.groups, body.version) == (["xa-k", "tinh-h"], after["h-02"])


def test_check_blames_the_broker_not_the_key_for_an_overwritten_membership(
    rig: HostileRig,
) -> None:
    forge_membership(rig, "h-01")
    config = rig.tmp / "agent.yaml"
    config.write_text(
        f"cluster_id: h-01\nbroker_url: {rig.broker.url}\ncontroller_public_key: "
        "controller.pub\ndata_dir: data\noutput: {kind: null}\n",
        encoding="utf-8",
    )
    (rig.tmp / "data").mkdir()
    results = {r.name: r for r in run_checks(config, timeout_s=3, report=lambda _r: None)}
    membership = results["membership"]
    assert membership.status == "FAIL"
    assert "another client overwrote" in membership.message
    fix = membership.fix or ""
    assert "copy" not in fix  # the key is right: copying it again changes nothing
    assert "ACL" in fix
    assert "every membership_republish" in fix
