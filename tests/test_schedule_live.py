"""The scheduler on a real APScheduler, a running controller, mosquitto and an agent: a
play is sent lead_time ahead, on time by the wall clock, a start already closer than
the lead time is sent at once, and a restart sends neither again. (The semantics in
detail: test_schedule.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import BrokerUnderTest, wait_until
from live_support import LiveRig

from controller.main import Controller
from controller.samples import tone
from controller.schedule import Occurrence
from protocol.clock import OffsetClock

pytestmark = pytest.mark.slow

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
FRI = date(2026, 11, 27)
LEAD = timedelta(minutes=30)
DUE_IN = timedelta(seconds=3)

FLEET = """\
province:
  id: tinh-thu
  name: Tỉnh Thử
  communes:
    - id: xa-a
      name: Xã A
      clusters:
        - {id: a-01, name: Cụm A1}
"""

PLAYLIST = """\
programmes:
  - id: tin-sang
    name: Tin sáng
    bulletins: [{files: [tin.wav]}]
    schedule: {times: ["06:00"]}
    targets: [all]
  - id: tin-som
    name: Tin sớm
    bulletins: [{files: [tin.wav]}]
    schedule: {times: ["05:40"]}
    targets: [all]
"""


def local(hour: int, minute: int) -> datetime:
    return datetime.combine(FRI, time(hour, minute), tzinfo=HCM)


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[LiveRig]:
    playlists = tmp_path / "playlists"
    playlists.mkdir()
    tone(playlists / "tin.wav", 0.3)
    (playlists / "tin.yaml").write_text(PLAYLIST, encoding="utf-8")
    # The clock reads 05:30 minus DUE_IN: 06:00 is due (lead 30 min) in DUE_IN.
    clock = OffsetClock(local(5, 30) - DUE_IN - datetime.now(UTC))
    live = LiveRig(tmp_path, broker, fleet=FLEET, playlists=playlists, clock=clock)
    live.agent("a-01", ["xa-a", "tinh-thu"])
    try:
        yield live
    finally:
        live.stop()


def test_plays_are_sent_lead_time_ahead_on_time_or_at_once_when_closer(rig: LiveRig) -> None:
    controller = rig.start()
    store = controller.store
    early = Occurrence("tin-som", local(5, 40).astimezone(UTC), local(5, 50).astimezone(UTC))
    morning = Occurrence("tin-sang", local(6, 0).astimezone(UTC), local(6, 10).astimezone(UTC))

    # 05:40 starts in ten minutes, closer than the lead time: sent at once.
    wait_until(lambda: store.dispatches.outcome("tin-som", early.start) == "sent", 10, "05:40 sent")
    # 06:00 is due at 05:30, by the controller's clock, and not before.
    wait_until(
        lambda: store.dispatches.outcome("tin-sang", morning.start) == "sent", 15, "06:00 sent"
    )
    sent_at = {r["programme"]: r["at"].replace(tzinfo=UTC) for r in store.dispatches.log()}
    due = morning.start - LEAD
    assert due - timedelta(milliseconds=50) <= sent_at["tin-sang"] <= due + timedelta(seconds=5)
    assert sent_at["tin-som"] < due

    # The agent holds both, with their audio, to start on its own clock.
    wait_until(
        lambda: store.events.play_states(early.play_id).get("a-01") == "delivered"
        and store.events.play_states(morning.play_id).get("a-01") == "delivered",
        15, "the agent to hold both plays",
    )
    assert controller.scheduler.pending_jobs() == []

    # A restart: both occurrences are recorded, so nothing is planned or sent again.
    log_before = store.dispatches.log()
    controller.stop()
    rig.controller = again = Controller(rig.settings, clock=rig.clock)
    again.start()
    assert again.scheduler.pending_jobs() == []
    assert again.distributor.stats.commands == 0
    assert again.store.dispatches.log() == log_before
