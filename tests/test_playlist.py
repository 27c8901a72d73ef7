"""Playlists: the examples, located errors, and when programmes air (DST included)."""

from __future__ import annotations

import json
import shutil
import wave
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from textwrap import dedent
from zoneinfo import ZoneInfo

import pytest

from controller.fleet import Fleet, load_fleet
from controller.holidays import load_holidays
from controller.playlist import (
    PlaylistFile,
    Programme,
    json_schema,
    load_playlists,
    write_schemas,
)
from protocol.config_errors import ConfigError, Problem
from protocol.validation import validate
from protocol.yamlload import load_yaml_text

ROOT = Path(__file__).resolve().parent.parent
PLAYLISTS = ROOT / "playlists"
HOLIDAYS = ROOT / "config" / "holidays.yaml"
HCM = ZoneInfo("Asia/Ho_Chi_Minh")
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return load_fleet(ROOT / "config" / "fleet.yaml")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A playlist folder with one real audio file, audio/tin.wav."""
    (tmp_path / "audio").mkdir()
    shutil.copy(PLAYLISTS / "audio" / "nhac-hieu.wav", tmp_path / "audio" / "tin.wav")
    return tmp_path


def write(folder: Path, text: str, name: str = "list.yaml") -> Path:
    path = folder / name
    path.write_text(dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(paths: list[Path], fleet: Fleet) -> list[Problem]:
    with pytest.raises(ConfigError) as exc:
        load_playlists(paths, fleet)
    return exc.value.problems


def programme(schedule: str) -> Programme:
    """A programme airing on the schedule written in YAML (audio files are not checked)."""
    lines = "".join(f"      {line}\n" for line in dedent(schedule).strip().splitlines())
    data, where = load_yaml_text(
        "programmes:\n  - id: p\n    name: P\n    bulletins: [{files: [a.wav]}]\n"
        f"    targets: [all]\n    schedule:\n{lines}",
        "inline.yaml",
    )
    parsed = validate(PlaylistFile, data, where)
    assert isinstance(parsed, PlaylistFile), "\n".join(str(p) for p in parsed)
    return parsed.programmes[0]


def local(times: list[datetime], tz: ZoneInfo) -> list[str]:
    return [t.astimezone(tz).strftime("%a %Y-%m-%d %H:%M") for t in times]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- the examples -----------------------------------------------------------------------------


@pytest.mark.parametrize("fleet_file", ["fleet.yaml", "fleet-2025-07-01.yaml"])
def test_the_example_playlists_load_against_both_fleets(fleet_file: str) -> None:
    fleet = load_fleet(ROOT / "config" / fleet_file)
    playlists = load_playlists(
        [PLAYLISTS], fleet, tz=HCM, today=date(2026, 11, 26), holidays=load_holidays(HOLIDAYS)
    )
    assert set(playlists.programmes) == {
        "thoi-su-sang", "thoi-su-chieu", "tiep-song-vov1-trua", "phap-luat-hang-tuan",
        "sot-xuat-huyet-2027",
    }
    assert playlists.warnings == []
    for p in playlists.programmes.values():
        assert fleet.resolve(p.targets, p.exclude), p.id
        assert p.source.file.startswith(str(PLAYLISTS))
        for bulletin in p.bulletins:
            for audio in bulletin.audio():
                assert audio.is_absolute()
                assert audio.is_file()
    news = playlists.programmes["thoi-su-sang"]
    assert len(fleet.resolve(news.targets)) == 73
    assert news.lateness == timedelta(minutes=10)
    assert news.source.line == 11


def test_the_example_programmes_air_when_their_comments_say(fleet: Fleet) -> None:
    playlists = load_playlists([PLAYLISTS], fleet, holidays=load_holidays(HOLIDAYS))
    week = (utc(2026, 11, 30), utc(2026, 12, 7))  # Monday to Monday (UTC)
    news = list(playlists.programmes["thoi-su-chieu"].occurrences(*week, HCM))
    assert len(news) == 7
    assert {t.astimezone(HCM).strftime("%H:%M") for t in news} == {"17:30"}
    law = list(playlists.programmes["phap-luat-hang-tuan"].occurrences(*week, HCM))
    assert local(law, HCM) == ["Sat 2026-12-05 19:00"]
    tet = (utc(2027, 1, 31), utc(2027, 2, 21))  # Tết 2027 is Saturday 6 February
    law = list(playlists.programmes["phap-luat-hang-tuan"].occurrences(*tet, HCM))
    assert local(law, HCM) == ["Sat 2027-02-13 19:00", "Sat 2027-02-20 19:00"]
    dengue = playlists.programmes["sot-xuat-huyet-2027"]
    assert dengue.level == "priority"
    first = dengue.next_after(utc(2026, 11, 26), HCM)
    assert first is not None
    assert local([first], HCM) == ["Mon 2027-05-03 07:00"]
    holiday = list(dengue.occurrences(utc(2027, 9, 1), utc(2027, 9, 5), HCM))
    assert local(holiday, HCM) == [
        "Wed 2027-09-01 07:00", "Wed 2027-09-01 07:10",
        "Wed 2027-09-01 16:30", "Wed 2027-09-01 16:40",
    ]  # Friday 3 September is excepted
    assert dengue.next_after(utc(2027, 11, 1), HCM) is None


def test_the_example_audio_is_small_real_wav() -> None:
    files = sorted((PLAYLISTS / "audio").glob("*.wav"))
    assert len(files) >= 5
    for path in files:
        assert path.stat().st_size < 50_000, path
        with wave.open(str(path)) as w:
            assert w.getnframes() > 0


def test_every_example_names_its_schema() -> None:
    for path in [*PLAYLISTS.glob("*.yaml")]:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first == "# yaml-language-server: $schema=../docs/schema/playlist.schema.json"
    for name in ("fleet.yaml", "fleet-2025-07-01.yaml"):
        first = (ROOT / "config" / name).read_text(encoding="utf-8").splitlines()[0]
        assert first == "# yaml-language-server: $schema=../docs/schema/fleet.schema.json"


def test_the_committed_schemas_are_up_to_date(tmp_path: Path) -> None:
    written = write_schemas(tmp_path)
    assert {p.name for p in written} == {
        "playlist.schema.json", "fleet.schema.json", "controller.schema.json",
        "holidays.schema.json",
    }
    for path in written:
        committed = ROOT / "docs" / "schema" / path.name
        assert committed.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
            f"{committed} is stale: regenerate it with controller.playlist.write_schemas"
        )
    schema = json_schema()
    assert schema["$defs"]["Schedule"]["additionalProperties"] is False
    assert "from" in schema["$defs"]["Schedule"]["properties"]
    assert json.loads(json.dumps(schema)) == schema


# --- located errors ---------------------------------------------------------------------------


GOOD = """
programmes:
  - id: tin-sang
    name: Tin sáng
    bulletins:
      - files: [audio/tin.wav]
    schedule:
      times: ["06:00"]
    targets: [xa-tan-binh]
"""


def test_a_good_playlist_loads(folder: Path, fleet: Fleet) -> None:
    path = write(folder, GOOD)
    playlists = load_playlists([path], fleet)
    assert list(playlists.programmes) == ["tin-sang"]
    assert playlists.files == [path]
    p = playlists.programmes["tin-sang"]
    assert p.bulletins[0].files == [folder / "audio" / "tin.wav"]
    assert p.source.file == str(path)
    assert p.source.line == 2


@pytest.mark.parametrize(
    ("old", "new", "line", "col", "text"),
    [
        ("    targets:", "    tagets:", 8, 5, "unknown key 'tagets'; did you mean 'targets'?"),
        ('"06:00"', '"25:61"', 7, 15, "'25:61' is not a time of day"),
        ("[xa-tan-binh]", "[xa-tan-bnh]", 8, 15, "unknown target 'xa-tan-bnh'; did you mean "
                                                  "'xa-tan-binh'?"),
        ("audio/tin.wav", "audio/tn.wav", 5, 17, "audio file 'audio/tn.wav' not found"),
        ('times: ["06:00"]', 'times: ["06:00"]\n      valid_from: 2026-02-30', 8, 19,
         "February 2026 has 28 days"),
        ("name: Tin sáng", 'name: "Tin sáng', 3, 11, "is a closing quote missing?"),
        ("    bulletins:", "    level: khẩn cấp\n    bulletins:", 4, 12, "write one of 'normal', "
                                                                        "'priority' or "
                                                                        "'emergency'"),
        ("[xa-tan-binh]", "[xa-tan-binh, tag:chợ]", 8, 28, "did you mean 'tag:cho'?"),
    ],
)
def test_one_mistake_gives_one_problem_at_its_line(
    folder: Path, fleet: Fleet, old: str, new: str, line: int, col: int, text: str
) -> None:
    path = write(folder, GOOD.replace(old, new, 1))
    [problem] = problems([path], fleet)
    assert problem.file == str(path)
    assert (problem.line, problem.col) == (line, col), str(problem)
    assert text in problem.message


def test_a_single_target_may_be_written_without_brackets(folder: Path, fleet: Fleet) -> None:
    path = write(folder, GOOD.replace("[xa-tan-binh]", "xa-tan-binh\n    exclude: tan-binh-01"))
    p = load_playlists([path], fleet).programmes["tin-sang"]
    assert p.targets == ["xa-tan-binh"]
    assert fleet.resolve(p.targets, p.exclude) == ["tan-binh-02"]
    typo = write(folder, GOOD.replace("[xa-tan-binh]", "xa-tan-bnh"))
    [problem] = problems([typo], fleet)
    assert (problem.line, problem.col) == (8, 5)
    assert "did you mean 'xa-tan-binh'?" in problem.message


def test_every_mistake_of_a_file_is_reported(folder: Path, fleet: Fleet) -> None:
    path = write(folder, """
        programmes:
          - id: tin-sang
            name: Tin sáng
            bulletins:
              - files: [audio/tin.wav]
                volume: 120
            schedule:
              times: ["25:61", "6:00"]
              weekdays: [mon, tuesday]
            tagets: [all]
          - id: tin-toi
            name: Tin tối
            bulletins:
              - files: audio/tin.wav
            schedule:
              times: [1730]
              every_weeks: 2
            targets: [xa-tan-bnh]
            lateness: 10 minutes
          - id: tin-sang
            name: Tin sáng lần nữa
            bulletins: [{files: [audio/tin.wav]}]
            schedule: {times: ["06:00"], weekdays: dialy}
            targets: [all]
    """)
    found = [(p.line, p.message) for p in problems([path], fleet)]
    lines = [line for line, _ in found]
    assert lines == [6, 8, 9, 10, 15, 16, 18, 19, 20, 23], "\n".join(map(str, found))
    text = "\n".join(message for _, message in found)
    assert "missing key" not in text  # 'tagets' already says what is wrong
    for expected in [
        "out of range",
        "'25:61' is not a time of day",
        "did you mean 'tue'?",
        "did you mean 'targets'?",
        "needs `from: YYYY-MM-DD`",
        "1730 is a number, not a time",
        "did you mean 'xa-tan-binh'?",
        "is not a duration",
        "programme id 'tin-sang' is already used at",
        "did you mean 'daily'?",
    ]:
        assert expected in text


def test_duplicate_ids_across_files_name_the_first(folder: Path, fleet: Fleet) -> None:
    first = write(folder, GOOD, "a.yaml")
    second = write(folder, GOOD, "b.yaml")
    [problem] = problems([folder], fleet)
    assert problem.file == str(second)
    assert problem.line == 2
    assert f"already used at {first}:2" in problem.message


def test_errors_of_several_files_are_all_reported(folder: Path, fleet: Fleet) -> None:
    write(folder, GOOD.replace("06:00", "24:00"), "a.yaml")
    write(folder, "programmes: [\n", "b.yml")
    (folder / "notes.txt").write_text("not a playlist", encoding="utf-8")
    found = problems([folder], fleet)
    assert [(Path(p.file).name, p.line) for p in found] == [("a.yaml", 7), ("b.yml", 2)]


def test_a_missing_playlist_path_is_an_error(tmp_path: Path, fleet: Fleet) -> None:
    [problem] = problems([tmp_path / "nowhere"], fleet)
    assert "not found" in problem.message


def test_bad_schedules_are_explained(folder: Path, fleet: Fleet) -> None:
    path = write(folder, """
        programmes:
          - id: a
            name: A
            bulletins: [{files: audio/tin.wav}]
            schedule:
              times: ["06:00", "06:00"]
              weekdays: [sat]
              dates: [2026-09-02]
              valid_from: 2026-06-01
              valid_until: 2026-05-01
              repeat: {count: 30, gap: 1h}
            targets: [all]
    """)
    found = {p.line: p.message for p in problems([path], fleet)}
    assert sorted(found) == [6, 8, 10, 11]
    assert "06:00 is listed twice" in found[6]
    assert "either dates or weekdays" in found[8]
    assert "before valid_from" in found[10]
    assert "at most 24" in found[11] or "out of range" in found[11]


def test_warnings_do_not_stop_loading(folder: Path, fleet: Fleet) -> None:
    path = write(folder, """
        programmes:
          - id: dem
            name: Ban đêm
            bulletins: [{files: audio/tin.wav}]
            schedule:
              times: ["02:30"]
            targets: [all]
          - id: cu
            name: Đã hết hạn
            bulletins: [{files: audio/tin.wav}]
            schedule:
              times: ["06:00"]
              valid_until: 2026-01-31
            targets: [all]
          - id: khong-noi-nao
            name: Không nơi nào
            bulletins: [{files: audio/tin.wav}]
            schedule:
              times: ["06:00"]
            targets: [xa-tan-binh]
            exclude: [xa-tan-binh]
    """)
    playlists = load_playlists([path], fleet, tz=BERLIN, today=date(2026, 3, 1))
    assert len(playlists.programmes) == 3
    found = [(p.line, p.severity, p.message) for p in playlists.warnings]
    assert [(line, severity) for line, severity, _ in found] == [
        (6, "warning"), (12, "warning"), (20, "warning")
    ]
    assert "02:30 does not exist on 2026-03-29 in Europe/Berlin" in found[0][2]
    assert "it airs at 03:30" in found[0][2]
    assert "ended on 2026-01-31" in found[1][2]
    assert "contain no cluster" in found[2][2]
    assert str(playlists.warnings[0]).startswith(f"{path}:6:")
    assert ": warning: " in str(playlists.warnings[0])
    # the same file in a zone without DST has no DST warning
    quiet = load_playlists([path], fleet, tz=HCM, today=date(2026, 3, 1))
    assert [p.line for p in quiet.warnings] == [12, 20]


# --- when programmes air ----------------------------------------------------------------------


def test_a_daily_time_airs_every_local_day() -> None:
    p = programme('times: ["06:00", "17:30"]')
    got = list(p.occurrences(utc(2026, 1, 1), utc(2026, 1, 3), HCM))
    assert got == [utc(2026, 1, 1, 10, 30), utc(2026, 1, 1, 23), utc(2026, 1, 2, 10, 30),
                   utc(2026, 1, 2, 23)]
    assert all(t.tzinfo is UTC for t in got)


def test_the_window_is_half_open() -> None:
    p = programme('times: ["06:00"]')
    at = utc(2026, 1, 1, 23)  # 06:00 on 2 January in Hồ Chí Minh City
    assert list(p.occurrences(at, at + timedelta(days=1), HCM)) == [at]
    assert list(p.occurrences(at - timedelta(days=1), at, HCM)) == [at - timedelta(days=1)]
    assert list(p.occurrences(at + timedelta(seconds=1), at + timedelta(days=1), HCM)) == []


def test_weekdays_choose_the_local_day() -> None:
    p = programme('times: ["06:00"]\nweekdays: [mon, wed, fri]')
    got = list(p.occurrences(utc(2026, 1, 4), utc(2026, 1, 11), HCM))  # Sun 4 to Sun 11
    assert local(got, HCM) == ["Mon 2026-01-05 06:00", "Wed 2026-01-07 06:00",
                               "Fri 2026-01-09 06:00"]
    workdays = programme('times: ["06:00"]\nweekdays: workdays')
    assert len(list(workdays.occurrences(utc(2026, 1, 4), utc(2026, 1, 11), HCM))) == 5
    weekend = programme('times: ["06:00"]\nweekdays: weekend')
    assert local(list(weekend.occurrences(utc(2026, 1, 4), utc(2026, 1, 11), HCM)), HCM) == [
        "Sat 2026-01-10 06:00", "Sun 2026-01-11 06:00"
    ]  # 06:00 local is 23:00 UTC the day before: Sunday 4 January's is outside the window


@pytest.mark.parametrize(
    ("written", "days"),
    [
        ("[thứ hai, thứ tư, thứ sáu]", "Mon Wed Fri"),
        ("[Thứ Hai, Thu Tu, thu sau]", "Mon Wed Fri"),
        ("[T2, T4, T6]", "Mon Wed Fri"),
        ("[thứ 2, thứ 4, thứ 6]", "Mon Wed Fri"),
        ("[thứ bảy, chủ nhật]", "Sat Sun"),
        ("[T7, CN]", "Sat Sun"),
        ("chủ nhật", "Sun"),
        ("CN", "Sun"),
        ("T2-T6", "Mon Tue Wed Thu Fri"),
        ("thứ hai - thứ sáu", "Mon Tue Wed Thu Fri"),
        ("thứ bảy đến chủ nhật", "Sat Sun"),
        ("T6-T2", "Mon Fri Sat Sun"),
        ("hằng ngày", "Mon Tue Wed Thu Fri Sat Sun"),
        ("cuối tuần", "Sat Sun"),
        ("[mon, thứ tư, T6]", "Mon Wed Fri"),
    ],
)
def test_weekdays_written_in_vietnamese(written: str, days: str) -> None:
    p = programme(f'times: ["12:00"]\nweekdays: {written}')
    got = list(p.occurrences(utc(2026, 1, 5), utc(2026, 1, 12), HCM))  # Mon 5 to Mon 12
    assert " ".join(local(got, HCM)[i][:3] for i in range(len(got))) == days


def test_a_vietnamese_day_that_is_none_says_what_to_write(folder: Path, fleet: Fleet) -> None:
    path = write(folder, GOOD.replace(
        'times: ["06:00"]', 'times: ["06:00"]\n      weekdays: [thứ hai, thứ tám, chu nhut]'
    ))
    found = problems([path], fleet)
    assert [(p.line, p.col) for p in found] == [(8, 27), (8, 36)]
    assert "'thứ tám' is not a day: did you mean 'thứ năm'?" in found[0].message
    assert "did you mean 'chủ nhật'?" in found[1].message
    assert "T2 ... T7, CN" in found[1].message


@pytest.mark.parametrize(
    ("target", "clusters"),
    [
        ("Xã Tân Bình", ["tan-binh-01", "tan-binh-02"]),
        ("xa tan binh", ["tan-binh-01", "tan-binh-02"]),
        ("Tân Bình", ["tan-binh-01", "tan-binh-02"]),
        ("31399", ["tan-binh-01", "tan-binh-02"]),
        ("Ấp Tân Lợi", ["tan-binh-02"]),
        ("Chợ Tân Bình", ["tan-binh-02"]),
        ("Thị trấn Kinh Cùng", ["kinh-cung-01", "kinh-cung-02", "kinh-cung-03"]),
        ("HUYỆN CHÂU THÀNH A", ["bay-ngan-01", "bay-ngan-02", "mot-ngan-01", "mot-ngan-02",
                                "nhon-nghia-a-01", "rach-goi-01", "tan-hoa-01", "tan-hoa-02",
                                "thanh-xuan-01", "thanh-xuan-02", "truong-long-tay-01",
                                "truong-long-tay-02", "truong-long-tay-03"]),
    ],
)
def test_targets_by_name_or_code(
    folder: Path, fleet: Fleet, target: str, clusters: list[str]
) -> None:
    path = write(folder, GOOD.replace("[xa-tan-binh]", f'["{target}"]'))
    p = load_playlists([path], fleet).programmes["tin-sang"]
    assert fleet.resolve(p.targets, p.exclude) == clusters


def test_a_name_of_several_places_asks_which_one(folder: Path, fleet: Fleet) -> None:
    path = write(folder, GOOD.replace(
        "[xa-tan-binh]", "[Phụng Hiệp, Tân Bình]\n    exclude: [cho tan binh]"
    ))
    [problem] = problems([path], fleet)
    assert (problem.line, problem.col) == (8, 15)
    assert problem.message == (
        "targets: 'Phụng Hiệp' fits 2 places; did you mean huyen-phung-hiep (Huyện Phụng "
        "Hiệp, Tỉnh Hậu Giang) or xa-phung-hiep (Xã Phụng Hiệp, Huyện Phụng Hiệp)? Write its "
        "id or its full name"
    )
    fixed = write(folder, GOOD.replace(
        "[xa-tan-binh]", "[Xã Phụng Hiệp, Tân Bình]\n    exclude: [cho tan binh]"
    ))
    p = load_playlists([fixed], fleet).programmes["tin-sang"]
    assert fleet.resolve(p.targets, p.exclude) == ["phung-hiep-01", "phung-hiep-02",
                                                    "tan-binh-01"]


def test_a_misspelt_name_suggests_the_place(folder: Path, fleet: Fleet) -> None:
    path = write(folder, GOOD.replace("[xa-tan-binh]", '["Xã Tân Bìh"]'))
    [problem] = problems([path], fleet)
    assert (problem.line, problem.col) == (8, 15)
    assert "unknown target 'Xã Tân Bìh'; did you mean 'xa-tan-binh'?" in problem.message


def test_every_two_weeks_counts_from_the_anchor_week() -> None:
    p = programme('times: ["19:00"]\nweekdays: [sat]\nevery_weeks: 2\nfrom: 2026-01-07')
    got = list(p.occurrences(utc(2025, 12, 20), utc(2026, 2, 10), HCM))
    assert local(got, HCM) == [
        "Sat 2025-12-27 19:00", "Sat 2026-01-10 19:00", "Sat 2026-01-24 19:00",
        "Sat 2026-02-07 19:00",
    ]


def test_valid_from_until_and_excepted_dates_bound_the_days() -> None:
    p = programme(
        'times: ["07:00"]\nvalid_from: 2026-06-01\nvalid_until: 2026-06-04\n'
        "except: [2026-06-02]"
    )
    got = list(p.occurrences(utc(2026, 5, 1), utc(2026, 7, 1), HCM))
    assert local(got, HCM) == ["Mon 2026-06-01 07:00", "Wed 2026-06-03 07:00",
                               "Thu 2026-06-04 07:00"]


def test_explicit_dates_air_only_then() -> None:
    p = programme('times: ["08:00"]\ndates: [2026-09-02, 2026-01-01]')
    got = list(p.occurrences(utc(2025, 12, 1), utc(2026, 12, 31), HCM))
    assert local(got, HCM) == ["Thu 2026-01-01 08:00", "Wed 2026-09-02 08:00"]
    assert p.next_after(utc(2026, 9, 2, 1), HCM) is None


def test_repeats_follow_each_start_with_the_gap_in_order() -> None:
    p = programme('times: ["06:00", "06:15"]\nrepeat: {count: 3, gap: 10m}')
    got = list(p.occurrences(utc(2026, 3, 9), utc(2026, 3, 10), HCM))
    assert [t.astimezone(HCM).strftime("%H:%M") for t in got] == [
        "06:00", "06:10", "06:15", "06:20", "06:25", "06:35"
    ]


def test_repeats_run_past_midnight_and_into_a_window_that_starts_late() -> None:
    p = programme('times: ["23:50"]\nrepeat: {count: 3, gap: 10m}')
    start = datetime(2026, 3, 10, 0, 5, tzinfo=HCM)
    got = list(p.occurrences(start, start + timedelta(days=1), HCM))
    assert local(got, HCM) == [
        "Tue 2026-03-10 00:10", "Tue 2026-03-10 23:50", "Wed 2026-03-11 00:00",
    ]  # the window ends at 00:05, before the last repeat


def test_two_times_landing_on_one_instant_air_once() -> None:
    p = programme('times: ["06:00", "06:20"]\nrepeat: {count: 3, gap: 10m}')
    got = list(p.occurrences(utc(2026, 3, 9), utc(2026, 3, 10), HCM))
    assert [t.astimezone(HCM).strftime("%H:%M") for t in got] == [
        "06:00", "06:10", "06:20", "06:30", "06:40"
    ]


def test_naive_times_are_refused() -> None:
    p = programme('times: ["06:00"]')
    naive = datetime(2026, 1, 1)  # no time zone: the point of the test
    with pytest.raises(ValueError, match="timezone-aware"):
        list(p.occurrences(naive, utc(2026, 1, 2), HCM))
    with pytest.raises(ValueError, match="timezone-aware"):
        p.next_after(naive, HCM)


# --- daylight saving time ---------------------------------------------------------------------


def test_local_times_keep_their_wall_clock_across_dst_changes() -> None:
    p = programme('times: ["06:00", "19:00"]')
    spring = list(p.occurrences(utc(2026, 3, 28), utc(2026, 3, 31), BERLIN))
    assert local(spring, BERLIN) == [
        "Sat 2026-03-28 06:00", "Sat 2026-03-28 19:00", "Sun 2026-03-29 06:00",
        "Sun 2026-03-29 19:00", "Mon 2026-03-30 06:00", "Mon 2026-03-30 19:00",
    ]
    assert [t.hour for t in spring] == [5, 18, 4, 17, 4, 17]  # UTC moves, the wall clock not
    autumn = list(p.occurrences(utc(2026, 10, 24), utc(2026, 10, 27), BERLIN))
    assert [t.hour for t in autumn] == [4, 17, 5, 18, 5, 18]
    assert {t.astimezone(BERLIN).strftime("%H:%M") for t in autumn} == {"06:00", "19:00"}
    # and in Hồ Chí Minh City, which has no DST, UTC never moves
    assert {t.hour for t in p.occurrences(utc(2026, 3, 1), utc(2026, 11, 1), HCM)} == {23, 12}


def test_a_time_in_the_spring_gap_airs_an_hour_later_on_the_wall_clock() -> None:
    p = programme('times: ["02:30"]')
    got = list(p.occurrences(utc(2026, 3, 28), utc(2026, 3, 31), BERLIN))
    assert local(got, BERLIN) == [
        "Sat 2026-03-28 02:30", "Sun 2026-03-29 03:30", "Mon 2026-03-30 02:30"
    ]
    assert got[1] == utc(2026, 3, 29, 1, 30)


def test_a_time_in_the_autumn_fold_airs_once_at_the_first() -> None:
    p = programme('times: ["02:30"]')
    got = list(p.occurrences(utc(2026, 10, 24, 12), utc(2026, 10, 25, 12), BERLIN))
    assert got == [utc(2026, 10, 25, 0, 30)]  # 02:30 CEST, not also 02:30 CET


def test_repeats_across_a_dst_change_keep_the_elapsed_gap() -> None:
    p = programme('times: ["01:30"]\nrepeat: {count: 3, gap: 1h}')
    got = list(p.occurrences(utc(2026, 3, 29), utc(2026, 3, 29, 12), BERLIN))
    assert got == [utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 2, 30)]
    assert local(got, BERLIN) == [
        "Sun 2026-03-29 01:30", "Sun 2026-03-29 03:30", "Sun 2026-03-29 04:30"
    ]


# --- next_after -----------------------------------------------------------------------------

SCHEDULES = [
    'times: ["06:00", "17:30"]',
    'times: ["19:00"]\nweekdays: [sat]\nevery_weeks: 3\nfrom: 2026-02-04',
    'times: ["02:30", "23:55"]\nrepeat: {count: 4, gap: 5m}',
    'times: ["07:00"]\nweekdays: [mon, fri]\nvalid_from: 2026-03-20\nvalid_until: 2026-04-10\n'
    "except: [2026-03-27]",
    'times: ["08:00"]\ndates: [2026-03-29, 2026-04-01]',
]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("tz", [HCM, BERLIN], ids=["Asia/Ho_Chi_Minh", "Europe/Berlin"])
def test_next_after_agrees_with_occurrences(schedule: str, tz: ZoneInfo) -> None:
    p = programme(schedule)
    start, end = utc(2026, 3, 1), utc(2026, 5, 1)
    every = list(p.occurrences(start, end + timedelta(days=60), tz))
    assert every == sorted(every)
    assert len(every) == len(set(every))
    after = start
    while after < end:
        expected = next((t for t in every if t > after), None)
        assert p.next_after(after, tz) == expected, after
        after += timedelta(hours=7, minutes=13)
    for when in every[:-1]:  # strictly after: from one airing, the next one
        assert p.next_after(when, tz) == every[every.index(when) + 1]


def test_next_after_finds_a_start_far_ahead_and_none_after_the_end() -> None:
    p = programme('times: ["06:00"]\nvalid_from: 2029-01-01\nvalid_until: 2029-01-02')
    assert p.next_after(utc(2026, 1, 1), HCM) == utc(2028, 12, 31, 23)
    assert p.next_after(utc(2029, 1, 1, 23), HCM) is None


# --- rebroadcasts ----------------------------------------------------------------------------


def test_a_rebroadcast_bulletin_carries_a_stream_its_backups_and_duration() -> None:
    fleet = load_fleet(ROOT / "config" / "fleet.yaml")
    playlists = load_playlists(
        [PLAYLISTS], fleet, tz=HCM, today=date(2026, 11, 26), holidays=load_holidays(HOLIDAYS)
    )
    relay = playlists.programmes["tiep-song-vov1-trua"].rebroadcast()
    assert relay is not None
    assert relay.inputs() == [
        "http://radio.vov.example.vn:8000/vov1.mp3",
        "http://radio-du-phong.example.vn:8000/vov1.mp3",
    ]
    assert relay.duration == timedelta(minutes=30)
    assert relay.fallback is not None
    assert relay.fallback.is_file()


@pytest.mark.parametrize(("bulletin", "says"), [
    ("{rebroadcast: {url: 'ftp://x/y', duration: 30m}}", "is not a stream URL"),
    ("{rebroadcast: {url: 'http://x/y.mp3', duration: 30s}}", "a rebroadcast lasts 1m to 12h"),
    ("{rebroadcast: {url: 'http://x/y.mp3'}}", "duration"),
    ("{rebroadcast: {url: 'http://x/y.mp3', duration: 30m}, files: [a.wav]}",
     "a rebroadcast bulletin has no files"),
    ("{title: nothing}", "a bulletin needs files"),
])  # fmt: skip
def test_a_wrong_rebroadcast_is_refused_with_where_and_what_to_write(
    tmp_path: Path, bulletin: str, says: str
) -> None:
    fleet = load_fleet(ROOT / "config" / "fleet.yaml")
    (tmp_path / "a.wav").write_bytes(b"RIFF")  # there: only the rebroadcast is wrong
    playlist = tmp_path / "relay.yaml"
    playlist.write_text(
        "programmes:\n  - id: relay\n    name: Tiếp sóng\n"
        f"    bulletins: [{bulletin}]\n"
        "    schedule: {times: ['11:00']}\n    targets: [all]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_playlists([playlist], fleet, tz=HCM, today=date(2026, 11, 26))
    assert f"{playlist}:4:" in str(caught.value)
    assert says in str(caught.value)
