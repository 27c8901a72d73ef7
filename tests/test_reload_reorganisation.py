"""The 1 July 2025 reorganisation replayed on a running controller (real broker, real
agents): the fleet file is swapped for config/fleet-2025-07-01.yaml while the controller
runs, and the merged communes' clusters keep their schedules and answer to the new
commune."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import BrokerUnderTest, wait_until
from live_support import ROOT, LiveRig

from controller.fleet import load_fleet
from controller.samples import tone
from protocol import topics
from protocol.clock import OffsetClock
from protocol.messages import MembershipBody
from protocol.mqtt import MqttLink

pytestmark = pytest.mark.slow

FLEET = ROOT / "config" / "fleet.yaml"
FLEET_2025 = ROOT / "config" / "fleet-2025-07-01.yaml"
HCM = ZoneInfo("Asia/Ho_Chi_Minh")
NEW_COMMUNE = "xa-tan-binh"  # Tân Bình and Bình Thành became Xã Tân Bình


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[LiveRig]:
    # The controller's clock reads 05:00 local: the 06:00 news is planned (due 05:30).
    five = datetime.combine(date(2026, 11, 27), time(5, 0), tzinfo=HCM)
    clock = OffsetClock(five - datetime.now(UTC))
    # Its agents share one network loop and one worker pool, as a simulated fleet's do.
    live = LiveRig(tmp_path, broker, fleet=FLEET, playlists=ROOT / "playlists", clock=clock,
                   shared=True)
    live.start()
    try:
        yield live
    finally:
        live.stop()


def retained_memberships(rig: LiveRig, clusters: list[str]) -> dict[str, MembershipBody]:
    """The retained, signed membership of each cluster, as a new subscriber gets it."""
    got: dict[str, MembershipBody] = {}
    other: list[str] = []  # anything else on a membership topic (an assert in a handler
    lock = threading.Lock()  # would only be logged by the link)

    def on_message(topic: str, payload: bytes) -> None:
        command = rig.verifier.verify(payload)
        with lock:
            if isinstance(command.body, MembershipBody):
                got[command.body.cluster] = command.body
            else:
                other.append(f"{topic}: {command.body.kind}")

    link = MqttLink(rig.broker.address, "test-membership-reader")
    for cluster in clusters:
        link.subscribe(topics.cluster_topic(cluster, "membership"), on_message)
    link.start()
    try:
        wait_until(lambda: len(got) == len(clusters) or other, 10, "the retained memberships")
    finally:
        link.stop()
    assert other == []
    return got


def test_merged_communes_keep_their_schedules_and_answer_to_the_new_commune(
    rig: LiveRig, tmp_path: Path
) -> None:
    controller = rig.controller
    old, new = load_fleet(FLEET), load_fleet(FLEET_2025)
    merged = sorted(
        c for c in new.clusters_in(NEW_COMMUNE) if old.clusters[c].commune != NEW_COMMUNE
    )
    assert merged == ["binh-thanh-01", "binh-thanh-02"]  # from Xã Bình Thành
    stayed = sorted(set(new.clusters_in(NEW_COMMUNE)) - set(merged))
    agents = {c: rig.agent(c, old.groups_of(c)) for c in [*merged, *stayed]}
    assert not set(merged) & set(controller.fleet.resolve([NEW_COMMUNE]))

    jobs = controller.scheduler.pending_jobs()
    assert any(j.startswith("occ:thoi-su-sang@") for j in jobs)
    targeted_before = {
        p.id: set(controller.fleet.resolve(p.targets, p.exclude))
        for p in controller.playlists.programmes.values()
    }

    # The reorganisation is an edit of the fleet file, noticed by the running controller.
    shutil.copy(FLEET_2025, rig.fleet_path)
    wait_until(lambda: controller.last_reload is not None, 15, "the reload of the new fleet")
    assert controller.last_reload is not None
    assert controller.last_reload.ok, controller.last_reload.report()
    assert controller.fleet.province.id == "tp-can-tho"
    assert set(merged) <= set(controller.last_reload.memberships_sent)
    status = controller.store.config_status.get()
    assert status is not None
    assert status.status == "ok"

    # The merged clusters keep their schedules: every programme that aired on them
    # still does (the example playlists name ids that survive), and the planned jobs
    # are the same.
    assert controller.scheduler.pending_jobs() == jobs
    for programme in controller.playlists.programmes.values():
        after = set(controller.fleet.resolve(programme.targets, programme.exclude))
        for cluster in merged:
            if cluster in targeted_before[programme.id]:
                assert cluster in after, (programme.id, cluster)

    # ... and answer to the new commune: targets, the store, and their membership.
    assert set(merged) <= set(controller.fleet.resolve([NEW_COMMUNE]))
    rows = {r.id: r for r in controller.store.clusters.fleet_rows()}
    assert {rows[c].commune_name for c in merged} == {"Xã Tân Bình"}
    memberships = retained_memberships(rig, merged)
    for cluster in merged:
        assert memberships[cluster].commune == NEW_COMMUNE
        assert memberships[cluster].groups == new.groups_of(cluster)
        assert memberships[cluster].groups[-1] == "tp-can-tho"
    wait_until(
        lambda: all(NEW_COMMUNE in a.membership.groups for a in agents.values()), 10,
        "the agents to join the new commune's group",
    )

    # A play to the new commune reaches the merged communes' clusters.
    audio = tone(tmp_path / "thong-bao.wav", 0.5)
    [spec] = controller.send_urgent([NEW_COMMUNE], [audio], title="Thông báo xã Tân Bình")
    assert sorted(spec.clusters) == sorted([*merged, *stayed])
    wait_until(
        lambda: controller.store.events.play_states(spec.play_id)
        == {c: "finished" for c in [*merged, *stayed]},
        30, "every cluster of the new commune to finish the play",
    )
