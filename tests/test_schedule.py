"""Scheduling semantics on an injected clock (docs/scheduling.md), across days, reloads
and restarts: what the scheduler fires is what plan() lists, nothing plays twice,
nothing is skipped silently, every miss is recorded with its reason, and a start closer
than the lead time is sent at once."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from textwrap import dedent
from zoneinfo import ZoneInfo

import pytest
from schedule_support import FLEET, HCM, LEAD, PLAYLIST, Rig, local

from controller.schedule import APPROVAL_RETRY, REPLAN_EVERY, Occurrence, plan
from protocol.clock import ManualClock

# A Friday; the Saturday after it is the weekly programme's day.
FRI = date(2026, 11, 27)
SAT = FRI + timedelta(days=1)
MON = FRI + timedelta(days=3)


def clock_at(at: datetime) -> ManualClock:
    return ManualClock(at.astimezone(UTC))


def occ(rig: Rig, programme: str, start: datetime) -> Occurrence:
    p = rig.playlists.programmes[programme]
    return Occurrence(programme, start.astimezone(UTC), (start + p.lateness).astimezone(UTC))


def approve(rig: Rig, programme: str) -> None:
    rig.approvals.approve(
        rig.playlists.programmes[programme], "Cán bộ A", rig.clock.now(), fleet=rig.fleet,
        source="cli",
    )


# --- the preview agrees with what fires ----------------------------------------------------


BERLIN = ZoneInfo("Europe/Berlin")
NIGHT = PLAYLIST + """\
  - id: dem
    name: Đêm
    bulletins: [{files: [tin.wav]}]
    schedule: {times: ["02:30"]}
    targets: [a-01]
"""


@pytest.mark.parametrize(
    ("tz", "first_day"),
    [(HCM, FRI), (BERLIN, date(2027, 3, 26))],  # Berlin: across the spring-forward night
    ids=["Asia/Ho_Chi_Minh", "Europe/Berlin-DST"],
)
def test_what_the_scheduler_fires_is_what_plan_lists(
    tmp_path: Path, tz: ZoneInfo, first_day: date
) -> None:
    t0 = local(first_day, 0, 0, tz)
    end = t0 + timedelta(days=4)
    clock = clock_at(t0)
    rig = Rig(tmp_path, clock, tz=tz, playlist=NIGHT)
    approve(rig, "phap-luat")
    rig.run(until=end)

    expected = [o for o in plan(rig.playlists, t0, end + LEAD, tz) if o.start - LEAD <= end]
    assert rig.distributor.play_ids() == [o.play_id for o in expected]
    assert {"tin-sang", "tin-chieu", "phap-luat", "chien-dich", "dem"} == {
        o.programme for o in expected
    }
    for sent, o in zip(rig.distributor.sent, expected, strict=True):
        # an absolute start, sent lead_time ahead (to the minute the test clock steps by)
        assert sent.spec.start_at == o.start
        assert sent.spec.latest_start == o.latest_start
        assert o.start - LEAD <= sent.at < o.start - LEAD + timedelta(minutes=1)
    # every occurrence recorded once, as sent
    log = rig.store.dispatches.log()
    assert len(log) == len(expected)
    assert {r["outcome"] for r in log} == {"sent"}
    if tz is BERLIN:  # 02:30 does not exist on 28 March 2027: it airs at 03:30 CEST
        night = [o.start.astimezone(tz) for o in expected if o.programme == "dem"]
        assert [t.strftime("%d %H:%M") for t in night] == [
            "26 02:30", "27 02:30", "28 03:30", "29 02:30"
        ]


def test_planned_jobs_are_the_plan_of_the_window_due_lead_time_ahead(tmp_path: Path) -> None:
    now = local(FRI, 5, 20)
    rig = Rig(tmp_path, clock_at(now))
    start, end = rig.scheduler.window(now)
    expected = [o for o in plan(rig.playlists, start, end, HCM) if o.latest_start >= now]
    jobs = rig.scheduler.planned()
    assert [j.occurrence for j in jobs] == expected
    assert [o.programme for o in expected] == ["tin-sang"]
    assert all(j.due == j.occurrence.start - LEAD for j in jobs)
    assert rig.scheduler.pending_jobs() == sorted(o.job_id for o in expected)


# --- lead time ---------------------------------------------------------------------------


def test_a_start_closer_than_the_lead_time_is_sent_at_once(tmp_path: Path) -> None:
    now = local(FRI, 5, 50)  # 10 minutes before 06:00, the lead time is 30 minutes
    rig = Rig(tmp_path, clock_at(now))
    [job] = [j for j in rig.scheduler.planned() if j.occurrence.programme == "tin-sang"]
    assert job.due < now  # APScheduler runs a job whose run date has passed at once
    assert rig.fire_due() == [job.occurrence.play_id]
    [sent] = rig.distributor.sent
    assert sent.at == now
    assert sent.spec.start_at == local(FRI, 6, 0)  # the absolute start is kept


def test_a_restart_within_the_lateness_still_sends_late_rather_than_lose_it(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, clock_at(local(FRI, 5, 0)))
    rig.restart(local(FRI, 6, 4))  # down from 05:00 to 06:04; 06:00 may start until 06:10
    rig.run(until=local(FRI, 6, 5))
    [sent] = rig.distributor.sent
    assert sent.spec.play_id == occ(rig, "tin-sang", local(FRI, 6, 0)).play_id
    assert sent.at == local(FRI, 6, 4)


# --- audio profiles ------------------------------------------------------------------------


def test_clusters_of_two_audio_profiles_get_one_play_each_with_their_own_audio(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, clock_at(local(FRI, 5, 30)))
    hall = "    - id: xa-b\n      name: Xã B\n"
    assert hall in FLEET
    rig.fleet_path.write_text(
        FLEET.replace(hall, hall + "      audio_profile: full-range\n"), encoding="utf-8"
    )
    rig.reload()

    morning = occ(rig, "tin-sang", local(FRI, 6, 0))  # targets: all
    assert rig.dispatcher(morning) == "sent"
    sent = {s.spec.play_id: s.spec for s in rig.distributor.sent}
    horn, full = sent[f"{morning.play_id}+horn"], sent[f"{morning.play_id}+full-range"]
    assert len(sent) == 2
    assert (horn.clusters, full.clusters) == (["a-01", "a-02"], ["b-01"])
    [horn_audio], [full_audio] = horn.items, full.items
    source = rig.folder / "playlists" / "tin.wav"
    # The same file, prepared for each: the library's horn and full-range preparations.
    assert horn_audio.sha256 == rig.library.prepare([source], profile="horn").sha256
    assert full_audio.sha256 == rig.library.prepare([source], profile="full-range").sha256
    assert horn_audio.sha256 != full_audio.sha256
    assert (horn.start_at, horn.level, horn.bulletin) == (full.start_at, full.level, full.bulletin)
    assert rig.outcome("tin-sang", local(FRI, 6, 0)) == ("sent", None)  # one occurrence

    # Clusters that share one profile get one play under the occurrence's own id.
    rig.distributor.sent.clear()
    campaign = occ(rig, "chien-dich", local(FRI, 7, 0))  # targets: xa-b
    assert rig.dispatcher(campaign) == "sent"
    [only] = [s.spec for s in rig.distributor.sent]
    assert only.play_id == campaign.play_id
    assert [item.sha256 for item in only.items] == [full_audio.sha256]


# --- no double plays, no silent skips, restarts ---------------------------------------------


def test_dispatching_an_occurrence_twice_sends_it_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clock_at(local(FRI, 5, 30)))
    morning = occ(rig, "tin-sang", local(FRI, 6, 0))
    assert rig.dispatcher(morning) == "sent"
    assert rig.dispatcher(morning) == "skipped"
    rig.scheduler._fire(morning)
    rig.replan()
    rig.fire_due()
    assert rig.distributor.play_ids() == [morning.play_id]


def test_two_threads_dispatching_the_same_occurrence_send_it_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clock_at(local(FRI, 5, 30)))
    morning = occ(rig, "tin-sang", local(FRI, 6, 0))
    rig.distributor.gate = threading.Event()
    first = threading.Thread(target=rig.dispatcher, args=[morning])
    first.start()
    assert rig.distributor.entered.wait(10)
    # while the first is still sending: a re-plan does not plan it again, a second
    # dispatch leaves it alone
    assert morning not in rig.scheduler.upcoming(rig.clock.now())
    assert rig.dispatcher(morning) == "skipped"
    rig.distributor.gate.set()
    first.join(10)
    assert rig.distributor.play_ids() == [morning.play_id]


def test_a_restart_at_noon_neither_replays_the_morning_nor_forgets_the_afternoon(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, clock_at(local(FRI, 5, 0)))
    rig.run(until=local(FRI, 7, 0))
    morning = occ(rig, "tin-sang", local(FRI, 6, 0)).play_id
    assert morning in rig.distributor.play_ids()
    before = rig.distributor.play_ids()

    rig.restart(local(FRI, 12, 0))
    rig.run(until=local(FRI, 12, 30))
    assert rig.distributor.play_ids() == before  # nothing replayed at the restart

    rig.run(until=local(FRI, 18, 0))
    afternoon = occ(rig, "tin-chieu", local(FRI, 17, 30)).play_id
    assert rig.distributor.play_ids() == [*before, afternoon]
    assert rig.distributor.play_ids().count(morning) == 1
    assert rig.outcome("tin-sang", local(FRI, 6, 0)) == ("sent", None)
    assert rig.outcome("tin-chieu", local(FRI, 17, 30)) == ("sent", None)


def test_a_controller_down_past_the_lateness_records_the_miss_and_why(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clock_at(local(FRI, 5, 0)))
    rig.restart(local(FRI, 9, 0))  # down from 05:00 to 09:00
    missed = {
        ("tin-sang", local(FRI, 6, 0)),
        ("chien-dich", local(FRI, 7, 0)),
        ("chien-dich", local(FRI, 7, 15)),
    }
    for programme, start in missed:
        outcome = rig.outcome(programme, start)
        assert outcome is not None, (programme, start)
        assert outcome[0] == "missed"
        assert "was not running from about 2026-11-27 05:00:00" in (outcome[1] or "")
        assert "to 2026-11-27 09:00:00" in (outcome[1] or "")
    assert len(rig.store.dispatches.log()) == len(missed)
    assert rig.distributor.sent == []
    # and the rest of the day goes on
    rig.run(until=local(FRI, 18, 0))
    assert rig.distributor.play_ids() == [occ(rig, "tin-chieu", local(FRI, 17, 30)).play_id]


def test_the_very_first_start_invents_no_misses(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clock_at(local(FRI, 12, 0)))
    rig.run(until=local(FRI, 12, 10))
    assert rig.store.dispatches.log() == []


def test_across_days_and_restarts_every_occurrence_is_sent_or_missed_once(
    tmp_path: Path,
) -> None:
    t0 = local(FRI, 0, 0)
    rig = Rig(tmp_path, clock_at(t0))
    approve(rig, "phap-luat")
    rig.run(until=local(FRI, 6, 30))
    rig.restart(local(FRI, 16, 0))  # misses the campaign's 07:00 and 07:15
    rig.run(until=local(SAT, 18, 0))
    rig.restart(local(MON, 5, 45))  # misses Saturday 19:00 and all of Sunday
    rig.run(until=local(MON, 8, 0))
    end = local(MON, 8, 0)
    every = [o for o in plan(rig.playlists, t0, end + LEAD, HCM) if o.start - LEAD <= end]
    log = {(r["programme"], r["occurrence"].replace(tzinfo=UTC)): r for r in
           rig.store.dispatches.log()}
    assert set(log) == {(o.programme, o.start) for o in every}  # nothing silently skipped
    sent = rig.distributor.play_ids()
    assert len(sent) == len(set(sent))  # nothing twice
    assert {o.play_id for o in every if log[(o.programme, o.start)]["outcome"] == "sent"} == set(
        sent
    )
    missed = sorted(
        o.start.astimezone(HCM).strftime("%a %H:%M") + " " + o.programme
        for o in every if log[(o.programme, o.start)]["outcome"] == "missed"
    )
    assert missed == [
        "Fri 07:15 chien-dich", "Sat 19:00 phap-luat", "Sun 06:00 tin-sang",
        "Sun 17:30 tin-chieu",
    ]
    reasons = {r["reason"] for r in log.values() if r["outcome"] == "missed"}
    assert all("the controller was not running from about" in (r or "") for r in reasons)


def test_a_failed_send_is_tried_again_and_otherwise_recorded_missed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clock_at(local(FRI, 5, 0)))
    failures = {"left": 1}

    def fail_once(_spec: object) -> bool:
        failures["left"] -= 1
        return failures["left"] >= 0

    rig.distributor.fail = fail_once
    rig.run(until=local(FRI, 5, 30))
    assert rig.distributor.sent == []  # the first attempt failed, nothing recorded
    assert rig.outcome("tin-sang", local(FRI, 6, 0)) is None
    rig.run(until=local(FRI, 5, 30) + REPLAN_EVERY)  # the next re-plan tries again
    assert rig.distributor.play_ids() == [occ(rig, "tin-sang", local(FRI, 6, 0)).play_id]

    rig.distributor.fail = lambda _spec: True  # the broker side keeps failing
    rig.run(until=local(FRI, 17, 50))
    outcome = rig.outcome("tin-chieu", local(FRI, 17, 30))
    assert outcome is not None
    assert outcome[0] == "missed"
    assert "could not send it before its latest start 2026-11-27 17:40:00" in (outcome[1] or "")


# --- reloads ----------------------------------------------------------------------------


def test_a_reload_swaps_the_jobs_and_leaves_what_was_sent_alone(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clock_at(local(FRI, 5, 45)))
    rig.fire_due()
    morning = occ(rig, "tin-sang", local(FRI, 6, 0))
    assert rig.distributor.play_ids() == [morning.play_id]
    rig.playlist_path.write_text(dedent(PLAYLIST).replace('"06:00"', '"06:00", "06:20"')
                                 .replace('"07:00"', '"06:40"'), encoding="utf-8")
    rig.reload()
    planned = [j.occurrence.job_id for j in rig.scheduler.planned()]
    assert planned == [
        occ(rig, "tin-sang", local(FRI, 6, 20)).job_id,
        occ(rig, "chien-dich", local(FRI, 6, 40)).job_id,
        occ(rig, "chien-dich", local(FRI, 6, 55)).job_id,
    ]
    assert rig.scheduler.pending_jobs() == sorted(planned)
    rig.run(until=local(FRI, 8, 0))
    # 06:00 was sent before the reload and is not sent again; 07:00 no longer exists
    assert rig.distributor.play_ids() == [
        morning.play_id,
        occ(rig, "tin-sang", local(FRI, 6, 20)).play_id,
        occ(rig, "chien-dich", local(FRI, 6, 40)).play_id,
        occ(rig, "chien-dich", local(FRI, 6, 55)).play_id,
    ]
    assert rig.outcome("chien-dich", local(FRI, 7, 0)) is None


def test_a_programme_removed_by_a_reload_is_neither_sent_nor_recorded(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clock_at(local(FRI, 5, 0)))
    text = dedent(PLAYLIST)
    rig.playlist_path.write_text(text[: text.index("  - id: tin-chieu")], encoding="utf-8")
    rig.reload()
    rig.run(until=local(FRI, 18, 0))
    assert [s.spec.programme for s in rig.distributor.sent] == ["tin-sang"]
    assert rig.store.dispatches.of_programme("tin-chieu") == {}


# --- approval -------------------------------------------------------------------------------


def test_an_unapproved_programme_waits_and_airs_once_approved(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clock_at(local(SAT, 18, 25)))
    rig.run(until=local(SAT, 18, 30))  # due at 18:30
    weekly = occ(rig, "phap-luat", local(SAT, 19, 0))
    assert weekly.play_id not in rig.distributor.play_ids()
    [job] = [j for j in rig.scheduler.planned() if j.occurrence == weekly]
    assert job.due == local(SAT, 18, 30) + APPROVAL_RETRY  # tried again soon
    approve(rig, "phap-luat")
    rig.run(until=local(SAT, 18, 32))
    assert rig.distributor.play_ids() == [weekly.play_id]
    assert rig.outcome("phap-luat", local(SAT, 19, 0)) == ("sent", None)


def test_an_occurrence_never_approved_is_missed_not_approved_in_time(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clock_at(local(SAT, 18, 0)))
    rig.run(until=local(SAT, 19, 40), step=timedelta(seconds=30))
    outcome = rig.outcome("phap-luat", local(SAT, 19, 0))
    assert outcome is not None
    assert outcome[0] == "missed"
    assert (outcome[1] or "").startswith("not approved in time")
    assert "2026-11-28 19:30:00" in (outcome[1] or "")  # its latest start
    assert "phap-luat" not in {s.spec.programme for s in rig.distributor.sent}


def test_a_changed_bulletin_needs_approval_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clock_at(local(SAT, 10, 0)))
    weekly = rig.playlists.programmes["phap-luat"]
    approve(rig, "phap-luat")
    assert rig.approvals.is_approved(weekly)
    from controller.samples import tone

    tone(rig.folder / "playlists" / "luat.wav", 0.5, freq=550)  # next week's recording
    assert not rig.approvals.is_approved(weekly)
    state = rig.approvals.state(weekly)
    assert state.previous is not None
    assert str(state.describe(HCM)).startswith("pending: its audio changed since Cán bộ A approved")
    # approvals are per programme: another programme is not approved by it
    assert rig.approvals.is_approved(rig.playlists.programmes["tin-sang"])  # needs none


def test_approval_survives_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clock_at(local(SAT, 12, 0)))
    approve(rig, "phap-luat")
    rig.restart(local(SAT, 18, 0))
    rig.run(until=local(SAT, 18, 31))
    assert occ(rig, "phap-luat", local(SAT, 19, 0)).play_id in rig.distributor.play_ids()
