"""Live reload on a running controller and a real broker: a good edit is taken (its
occurrence gets a job), a broken one is refused with file:line in the log, the store
and `loa-controller fleet`, and the schedule that was running goes on untouched."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import BrokerUnderTest, wait_until
from live_support import LiveRig

from controller.cli import main as cli_main
from controller.samples import tone
from controller.schedule import Occurrence
from protocol.clock import ManualClock

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
FRI = date(2026, 11, 27)

FLEET = """\
province:
  id: tinh-thu
  name: Tỉnh Thử
  communes:
    - id: xa-a
      name: Xã A
      clusters:
        - {id: a-01, name: Cụm A1}
    - id: xa-b
      name: Xã B
      clusters:
        - {id: b-01, name: Cụm B1}
"""

MORNING = """\
programmes:
  - id: tin-sang
    name: Tin sáng
    bulletins: [{files: [tin.wav]}]
    schedule: {times: ["05:45"]}
    targets: [all]
"""

EXTRA = """\
  - id: tin-them
    name: Tin thêm
    bulletins: [{files: [tin.wav]}]
    schedule: {times: ["{time}"]}
    targets: [xa-b]
"""


def utc_of(hour: int, minute: int) -> datetime:
    """FRI hour:minute local time, as UTC."""
    return datetime.combine(FRI, time(hour, minute), tzinfo=HCM).astimezone(UTC)


def job_id(programme: str, hour: int, minute: int) -> str:
    start = utc_of(hour, minute)
    return Occurrence(programme, start, start).job_id


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[LiveRig]:
    playlists = tmp_path / "playlists"
    playlists.mkdir()
    tone(playlists / "tin.wav", 0.3)
    (playlists / "tin.yaml").write_text(MORNING, encoding="utf-8")
    # 05:00 local: the 05:45 play is due at 05:15, long after the test is over.
    clock = ManualClock(utc_of(5, 0))
    live = LiveRig(tmp_path, broker, fleet=FLEET, playlists=playlists, clock=clock)
    live.start()
    try:
        yield live
    finally:
        live.stop()


def fleet_output(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fleet", "--config", str(config)])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_a_good_edit_is_taken_and_a_broken_one_refused_with_file_and_line(
    rig: LiveRig, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    controller = rig.controller
    playlist = rig.playlists / "tin.yaml"
    assert controller.scheduler.pending_jobs() == [job_id("tin-sang", 5, 45)]

    # A good edit: a new programme at 05:50. The watcher notices; its job appears.
    playlist.write_text(MORNING + EXTRA.replace("{time}", "05:50"), encoding="utf-8")
    wait_until(
        lambda: job_id("tin-them", 5, 50) in controller.scheduler.pending_jobs(), 15,
        "the new programme's job",
    )
    wait_until(lambda: controller.last_reload is not None, 15, "the reload to finish")
    assert controller.scheduler.pending_jobs() == sorted(
        [job_id("tin-sang", 5, 45), job_id("tin-them", 5, 50)]
    )
    status = controller.store.config_status.get()
    assert status is not None
    assert status.status == "ok"
    good = controller.playlists

    # A broken edit: an impossible time. Refused; the running schedule is untouched.
    caplog.set_level(logging.WARNING, logger="controller.main")
    broken = MORNING + EXTRA.replace("{time}", "25:61")
    playlist.write_text(broken, encoding="utf-8")
    bad_line = broken.splitlines().index('    schedule: {times: ["25:61"]}') + 1
    wait_until(
        lambda: (s := controller.store.config_status.get()) is not None and s.status == "error",
        15, "the refused edit in the store",
    )
    status = controller.store.config_status.get()
    assert status is not None
    assert f"{playlist}:{bad_line}:" in status.problems
    assert "'25:61' is not a time of day" in status.problems
    assert controller.playlists is good
    assert controller.scheduler.playlists is good
    assert controller.scheduler.pending_jobs() == sorted(
        [job_id("tin-sang", 5, 45), job_id("tin-them", 5, 50)]
    )
    refused = [r for r in caplog.records if "refused the edited playlists" in r.getMessage()]
    assert refused
    assert refused[0].levelno == logging.WARNING
    assert f"{playlist}:{bad_line}:" in refused[0].getMessage()

    out = fleet_output(rig.config, capsys)
    banner = out.splitlines()[0]
    assert banner.startswith("PLAYLISTS/FLEET EDIT REFUSED at ")
    assert "the previous schedule keeps running" in banner
    assert f"  {playlist}:{bad_line}:" in out

    # Fixed again: taken, and the banner says so.
    playlist.write_text(MORNING + EXTRA.replace("{time}", "05:55"), encoding="utf-8")
    wait_until(
        lambda: job_id("tin-them", 5, 55) in controller.scheduler.pending_jobs(), 15,
        "the fixed programme's job",
    )
    assert job_id("tin-them", 5, 50) not in controller.scheduler.pending_jobs()
    wait_until(
        lambda: (s := controller.store.config_status.get()) is not None and s.status == "ok",
        15, "the store to show the fixed edit",
    )
    assert fleet_output(rig.config, capsys).splitlines()[0].endswith(", ok")


@pytest.mark.parametrize(
    ("what", "edit", "marker"),
    [
        ("yaml syntax", lambda t: t.replace("targets: [all]", "targets: [all"),
         "    targets: [all"),
        ("unknown commune", lambda t: t.replace("targets: [all]", "targets: [xa-c]"),
         "    targets: [xa-c]"),
        ("unknown key", lambda t: t.replace("    targets: [all]", "    target: [all]"),
         "    target: [all]"),
    ],
)
def test_every_kind_of_broken_playlist_is_refused_by_reload(
    rig: LiveRig, what: str, edit: Callable[[str], str], marker: str
) -> None:
    controller = rig.controller
    playlist = rig.playlists / "tin.yaml"
    before = controller.scheduler.pending_jobs()
    text = edit(MORNING)
    playlist.write_text(text, encoding="utf-8")
    result = controller.reload()
    assert not result.ok, what
    line = text.splitlines().index(marker) + 1
    assert any(p.file == str(playlist) and p.line == line for p in result.problems), (
        result.report()
    )
    assert controller.scheduler.pending_jobs() == before


def test_a_broken_fleet_is_refused_and_the_old_one_kept(rig: LiveRig) -> None:
    controller = rig.controller
    fleet = controller.fleet
    text = FLEET.replace("- {id: b-01, name: Cụm B1}", "- {id: a-01, name: X}")
    rig.fleet_path.write_text(text, encoding="utf-8")
    lines = text.splitlines()
    first = lines.index("        - {id: a-01, name: Cụm A1}") + 1
    again = lines.index("        - {id: a-01, name: X}") + 1
    result = controller.reload()
    assert not result.ok
    assert [(p.file, p.line) for p in result.problems] == [(str(rig.fleet_path), again)]
    assert f"already used at line {first}" in result.problems[0].message
    assert controller.fleet is fleet


def test_an_edit_withdraws_a_play_already_sent_for_an_occurrence_it_moves(
    tmp_path: Path, broker: BrokerUnderTest
) -> None:
    playlists = tmp_path / "playlists"
    playlists.mkdir()
    tone(playlists / "tin.wav", 0.3)
    playlist = playlists / "tin.yaml"
    playlist.write_text(MORNING.replace("05:45", "05:20"), encoding="utf-8")
    # 05:00: 05:20 is closer than the lead time, so it is sent at once.
    live = LiveRig(tmp_path, broker, fleet=FLEET, playlists=playlists,
                   clock=ManualClock(utc_of(5, 0)), reload_interval_s=0)
    try:
        live.agent("a-01", ["xa-a", "tinh-thu"])
        controller = live.start()
        store = controller.store
        old = job_id("tin-sang", 5, 20).removeprefix("occ:")
        new = job_id("tin-sang", 5, 25).removeprefix("occ:")
        wait_until(lambda: store.events.play_states(old).get("a-01") == "delivered", 15,
                   "the agent to hold the 05:20 play")

        playlist.write_text(MORNING.replace("05:45", "05:25"), encoding="utf-8")
        result = controller.reload()
        assert result.ok
        assert result.withdrawn == [old]
        wait_until(lambda: store.events.play_states(old).get("a-01") == "interrupted", 15,
                   "the agent to drop the moved play")
        reasons = [e["reason"] for e in store.events.of_play(old) if e["kind"] == "interrupted"]
        assert reasons == ["stopped before it started"]
        wait_until(lambda: store.events.play_states(new).get("a-01") == "delivered", 15,
                   "the agent to hold the 05:25 play")
        assert store.dispatches.outcome("tin-sang", utc_of(5, 20)) == "sent"
    finally:
        live.stop()


def test_an_edit_withdraws_every_play_of_an_occurrence_sent_per_audio_profile(
    tmp_path: Path, broker: BrokerUnderTest
) -> None:
    """xa-b's cluster has full-range speakers, xa-a's horns: the occurrence went out as a
    play per profile, and moving it withdraws both."""
    playlists = tmp_path / "playlists"
    playlists.mkdir()
    tone(playlists / "tin.wav", 0.3)
    playlist = playlists / "tin.yaml"
    playlist.write_text(MORNING.replace("05:45", "05:20"), encoding="utf-8")
    fleet = FLEET.replace("{id: b-01, name: Cụm B1}", "{id: b-01, name: Cụm B1, "
                          "audio_profile: full-range}")
    live = LiveRig(tmp_path, broker, fleet=fleet, playlists=playlists,
                   clock=ManualClock(utc_of(5, 0)), reload_interval_s=0)
    try:
        live.agent("a-01", ["xa-a", "tinh-thu"])
        live.agent("b-01", ["xa-b", "tinh-thu"])
        controller = live.start()
        store = controller.store
        old = job_id("tin-sang", 5, 20).removeprefix("occ:")
        parts = {"a-01": f"{old}+horn", "b-01": f"{old}+full-range"}

        def reached(cluster: str, kind: str) -> Callable[[], bool]:
            return lambda: store.events.play_states(parts[cluster]).get(cluster) == kind

        for cluster, play_id in parts.items():
            wait_until(reached(cluster, "delivered"), 15, f"{cluster} to hold {play_id}")

        playlist.write_text(MORNING.replace("05:45", "05:25"), encoding="utf-8")
        result = controller.reload()
        assert result.ok
        assert result.withdrawn == [parts["a-01"], parts["b-01"]]
        for cluster, play_id in parts.items():
            wait_until(reached(cluster, "interrupted"), 15, f"{cluster} to drop {play_id}")
    finally:
        live.stop()
