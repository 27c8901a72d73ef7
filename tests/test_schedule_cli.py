"""`loa-controller schedule`, `schema`, `approve` and `pending`, run as managers run them.

The preview is checked against what the scheduler fires over the same window (the
scheduling rig of schedule_support on the same files and store), not only against
plan()."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from schedule_support import HCM, LEAD, Rig

from controller.audit import AuditLog
from controller.cli import main
from controller.preview import parse_when
from controller.samples import tone
from controller.schedule import plan
from controller.store import Store
from protocol.clock import ManualClock

ROOT = Path(__file__).resolve().parent.parent
FRI = date(2026, 11, 27)
NOW = datetime(2026, 11, 27, 10, 15, tzinfo=HCM)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out = capsys.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 1), out.out, out.err


def config(folder: Path, fleet: Path, playlists: Path) -> Path:
    path = folder / "controller.yaml"
    path.write_text(
        f"fleet: {fleet}\n"
        f"playlists: [{playlists}]\n"
        f"store_url: sqlite:///{folder / 'controller.db'}\n"
        "private_key: controller.key\n"
        "content_dir: content\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A config over a copy of the example playlists and the example fleet."""
    shutil.copytree(ROOT / "playlists", tmp_path / "playlists")
    return config(tmp_path, ROOT / "config" / "fleet.yaml", tmp_path / "playlists")


# --- times on the command line ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("+2h", NOW + timedelta(hours=2)),
        ("+1d6h", NOW + timedelta(days=1, hours=6)),
        ("-30m", NOW - timedelta(minutes=30)),
        ("2026-11-28", datetime(2026, 11, 28, 0, 0, tzinfo=HCM)),
        ("2026-11-28 06:00", datetime(2026, 11, 28, 6, 0, tzinfo=HCM)),
        ("2026-11-28T17:30", datetime(2026, 11, 28, 17, 30, tzinfo=HCM)),
    ],
)
def test_times_as_managers_write_them(text: str, expected: datetime) -> None:
    assert parse_when(text, now=NOW, tz=HCM) == expected


def test_a_relative_end_counts_from_the_start() -> None:
    start = datetime(2026, 11, 28, 6, 0, tzinfo=HCM)
    assert parse_when("+6h", now=NOW, tz=HCM, base=start) == start + timedelta(hours=6)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("tomorrow", "'tomorrow' is not a time: write a local date and time"),
        ("2026-02-30", "'2026-02-30' is not a real date and time"),
        ("2026-11-28 25:00", "is not a real date and time"),
        ("+", "is not a time"),
    ],
)
def test_bad_times_say_what_to_write(text: str, says: str) -> None:
    with pytest.raises(ValueError, match="06:00") as exc:
        parse_when(text, now=NOW, tz=HCM)
    assert says in str(exc.value)
    assert '"2026-11-27 06:00"' in str(exc.value)


# --- the preview ------------------------------------------------------------------------------


def test_the_preview_lists_what_the_scheduler_fires(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start, end = datetime.combine(FRI, time(0), HCM), datetime.combine(FRI, time(0), HCM) + (
        timedelta(days=3)
    )
    rig = Rig(tmp_path, ManualClock((start - LEAD).astimezone(UTC)))
    rig.approvals.approve(
        rig.playlists.programmes["phap-luat"], "Cán bộ A", rig.clock.now(), fleet=rig.fleet,
        source="cli",
    )
    cfg = config(tmp_path, rig.fleet_path, rig.playlist_path.parent)
    code, out, _ = run(capsys, "schedule", "--config", str(cfg), "--from", "2026-11-27",
                       "--to", "+3d", "--json")
    assert code == 0
    rows: list[dict[str, Any]] = json.loads(out)
    rig.run(until=end - LEAD - timedelta(minutes=1))
    assert [r["play_id"] for r in rows] == rig.distributor.play_ids()
    assert [r["play_id"] for r in rows] == [o.play_id for o in plan(rig.playlists, start, end, HCM)]
    for row, sent in zip(rows, rig.distributor.sent, strict=True):
        assert datetime.fromisoformat(row["start"]) == sent.spec.start_at
        assert datetime.fromisoformat(row["sent_at"]) == sent.at
        assert row["clusters"] == sorted(sent.spec.clusters)
    weekly = [r for r in rows if r["programme"] == "phap-luat"]
    assert len(weekly) == 1
    assert weekly[0]["approval"].startswith("approved by Cán bộ A at ")
    assert {r["duration_s"] for r in rows if r["programme"] == "tin-sang"} == {0.4}


def test_the_preview_table_of_the_examples(
    examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "schedule", "--config", str(examples),
                       "--from", "2026-11-28", "--to", "+1d")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        "Schedule from 2026-11-28 00:00 Sat to 2026-11-29 00:00 Sun (Asia/Ho_Chi_Minh); each "
        "play is sent to its clusters 30m before it starts."
    )
    rows = [x for x in lines if x.startswith("2026-11-28")]
    assert [r.split()[3] for r in rows] == [
        "thoi-su-sang", "tiep-song-vov1-trua", "thoi-su-chieu", "phap-luat-hang-tuan"
    ]
    assert "73: all" in rows[0]
    assert "Thời sự VOV1 buổi trưa (live)  30m" in rows[1]  # a rebroadcast, for its duration
    assert rows[3].rstrip().endswith("PENDING APPROVAL")
    assert "17: tag:phung-hiep; less tag:cho" in rows[3]
    assert lines[-1].startswith("4 plays. Waiting for approval: phap-luat-hang-tuan")


def test_the_preview_for_one_cluster_and_for_one_commune(
    examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def programmes(*flags: str) -> list[str]:
        code, out, err = run(capsys, "schedule", "--config", str(examples), "--from",
                             "2026-11-28", "--to", "+1d", "--json", *flags)
        assert code == 0, err
        return [r["programme"] for r in json.loads(out)]

    # a market cluster of Phụng Hiệp: not in the law programme (it excludes tag:cho)
    relay = "tiep-song-vov1-trua"
    assert programmes("--cluster", "binh-thanh-02") == ["thoi-su-sang", relay, "thoi-su-chieu"]
    assert programmes("--cluster", "binh-thanh-01") == [
        "thoi-su-sang", relay, "thoi-su-chieu", "phap-luat-hang-tuan"
    ]
    assert programmes("--target", "xa-binh-thanh") == [
        "thoi-su-sang", relay, "thoi-su-chieu", "phap-luat-hang-tuan"
    ]
    assert programmes("--target", "tt-mot-ngan") == ["thoi-su-sang", relay, "thoi-su-chieu"]


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--from", "2026-11-28", "--to", "2026-11-27"], "is not after --from"),
        (["--from", "2026-01-01", "--to", "2027-06-01"], "spans more than 366 days"),
        (["--from", "sáng mai"], "'sáng mai' is not a time"),
        (["--cluster", "xa-binh-thanh"], "is a commune (Xã Bình Thành), not a cluster: "
         "write --target xa-binh-thanh"),
        (["--cluster", "binh-thanh-1"], "did you mean 'binh-thanh-01'?"),
        (["--target", "xa-binh-than"], "did you mean 'xa-binh-thanh'?"),
    ],
)
def test_bad_flags_say_what_to_write(
    examples: Path, capsys: pytest.CaptureFixture[str], flags: list[str], says: str
) -> None:
    code, out, err = run(capsys, "schedule", "--config", str(examples), *flags)
    assert code == 1
    assert err.startswith("loa-controller schedule: ")
    assert says in err
    assert out == ""


def test_cluster_and_target_together_are_refused_by_the_parser(
    examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "schedule", "--cluster", "a", "--target", "b")
    assert code == 2
    assert "not allowed with argument" in err


# --- schema -------------------------------------------------------------------------------


def test_schema_writes_the_schemas_the_examples_point_at(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "schema", "--out", str(tmp_path / "schema"))
    assert code == 0
    for name in ("playlist", "fleet", "controller", "holidays"):
        written = tmp_path / "schema" / f"{name}.schema.json"
        assert f"wrote {written}" in out
        # the committed copy is current
        assert json.loads(written.read_text()) == json.loads(
            (ROOT / "docs" / "schema" / f"{name}.schema.json").read_text()
        )
    assert "# yaml-language-server: $schema=" in out
    for playlist in sorted((ROOT / "playlists").glob("*.yaml")):
        first = playlist.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), playlist
        target = (playlist.parent / first.split("$schema=", 1)[1]).resolve()
        assert target == (ROOT / "docs" / "schema" / "playlist.schema.json").resolve()


# --- approval -----------------------------------------------------------------------------


def test_pending_then_approve_then_changed_audio_is_pending_again(
    examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "pending", "--config", str(examples), "--json")
    assert code == 0
    [row] = json.loads(out)
    assert row["programme"] == "phap-luat-hang-tuan"
    assert row["detail"] == "pending: never approved"
    assert row["next_airing"] is not None
    assert datetime.fromisoformat(row["next_airing"]).strftime("%a %H:%M") == "Sat 19:00"

    code, out, _ = run(capsys, "approve", "phap-luat-hang-tuan", "--config", str(examples),
                       "--by", "Nguyễn Văn A")
    assert code == 0
    assert out.startswith(
        "'phap-luat-hang-tuan' (Phổ biến giáo dục pháp luật) is now approved by Nguyễn Văn A at "
    )
    assert "Pháp luật và đời sống: nhac-hieu.wav, pho-bien-phap-luat.wav (content " in out
    assert "Written to the audit log." in out
    code, out, _ = run(capsys, "pending", "--config", str(examples))
    assert (code, out) == (0, "nothing waits for approval.\n")
    # The approval is in the audit log, as one from the web app would be (docs/web.md).
    store = Store(f"sqlite:///{examples.parent / 'controller.db'}")
    try:
        [entry] = AuditLog(store).entries()
    finally:
        store.close()
    assert (entry.user, entry.action, entry.subject, entry.detail) == (
        "Nguyễn Văn A", "approve", "phap-luat-hang-tuan", "source=cli"
    )
    assert entry.title == "Phổ biến giáo dục pháp luật"
    assert entry.clusters  # the clusters its targets reach, for the managers' view

    # next week's recording replaces the file: approval is needed again
    tone(examples.parent / "playlists" / "audio" / "pho-bien-phap-luat.wav", 1.0, freq=520)
    code, out, _ = run(capsys, "pending", "--config", str(examples))
    assert code == 0
    assert "pending: its audio changed since Nguyễn Văn A approved it at" in out
    assert "phap-luat-hang-tuan" in out


def test_approve_names_the_programme_or_says_what_to_write(
    examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "approve", "phap-luat", "--config", str(examples))
    assert code == 1
    assert "no programme 'phap-luat' in the playlists; did you mean 'phap-luat-hang-tuan'?" in err
    code, out, _ = run(capsys, "approve", "thoi-su-sang", "--config", str(examples))
    assert code == 0
    assert "does not need approval" in out
    assert "Nothing recorded" in out


def test_approve_without_a_config_says_where_one_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "pending")
    assert code == 1
    assert "config/controller.yaml not found: copy config/controller.example.yaml" in err
