"""`loa-controller check` as managers run it (a subprocess, exit codes, file:line), and
the overlap rule: two airings of the same level on the same cluster at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, time, timedelta
from pathlib import Path
from textwrap import dedent
from zoneinfo import ZoneInfo

import pytest

from controller.fleet import Fleet, load_fleet
from controller.overlap import overlaps, programme_seconds, span
from controller.playlist import load_playlists

ROOT = Path(__file__).resolve().parent.parent
HCM = ZoneInfo("Asia/Ho_Chi_Minh")


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the example playlists, audio included."""
    target = tmp_path / "playlists"
    shutil.copytree(ROOT / "playlists", target)
    return target


def check(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "check", *map(str, paths)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=120, check=False,
    )


def edit(path: Path, old: str, new: str) -> int:
    """Replace the first `old` in the file; return the 1-based line it is on."""
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    at = text.index(old)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return text[:at].count("\n") + 1


def test_the_examples_are_clean(copy: Path) -> None:
    result = check(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: config, fleet and playlists are valid" in result.stderr


@pytest.mark.parametrize(
    ("name", "file", "old", "new", "says"),
    [
        ("unknown key", "thoi-su.yaml", "    lateness: 10m", "    latenes: 10m",
         "did you mean 'lateness'"),
        ("malformed time", "thoi-su.yaml", '"06:00"', '"25:61"',
         "'25:61' is not a time of day"),
        ("unknown commune", "sot-xuat-huyet.yaml", "xa-hiep-hung,", "xa-hiep-hungg,",
         "did you mean 'xa-hiep-hung'"),
        ("yaml syntax: unclosed bracket", "thoi-su.yaml", "targets: [all]", "targets: [all",
         "YAML syntax error"),
        ("yaml syntax: a tab", "phap-luat.yaml", "    level: normal", "\tlevel: normal",
         "YAML does not allow tabs"),
        ("yaml syntax: indentation", "phap-luat.yaml", "    lateness: 30m", "   lateness: 30m",
         "YAML syntax error"),
    ],
)
def test_each_mistake_fails_with_the_right_file_and_line(
    copy: Path, name: str, file: str, old: str, new: str, says: str
) -> None:
    path = copy / file
    line = edit(path, old, new)
    result = check(copy)
    assert result.returncode == 1, name
    lines = result.stdout.splitlines()
    located = [x for x in lines if x.startswith(f"{path}:{line}:")]
    assert located, f"{name}: nothing at {path}:{line} in\n{result.stdout}"
    assert says in located[0]
    assert "error(s); nothing was changed" in result.stderr


def test_warnings_do_not_fail(copy: Path) -> None:
    line = edit(copy / "thoi-su.yaml", "    targets: [all]        # every cluster of the fleet",
                "    targets: [tan-binh-01]\n    exclude: [tan-binh-01]")
    result = check(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{copy / 'thoi-su.yaml'}:{line}:" in result.stdout
    assert "warning: these targets, less exclude, contain no cluster" in result.stdout


def test_two_same_level_programmes_overlapping_on_a_cluster_fail_with_both_lines(
    copy: Path,
) -> None:
    playlist = copy / "them.yaml"
    playlist.write_text(dedent("""\
        programmes:
          - id: tin-xa
            name: Tin xã
            bulletins: [{files: [audio/thoi-su-sang.wav]}]
            schedule: {times: ["06:00"], weekdays: [mon]}
            targets: [xa-tan-binh]
    """), encoding="utf-8")
    result = check(copy)
    assert result.returncode == 1
    [line] = [x for x in result.stdout.splitlines() if "overlaps" in x]
    # Both start at 06:00: reported at one of them, naming the other's file:line.
    ours, theirs = f"{playlist}:2", f"{copy / 'thoi-su.yaml'}:11"
    assert line.startswith((
        f"{ours}:1: programme 'tin-xa' overlaps programme 'thoi-su-sang' at {theirs} ",
        f"{theirs}:1: programme 'thoi-su-sang' overlaps programme 'tin-xa' at {ours} ",
    )), line
    assert "(both level normal)" in line
    assert "on 2 cluster(s) (tan-binh-01, tan-binh-02)" in line
    assert "53 times in the next 366 days" in line or "52 times in the next 366 days" in line


# --- the overlap rule, in detail ------------------------------------------------------------


FLEET = """\
province:
  id: tinh-thu
  name: Tỉnh Thử
  communes:
    - id: xa-a
      name: Xã A
      clusters: [{id: a-01, name: A1}, {id: a-02, name: A2}]
    - id: xa-b
      name: Xã B
      clusters: [{id: b-01, name: B1}]
"""

ONE = """\
  - id: {id}
    name: {id}
    level: {level}
    bulletins: [{{files: [tin.wav]}}]
    schedule: {{times: ["{at}"]{extra}}}
    targets: [{targets}]
"""


def programme(
    id: str, at: str, targets: str, level: str = "normal", extra: str = ""
) -> str:
    return ONE.format(id=id, at=at, targets=targets, level=level, extra=extra)


def problems(tmp_path: Path, *programmes: str, seconds: float = 120.0) -> list[str]:
    (tmp_path / "fleet.yaml").write_text(FLEET, encoding="utf-8")
    (tmp_path / "tin.wav").write_bytes(b"")  # measured below, not decoded
    (tmp_path / "list.yaml").write_text("programmes:\n" + "".join(programmes), encoding="utf-8")
    fleet: Fleet = load_fleet(tmp_path / "fleet.yaml")
    playlists = load_playlists([tmp_path / "list.yaml"], fleet)
    durations = {tmp_path / "tin.wav": seconds}
    start = datetime.combine(datetime(2026, 11, 27).date(), time(0), HCM)
    found = overlaps(playlists, fleet, durations, HCM, start, start + timedelta(days=7))
    return [f"{p.line}: {p.message}" for p in found]


def test_same_level_same_cluster_overlap_is_found(tmp_path: Path) -> None:
    found = problems(
        tmp_path, programme("p1", "06:00", "xa-a"), programme("p2", "06:01", "a-02"),
    )
    [message] = found
    assert message.startswith("8: programme 'p2' overlaps programme 'p1' at ")
    assert "list.yaml:2 (both level normal) on 1 cluster(s) (a-02)" in message
    assert "'p1' airs at Fri 2026-11-27 06:00 for 2m and 'p2' starts at 06:01" in message
    assert "7 times in the next 7 days" in message


@pytest.mark.parametrize(
    ("second", "why"),
    [
        (programme("p2", "06:02", "xa-a"), "starts after the first ends"),
        (programme("p2", "06:01", "xa-b"), "another cluster"),
        (programme("p2", "06:01", "xa-a", level="emergency"), "another level interrupts"),
    ],
)
def test_no_overlap(tmp_path: Path, second: str, why: str) -> None:
    assert problems(tmp_path, programme("p1", "06:00", "xa-a"), second) == [], why


def test_a_repeat_closer_than_the_programme_lasts_overlaps_itself(tmp_path: Path) -> None:
    [message] = problems(
        tmp_path, programme("p1", "06:00", "xa-a", extra=", repeat: {count: 2, gap: 1m}"),
    )
    assert message.startswith("2: programme 'p1' lasts 2m but airs again 1m after it starts")
    assert "first at Fri 2026-11-27 06:00" in message


def test_an_airing_lasts_its_audio_with_the_gaps_between_parts(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET, encoding="utf-8")
    for name in ("a.wav", "b.wav", "c.wav"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.yaml").write_text(dedent("""\
        programmes:
          - id: p
            name: P
            bulletins:
              - {files: [a.wav, b.wav], intro: c.wav}
              - {files: [a.wav]}
            schedule: {times: ["06:00"]}
            targets: [all]
    """), encoding="utf-8")
    playlists = load_playlists([tmp_path / "list.yaml"], load_fleet(tmp_path / "fleet.yaml"))
    durations = {tmp_path / "a.wav": 10.0, tmp_path / "b.wav": 20.0, tmp_path / "c.wav": 2.0}
    # (2 + 10 + 20 + two gaps of 0.5 s) + 10
    assert programme_seconds(playlists.programmes["p"], durations) == pytest.approx(43.0)
    assert programme_seconds(playlists.programmes["p"], {}) is None
    assert [span(s) for s in (4, 60, 200, 3900)] == ["4s", "1m", "3m20s", "1h05m"]


def test_check_reads_the_speech_section_with_the_fleet(tmp_path: Path) -> None:
    """The province's abbreviation file is checked, and the fleet may name a voice the
    config defines (and none it does not)."""
    from controller.check import check as check_all

    shutil.copytree(ROOT / "playlists", tmp_path / "playlists")
    fleet = (ROOT / "config" / "fleet.yaml").read_text(encoding="utf-8")
    fleet = fleet.replace("name: Xã Tân Bình\n", "name: Xã Tân Bình\n          voice: giong-tinh\n")
    (tmp_path / "fleet.yaml").write_text(fleet, encoding="utf-8")
    (tmp_path / "abbreviations.yaml").write_text(
        "abbreviations:\n  HTX: hợp tác xã\n  BCH:\n", encoding="utf-8"
    )
    config = tmp_path / "controller.yaml"
    config.write_text(
        "fleet: fleet.yaml\nplaylists: [playlists]\nprivate_key: k\ncontent_dir: c\n"
        "speech:\n  abbreviations: [abbreviations.yaml]\n  voices:\n"
        "    giong-tinh: {voice: vi-vn-x-south, speed: 130}\n",
        encoding="utf-8",
    )
    found = [str(p) for p in check_all(config, [], today=datetime(2026, 11, 27, tzinfo=HCM))
             if p.severity == "error"]
    assert found == [
        f"{tmp_path / 'abbreviations.yaml'}:3:7: BCH: write how it is read, in words, after "
        "the colon (UBND: ủy ban nhân dân)"
    ]
    config.write_text(config.read_text(encoding="utf-8").replace("giong-tinh:", "giong-khac:"),
                      encoding="utf-8")
    found = [str(p) for p in check_all(config, [], today=datetime(2026, 11, 27, tzinfo=HCM))
             if p.severity == "error"]
    assert len(found) == 2
    line = fleet.splitlines().index("          voice: giong-tinh") + 1
    assert found[1].startswith(f"{tmp_path / 'fleet.yaml'}:{line}:18: no voice 'giong-tinh'")
    assert "write one of giong-khac, mien-bac, mien-nam, mien-trung" in found[1]
