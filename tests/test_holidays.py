"""The holiday calendar: lunar dates in Vietnam's time zone, the file's errors, and
programmes that skip holidays or air on them, in the plan, the preview and what fires."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
from schedule_support import HCM, LEAD, PLAYLIST, Rig, local

from controller.cli import main
from controller.fleet import load_fleet
from controller.holidays import HolidayCalendar, load_holidays, lunar_to_solar
from controller.playlist import load_playlists
from controller.schedule import plan
from protocol.clock import ManualClock
from protocol.config_errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

# Tết Nguyên Đán (1/1 âm lịch) as Vietnam kept it, over six decades. In 1968, 1985 and
# 2007 the Chinese calendar (drawn for UTC+8) put it on another day: 30 January 1968,
# 20 February 1985, 18 February 2007.
TET = {
    1968: date(1968, 1, 29),
    1970: date(1970, 2, 6),
    1975: date(1975, 2, 11),
    1985: date(1985, 1, 21),
    1990: date(1990, 1, 27),
    1995: date(1995, 1, 31),
    2000: date(2000, 2, 5),
    2007: date(2007, 2, 17),
    2010: date(2010, 2, 14),
    2017: date(2017, 1, 28),
    2020: date(2020, 1, 25),
    2024: date(2024, 2, 10),
    2025: date(2025, 1, 29),
    2026: date(2026, 2, 17),
    2027: date(2027, 2, 6),
}
CHINESE_NEW_YEAR = {1968: date(1968, 1, 30), 1985: date(1985, 2, 20), 2007: date(2007, 2, 18)}
GIO_TO = {2023: date(2023, 4, 29), 2024: date(2024, 4, 18), 2025: date(2025, 4, 7),
          2026: date(2026, 4, 26)}

CALENDAR = """\
holidays:
  - id: tet-nguyen-dan
    name: Tết Nguyên Đán
    lunar: "1/1"
    before: 1
    after: 3
  - id: gio-to-hung-vuong
    name: Giỗ Tổ Hùng Vương
    lunar: "10/3"
  - id: quoc-khanh
    name: Quốc khánh
    date: "2/9"
  - id: nghi-bu
    name: Nghỉ bù
    date: 2027-09-03
"""


def calendar(folder: Path, text: str = CALENDAR) -> Path:
    path = folder / "holidays.yaml"
    path.write_text(dedent(text), encoding="utf-8")
    return path


@pytest.mark.parametrize("year", sorted(TET))
def test_tet_falls_on_the_vietnamese_new_moon(year: int) -> None:
    assert lunar_to_solar(1, 1, year) == TET[year]
    if year in CHINESE_NEW_YEAR:  # not the Chinese calendar's date
        assert TET[year] != CHINESE_NEW_YEAR[year]


@pytest.mark.parametrize("year", sorted(GIO_TO))
def test_gio_to_is_the_tenth_day_of_the_third_lunar_month(year: int) -> None:
    assert lunar_to_solar(10, 3, year) == GIO_TO[year]


def test_a_lunar_thirtieth_in_a_short_month_is_its_last_day() -> None:
    # The 12th lunar month of 2024 (Ất Tỵ came on 29 January 2025) has 29 days: 30 Tết
    # is the 29th, the eve of Tết; in 2025 the month has 30 days.
    assert lunar_to_solar(30, 12, 2024) == date(2025, 1, 28)
    assert lunar_to_solar(30, 12, 2025) == date(2026, 2, 16)
    assert lunar_to_solar(1, 1, 1800) is None  # outside the years the calendar knows


def test_the_calendar_lists_each_day_off(tmp_path: Path) -> None:
    cal = load_holidays(calendar(tmp_path))
    days = cal.between(date(2027, 1, 1), date(2027, 12, 31))
    assert [(d.isoformat(), sorted(ids)) for d, ids in days] == [
        ("2027-02-05", ["tet-nguyen-dan"]),  # 30 Tết
        ("2027-02-06", ["tet-nguyen-dan"]),  # mùng 1
        ("2027-02-07", ["tet-nguyen-dan"]),
        ("2027-02-08", ["tet-nguyen-dan"]),
        ("2027-02-09", ["tet-nguyen-dan"]),  # mùng 4
        ("2027-04-16", ["gio-to-hung-vuong"]),
        ("2027-09-02", ["quoc-khanh"]),
        ("2027-09-03", ["nghi-bu"]),  # one year only
    ]
    assert not cal.covers(date(2028, 9, 3), None)
    assert cal.covers(date(2028, 9, 2), ["quoc-khanh"])
    assert not cal.covers(date(2028, 9, 2), ["tet-nguyen-dan"])


def test_the_shipped_calendar_loads() -> None:
    cal = load_holidays(ROOT / "config" / "holidays.yaml")
    assert cal.on(date(2026, 2, 17)) == {"tet-nguyen-dan"}
    assert cal.on(date(2026, 4, 26)) == {"gio-to-hung-vuong"}
    assert cal.on(date(2026, 4, 30)) == {"giai-phong-mien-nam"}


@pytest.mark.parametrize(
    ("entry", "line", "says"),
    [
        ('lunar: "32/1"', 3, "month 1 has at most 30 days"),
        ('date: "31/4"', 3, "month 4 has at most 30 days"),
        ('lunar: "1/13"', 3, "there is no month 13"),
        ("lunar: 1-1", 3, "write day/month"),
        ('date: "1/1"\n    lunar: "1/1"', 1, "either date:"),
        ("before: 1", 1, "either date:"),
        ('lunar: "1/1"\n    afer: 3', 4, "did you mean 'after'"),
        ('date: "2027-02-30"', 3, "is not a date"),
    ],
)
def test_a_mistake_in_the_calendar_is_named_with_its_line(
    tmp_path: Path, entry: str, line: int, says: str
) -> None:
    path = calendar(tmp_path, f"holidays:\n  - id: le\n    name: Lễ\n    {entry}\n")
    with pytest.raises(ConfigError) as exc:
        load_holidays(path)
    [problem] = exc.value.problems
    assert problem.file == str(path)
    assert problem.line == line + 1
    assert says in problem.message


def test_a_holiday_id_used_twice_is_refused_where_it_is_repeated(tmp_path: Path) -> None:
    path = calendar(tmp_path, CALENDAR + '  - id: quoc-khanh\n    name: Lại\n    date: "3/9"\n')
    with pytest.raises(ConfigError) as exc:
        load_holidays(path)
    [problem] = exc.value.problems
    assert (problem.line, problem.col) == (16, 9)
    assert "already used at" in problem.message
    assert ":10;" in problem.message


# --- programmes that skip holidays or air on them --------------------------------------------

FLEET = ROOT / "config" / "fleet.yaml"


def playlist(folder: Path, schedule: str) -> Path:
    (folder / "audio").mkdir(exist_ok=True)
    shutil.copy(ROOT / "playlists" / "audio" / "nhac-hieu.wav", folder / "audio" / "tin.wav")
    path = folder / "list.yaml"
    path.write_text(
        "programmes:\n"
        "  - id: tin\n"
        "    name: Tin\n"
        "    bulletins: [{files: [audio/tin.wav]}]\n"
        f"    schedule: {schedule}\n"
        "    targets: [all]\n",
        encoding="utf-8",
    )
    return path


def days_aired(tmp_path: Path, schedule: str, first: date, days: int) -> list[date]:
    fleet = load_fleet(FLEET)
    cal = load_holidays(calendar(tmp_path))
    playlists = load_playlists([playlist(tmp_path, schedule)], fleet, holidays=cal)
    start = datetime.combine(first, time(0), HCM)
    return [o.start.astimezone(HCM).date()
            for o in plan(playlists, start, start + timedelta(days=days), HCM)]


def test_skip_holidays_leaves_out_every_day_of_tet(tmp_path: Path) -> None:
    aired = days_aired(tmp_path, '{times: ["06:00"], skip: holidays}', date(2027, 2, 3), 9)
    assert aired == [date(2027, 2, 3), date(2027, 2, 4), date(2027, 2, 10), date(2027, 2, 11)]


def test_skip_names_the_holidays_to_leave_out(tmp_path: Path) -> None:
    aired = days_aired(
        tmp_path, '{times: ["06:00"], skip: [gio-to-hung-vuong]}', date(2027, 2, 5), 1
    )
    assert aired == [date(2027, 2, 5)]  # 30 Tết is not Giỗ Tổ
    aired = days_aired(tmp_path, '{times: ["06:00"], skip: gio-to-hung-vuong}',
                       date(2027, 4, 15), 3)
    assert aired == [date(2027, 4, 15), date(2027, 4, 17)]


def test_on_holidays_airs_on_those_days_only(tmp_path: Path) -> None:
    aired = days_aired(
        tmp_path, '{times: ["07:00"], on_holidays: [tet-nguyen-dan]}', date(2027, 1, 1), 365
    )
    assert aired == [date(2027, 2, d) for d in range(5, 10)]
    everyone = days_aired(tmp_path, '{times: ["07:00"], on_holidays: holidays}',
                          date(2027, 1, 1), 365)
    assert len(everyone) == 8


@pytest.mark.parametrize(
    ("schedule", "says"),
    [
        ('{times: ["06:00"], skip: [tet-nguyen-dang]}',
         "'tet-nguyen-dang' is not in the holiday calendar"),
        ('{times: ["06:00"], on_holidays: [tet], weekdays: [sat]}',
         "either on_holidays or weekdays"),
    ],
)
def test_a_holiday_a_playlist_gets_wrong_is_named_with_its_line(
    tmp_path: Path, schedule: str, says: str
) -> None:
    cal = load_holidays(calendar(tmp_path))
    path = playlist(tmp_path, schedule)
    with pytest.raises(ConfigError) as exc:
        load_playlists([path], load_fleet(FLEET), holidays=cal)
    assert any(p.file == str(path) and p.line == 5 and says in p.message
               for p in exc.value.problems), exc.value.problems
    if "dang" in says:
        assert "did you mean 'tet-nguyen-dan'?" in str(exc.value)


def test_skip_holidays_without_a_calendar_says_where_to_name_one(tmp_path: Path) -> None:
    path = playlist(tmp_path, '{times: ["06:00"], skip: holidays}')
    with pytest.raises(ConfigError) as exc:
        load_playlists([path], load_fleet(FLEET))
    [problem] = exc.value.problems
    assert problem.line == 5
    assert "no holiday calendar" in problem.message
    assert "holidays: holidays.yaml" in problem.message


# --- the preview and what fires agree -------------------------------------------------------

# Tết 2027 is Saturday 6 February: the weekly law programme would air on its first day.
TET_PLAYLIST = PLAYLIST.replace(
    'schedule: {times: ["19:00"], weekdays: [sat]}',
    'schedule: {times: ["19:00"], weekdays: [sat], skip: holidays}',
).replace(
    'schedule: {times: ["06:00"]}',
    'schedule: {times: ["06:00"], skip: [tet-nguyen-dan]}',
)


def test_what_fires_over_tet_is_the_preview_without_the_holidays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert TET_PLAYLIST.count("skip:") == 2
    first, days = date(2027, 2, 4), 3
    start = local(first, 0)
    end = start + timedelta(days=days)
    rig = Rig(tmp_path, ManualClock((start - LEAD).astimezone(UTC)), playlist=TET_PLAYLIST,
              holidays=CALENDAR)
    rig.approvals.approve(
        rig.playlists.programmes["phap-luat"], "Cán bộ A", rig.clock.now(), fleet=rig.fleet,
        source="cli",
    )
    cfg = tmp_path / "controller.yaml"
    cfg.write_text(
        f"fleet: {rig.fleet_path}\nplaylists: [{rig.playlist_path}]\n"
        f"holidays: {rig.holidays_path}\n"
        f"store_url: sqlite:///{tmp_path / 'controller.db'}\n"
        "private_key: controller.key\ncontent_dir: content\n",
        encoding="utf-8",
    )
    with pytest.raises(SystemExit) as exit_:
        main(["schedule", "--config", str(cfg), "--from", "2027-02-04", "--to", "+3d", "--json"])
    assert exit_.value.code == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    rig.run(until=end - LEAD - timedelta(minutes=1))
    rig.stop()

    assert [r["play_id"] for r in rows] == rig.distributor.play_ids()
    assert [r["play_id"] for r in rows] == [o.play_id for o in plan(rig.playlists, start, end, HCM)]
    aired = {(r["programme"], datetime.fromisoformat(r["start"]).astimezone(HCM).date())
             for r in rows}
    assert ("tin-sang", date(2027, 2, 4)) in aired  # a working day
    assert ("tin-sang", date(2027, 2, 5)) not in aired  # 30 Tết
    assert ("tin-sang", date(2027, 2, 6)) not in aired  # mùng 1
    assert ("tin-chieu", date(2027, 2, 6)) in aired  # it does not skip holidays
    assert not any(p == "phap-luat" for p, _ in aired)  # Saturday, but the first day of Tết

    with pytest.raises(SystemExit):
        main(["schedule", "--config", str(cfg), "--from", "2027-02-04", "--to", "+3d"])
    assert (
        "Holiday: Tết Nguyên Đán (tet-nguyen-dan): 2027-02-05 to 2027-02-06; skipped by "
        "phap-luat, tin-sang\n"
    ) in capsys.readouterr().out


def test_an_empty_calendar_skips_nothing() -> None:
    assert not HolidayCalendar().covers(date(2027, 2, 6), None)


def test_a_config_naming_no_calendar_gets_the_national_holidays(tmp_path: Path) -> None:
    from controller.holidays import BUILTIN_HOLIDAYS
    from controller.sources import load_sources

    cfg = tmp_path / "controller.yaml"
    cfg.write_text(
        f"fleet: {FLEET}\nplaylists: [{ROOT / 'playlists'}]\nprivate_key: k\ncontent_dir: c\n",
        encoding="utf-8",
    )
    sources = load_sources(cfg)
    assert sources.playlists.holidays is not None
    assert sources.playlists.holidays.file == str(BUILTIN_HOLIDAYS)
    example = load_holidays(ROOT / "config" / "holidays.yaml")
    assert sources.playlists.holidays.holidays == example.holidays
    law = sources.playlists.programmes["phap-luat-hang-tuan"]
    assert not law.schedule.airs_on(date(2027, 2, 6))  # Saturday, the first day of Tết
