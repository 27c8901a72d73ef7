"""Proof-of-play reports: the figures are what a known history of stored events says,
misses, interruptions, a replay, a failure, plays not sent and offline time included;
and the CLI gives the same figures as a table, JSON, CSV and XLSX (Vietnamese headers)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from report_support import DAY, EXPECTED, at, write_known_history
from schedule_support import HCM

from controller.cli import main
from controller.report import Report, build, local_range, period, reason_kind
from controller.report_export import headers_vi
from controller.store import Store

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'controller.db'}")
    s.clusters.sync_fleet([
        ("a-01", "Cụm A1", "xa-a", "Xã A"),
        ("a-02", "Cụm A2", "xa-a", "Xã A"),
        ("b-01", "Cụm B1", "xa-b", "Xã B"),
    ])
    write_known_history(s)
    yield s
    s.close()


def report(store: Store, by: str) -> Report:
    start, end = local_range(DAY, DAY, HCM)
    return build(store.history.between(start, end), HCM, by, NOW)  # type: ignore[arg-type]


def figures(r: Report) -> dict[str, tuple[Any, ...]]:
    return {
        row.key: (row.scheduled, row.count("aired"), row.count("interrupted"),
                  row.count("missed"), row.count("failed"), row.count("unknown"),
                  round(row.seconds, 3), row.offline_s, row.not_sent)
        for row in [*r.rows, r.total]
    }


def test_per_cluster_the_figures_are_what_the_events_say(store: Store) -> None:
    r = report(store, "cluster")
    assert figures(r) == {**EXPECTED, "total": (8, 3, 1, 2, 1, 1, 195.0, 16200.0, 1)}
    rows = {row.key: row for row in r.rows}
    assert dict(rows["a-01"].aired_by_level) == {"normal": 1, "emergency": 1}
    assert rows["a-01"].reasons_text() == "missed: could not start by 17 ×1"
    assert rows["a-02"].reasons_text() == "failed: output ×1"
    assert rows["b-01"].reasons_text() == "missed: not received ×1"
    assert r.total.reasons["not sent: not approved in time"] == 1


def test_per_commune_programme_and_level(store: Store) -> None:
    assert figures(report(store, "commune")) == {
        "xa-a": (6, 3, 1, 1, 1, 0, 195.0, 7200.0, 0),
        "xa-b": (2, 0, 0, 1, 0, 1, 0.0, 9000.0, 0),
        "total": (8, 3, 1, 2, 1, 1, 195.0, 16200.0, 1),
    }
    assert figures(report(store, "programme")) == {
        "phap-luat": (0, 0, 0, 0, 0, 0, 0.0, None, 1),
        "tin-chieu": (3, 1, 0, 1, 0, 1, 60.0, None, 0),
        "tin-sang": (3, 1, 1, 1, 0, 0, 100.0, None, 0),
        "urgent:urgent-1": (2, 1, 0, 0, 1, 0, 35.0, None, 0),
        "total": (8, 3, 1, 2, 1, 1, 195.0, None, 1),
    }
    assert figures(report(store, "level")) == {
        "normal": (6, 2, 1, 2, 0, 1, 160.0, None, 0),
        "priority": (0, 0, 0, 0, 0, 0, 0.0, None, 0),
        "emergency": (2, 1, 0, 0, 1, 0, 35.0, None, 0),
        "total": (8, 3, 1, 2, 1, 1, 195.0, None, 1),
    }


def test_offline_time_stops_at_now(store: Store) -> None:
    start, end = local_range(DAY, DAY, HCM)
    history = store.history.between(start, end)
    r = build(history, HCM, "cluster", at(23, 30).astimezone(UTC))
    assert {row.key: row.offline_s for row in r.rows}["a-02"] == 1800.0


def same(value: object) -> object:
    """A cell as a number if it is one (XLSX keeps 110.0 as 110), else as text."""
    if value is None:
        return ""
    try:
        return float(str(value))
    except ValueError:
        return str(value)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out = capsys.readouterr()
    assert exit_.value.code == 0, out.err
    return out.out


def test_the_cli_gives_the_same_figures_in_every_format(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = store.url
    args = ("report", "--store", url, "--from", "2026-11-27", "--to", "2026-11-27")
    text = run(capsys, *args, "--format", "csv")
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
    assert rows[0] == headers_vi("cluster")
    assert rows[0][:8] == ["Mã cụm loa", "Cụm loa", "Mã xã", "Xã", "Lượt phát theo lịch",
                           "Đã phát xong", "Bị ngắt", "Bị lỡ"]
    by_id = {r[0]: dict(zip(rows[0], r, strict=True)) for r in rows[1:]}
    assert set(by_id) == {"a-01", "a-02", "b-01", "Tổng cộng"}
    assert by_id["a-02"]["Số giây đã phát"] == "85.0"
    assert by_id["a-01"]["Đã phát xong mức khẩn cấp"] == "1"
    assert by_id["b-01"]["Thời gian mất kết nối (giây)"] == "9000.0"
    assert by_id["Tổng cộng"]["Lượt phát theo lịch"] == "8"

    data = json.loads(run(capsys, *args, "--format", "json", "--by", "commune"))
    assert (data["from"], data["to"], data["timezone"]) == ("2026-11-27", "2026-11-27",
                                                           "Asia/Ho_Chi_Minh")
    [xa_a] = [row for row in data["rows"] if row["key"] == "xa-a"]
    assert (xa_a["scheduled"], xa_a["aired"], xa_a["seconds_aired"]) == (6, 3, 195.0)

    out = tmp_path / "bao-cao.xlsx"
    run(capsys, *args, "--format", "xlsx", "--out", str(out))
    from openpyxl import load_workbook

    sheet = load_workbook(out).worksheets[0]
    cells = [[c.value for c in row] for row in sheet.iter_rows()]
    assert cells[0] == rows[0]
    for got, written in zip(cells[1:], rows[1:], strict=True):
        assert [same(v) for v in got] == [same(v) for v in written]

    table = run(capsys, *args, "--by", "programme")
    assert "Proof of play from 2026-11-27 to 2026-11-27 (Asia/Ho_Chi_Minh), by programme: " \
        "8 plays on 3 clusters." in table
    assert "not sent: not approved in time ×1" in table
    bang = run(capsys, *args, "--by", "programme", "--lang", "vi")  # the table's words
    assert "Báo cáo kết quả phát từ 2026-11-27 đến 2026-11-27 (Asia/Ho_Chi_Minh), theo " \
        "chương trình: 8 lượt phát trên 3 cụm loa." in bang
    assert "lý do bị lỡ, lỗi" in bang
    assert "tổng cộng" in bang

    # the whole history without a range: the day before too
    everything = json.loads(run(capsys, "report", "--store", url, "--format", "json"))
    assert (everything["from"], everything["to"]) == ("2026-11-26", "2026-11-27")
    assert everything["total"]["scheduled"] == 9


@pytest.mark.parametrize(
    ("kwargs", "first", "last"),
    [
        ({"day": "2026-11-27"}, date(2026, 11, 27), date(2026, 11, 27)),
        ({"week": "2026-11-27"}, date(2026, 11, 23), date(2026, 11, 29)),
        ({"month": "2026-02"}, date(2026, 2, 1), date(2026, 2, 28)),
        ({"first": "2026-11-01", "last": "2026-11-30"}, date(2026, 11, 1), date(2026, 11, 30)),
    ],
)
def test_periods(kwargs: dict[str, str], first: date, last: date) -> None:
    assert period(**kwargs) == (first, last)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"day": "27/11/2026"}, "--day '27/11/2026' is not a date: write YYYY-MM-DD"),
        ({"month": "2026-13"}, "--month '2026-13': write YYYY-MM"),
        ({"first": "2026-11-30", "last": "2026-11-01"}, "--to 2026-11-01 is before --from"),
    ],
)
def test_a_bad_period_says_what_to_write(kwargs: dict[str, str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        period(**kwargs)


def test_a_store_that_is_not_there_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.db"
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--store", f"sqlite:///{missing}"])
    assert exit_.value.code == 1
    assert f"no store at {missing}" in capsys.readouterr().err
    assert not missing.exists()


def test_reasons_are_counted_by_what_they_say() -> None:
    assert reason_kind("not received: no confirmation by 06:10") == "not received"
    assert reason_kind("the amplifier did not answer " * 5).endswith("…")


def test_live_and_rebroadcast_seconds_are_what_the_clusters_reported(store: Store) -> None:
    """A live session's end carries the seconds of audio the cluster aired; its gaps (the
    silence) and sessions that ended outside the range are not counted."""
    from protocol.messages import Event

    def ev(cluster: str, seq: int, kind: str, hour: int, seconds: float | None,
           session: str = "ab" * 16, title: str = "Tiếp sóng VOV1",
           ) -> tuple[Event, str]:  # fmt: skip
        why = "1.00 s of silence: late" if kind == "gap" else None
        return (Event(cluster=cluster, outbox="live-ob", seq=seq, at=at(hour, 5), kind=kind,
                      play_id=session, bulletin=title, level="priority", seconds=seconds,
                      reason=why), "k1")  # fmt: skip

    store.events.store([
        ev("a-01", 1, "playing", 11, None), ev("a-01", 2, "gap", 11, 1.0),
        ev("a-01", 3, "finished", 11, 1790.0), ev("b-01", 1, "interrupted", 11, 600.0),
        ev("a-02", 1, "finished", 12, 45.0, session="cd" * 16, title="Phát trực tiếp"),
    ], NOW)
    store.events.store([(Event(cluster="a-01", outbox="live-ob", seq=9, kind="finished",
                               at=datetime(2026, 11, 30, 4, 0, tzinfo=UTC), play_id="ef" * 16,
                               bulletin="Hôm sau", level="normal", seconds=999.0), "k1")],
                       NOW)  # fmt: skip  # another day: not in this report
    live = {by: {row.key: row.live_s for row in [*report(store, by).rows, report(store, by).total]}
            for by in ("cluster", "commune", "programme", "level")}  # fmt: skip
    assert live["cluster"] == {"a-01": 1790.0, "a-02": 45.0, "b-01": 600.0, "total": 2435.0}
    assert live["commune"] == {"xa-a": 1835.0, "xa-b": 600.0, "total": 2435.0}
    assert live["programme"]["live:Tiếp sóng VOV1"] == 2390.0
    assert live["programme"]["live:Phát trực tiếp"] == 45.0
    assert live["level"]["priority"] == 2435.0
    # The figures of the plays are unchanged.
    assert figures(report(store, "cluster"))["total"] == (8, 3, 1, 2, 1, 1, 195.0, 16200.0, 1)
    header = headers_vi("cluster")
    assert "Số giây phát trực tiếp và tiếp sóng" in header
