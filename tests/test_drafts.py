"""Drafts: `check DRAFT` with the live playlists, and `schedule --with DRAFT`, which
previews what would fire once the draft is live and publishes nothing."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
from schedule_support import HCM, LEAD, Rig

from controller.check import check
from controller.cli import main
from controller.samples import tone
from controller.schedule import plan
from protocol.clock import ManualClock

FRI = date(2026, 11, 27)

# The live set: the morning news on every cluster of the rig's fleet (a-01, a-02, b-01).
LIVE = """\
programmes:
  - id: tin-sang
    name: Tin sáng
    bulletins: [{files: [tin.wav]}]
    schedule: {times: ["06:00"]}
    targets: [all]
    lateness: 10m
"""

# A new programme one minute after the news, on xa-a.
DRAFT = """\
programmes:
  - id: khuyen-nong
    name: Khuyến nông
    bulletins: [{files: [tin.wav]}]
    schedule: {times: ["06:01"]}
    targets: [xa-a]
    lateness: 10m
"""


def rig(tmp_path: Path, start: datetime) -> Rig:
    return Rig(tmp_path, ManualClock((start - LEAD).astimezone(UTC)), playlist=LIVE)


def draft(folder: Path, text: str = DRAFT, name: str = "moi.yaml") -> Path:
    drafts = folder / "drafts"
    drafts.mkdir(exist_ok=True)
    shutil.copy(folder / "playlists" / "tin.wav", drafts / "tin.wav")
    path = drafts / name
    path.write_text(dedent(text), encoding="utf-8")
    return path


def config(rig: Rig) -> Path:
    path = rig.folder / "controller.yaml"
    path.write_text(
        f"fleet: {rig.fleet_path}\nplaylists: [{rig.playlist_path.parent}]\n"
        f"store_url: sqlite:///{rig.folder / 'preview.db'}\n"
        "private_key: controller.key\ncontent_dir: content\n",
        encoding="utf-8",
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out = capsys.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 1), out.out, out.err


def test_check_finds_a_draft_overlapping_what_is_already_scheduled(tmp_path: Path) -> None:
    live = rig(tmp_path, datetime.combine(FRI, time(0), HCM))
    live.stop()
    tone(live.folder / "playlists" / "tin.wav", 90)  # the news lasts 1m30s
    path = draft(tmp_path)
    found = check(config(live), [path], today=datetime.combine(FRI, time(0), HCM))
    overlaps = [p for p in found if "overlaps" in p.message]
    [problem] = overlaps
    assert problem.file == str(path)
    assert problem.line == 2
    assert f"overlaps programme 'tin-sang' at {live.playlist_path}:2" in problem.message
    assert "(a-01, a-02)" in problem.message
    # alone, the draft has nothing to overlap
    alone = check(config(live), [path], today=datetime.combine(FRI, time(0), HCM), alone=True)
    assert [p for p in alone if "overlaps" in p.message] == []
    # the draft's own mistakes are at its own lines
    broken = draft(tmp_path, DRAFT.replace("[xa-a]", "[xa-z]"), "hong.yaml")
    found = check(config(live), [broken], today=datetime.combine(FRI, time(0), HCM))
    assert [(p.file, p.line) for p in found if p.severity == "error"] == [(str(broken), 6)]


def test_a_draft_programme_with_a_live_id_replaces_it(tmp_path: Path) -> None:
    live = rig(tmp_path, datetime.combine(FRI, time(0), HCM))
    live.stop()
    path = draft(tmp_path, LIVE.replace('"06:00"', '"05:30"'))
    found = check(config(live), [path], today=datetime.combine(FRI, time(0), HCM))
    assert [str(p) for p in found] == [
        f"{path}:2:1: warning: draft: programme 'tin-sang' replaces the live one at "
        f"{live.playlist_path}:2"
    ]
    # a live file named as a draft is just live
    assert check(config(live), [live.playlist_path]) == []


def test_the_preview_with_a_draft_is_what_fires_once_it_is_live(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = datetime.combine(FRI, time(0), HCM)
    end = start + timedelta(days=2)
    live = rig(tmp_path, start)
    path = draft(tmp_path)
    cfg = config(live)
    args = ("schedule", "--config", str(cfg), "--from", "2026-11-27", "--to", "+2d")
    code, out, _ = run(capsys, *args, "--with", str(path), "--json")
    assert code == 0
    rows: list[dict[str, Any]] = json.loads(out)
    assert [(r["programme"], r["draft"]) for r in rows[:2]] == [
        ("tin-sang", False), ("khuyen-nong", True)
    ]
    code, out, _ = run(capsys, *args, "--with", str(path))
    assert (
        f"With the draft {path} (not published; its programmes are marked *): khuyen-nong"
    ) in out
    assert "2026-11-27 06:01 Fri  khuyen-nong *" in out

    # nothing was published, stored or changed: the live preview has no draft in it
    code, out, _ = run(capsys, *args, "--json")
    assert [r["programme"] for r in json.loads(out)] == ["tin-sang", "tin-sang"]
    assert not (tmp_path / "preview.db").exists()
    assert live.playlist_path.read_text(encoding="utf-8") == LIVE
    assert live.store.dispatches.log() == []

    # once the draft is put live, what fires is what the preview showed
    live.playlist_path.write_text(LIVE + DRAFT.removeprefix("programmes:\n"), encoding="utf-8")
    live.reload()
    live.run(until=end - LEAD - timedelta(minutes=1))
    live.stop()
    assert [r["play_id"] for r in rows] == live.distributor.play_ids()
    planned = plan(live.playlists, start, end, HCM)
    assert [r["play_id"] for r in rows] == [o.play_id for o in planned]
