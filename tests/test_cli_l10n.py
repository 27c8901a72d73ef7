"""`loa-controller check`, `schedule` and `fleet`, and the errors of the command line,
in Vietnamese: under LANG=vi_VN.UTF-8 and with --lang vi, on the example fleet and
playlists. None of the English the catalog holds shows through (tests/l10n_support.py);
with --lang en, or an English locale, the same commands speak English."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from l10n_support import english_fragments_in
from test_schedule_cli import config, run

from protocol.l10n import LOCALE_VARIABLES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example fleet and playlists, under a Vietnamese locale."""
    for variable in LOCALE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("LANG", "vi_VN.UTF-8")
    shutil.copytree(ROOT / "playlists", tmp_path / "playlists")
    return config(tmp_path, ROOT / "config" / "fleet.yaml", tmp_path / "playlists")


def test_check_and_schedule_follow_the_locale(
    examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "check", "--config", str(examples))
    assert code == 0, out + err
    assert err.strip().endswith("tốt: cấu hình, danh sách cụm loa và danh sách phát đều hợp lệ")

    code, out, err = run(capsys, "schedule", "--config", str(examples),
                         "--from", "2026-11-28", "--to", "+1d")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        "Lịch phát từ 00:00 T7 28/11/2026 đến 00:00 CN 29/11/2026 (Asia/Ho_Chi_Minh); mỗi "
        "lượt phát được gửi tới các cụm loa 30m trước giờ phát."
    )
    assert lines[1].split()[:3] == ["thời", "điểm", "(giờ"]  # the table's header
    rows = [x for x in lines if x.startswith(("06:", "11:", "17:", "19:", "20:"))]
    assert len(rows) == 4, lines
    assert "tất cả" in rows[0]
    assert "thông thường" in rows[0]
    assert "(tiếp sóng)" in rows[1]  # the 11:00 rebroadcast of the provincial station
    assert "; trừ tag:cho" in rows[3]
    assert rows[3].rstrip().endswith("chờ duyệt: cần phê duyệt (không có cơ sở dữ liệu để hỏi)")
    assert lines[-1] == "4 lượt phát."
    assert english_fragments_in(out) == []

    # --lang en wins over the locale.
    code, out, _ = run(capsys, "schedule", "--lang", "en", "--config", str(examples),
                       "--from", "2026-11-28", "--to", "+1d")
    assert out.startswith("Schedule from 2026-11-28 00:00 Sat")


def test_errors_follow_the_locale(examples: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "schedule", "--config", str(examples),
                       "--from", "2026-11-28", "--to", "2026-11-27")
    assert code == 1
    assert err.startswith("loa-controller schedule: --to '2026-11-27' (00:00 T6 27/11/2026) "
                          "không sau --from (00:00 T7 28/11/2026)")
    code, _, err = run(capsys, "fleet", "--config", str(examples.parent / "none.yaml"))
    assert code == 1
    assert "không tìm thấy tệp; kiểm tra đường dẫn" in err
    assert err.rstrip().endswith("1 lỗi; chưa làm gì.")
    assert english_fragments_in(err) == []


def test_fleet_follows_the_locale(examples: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "fleet", "--config", str(examples))
    assert code == 0, err
    assert "không có cụm loa nào trong sqlite:///" in out
    assert "`loa-controller run` đã chạy chưa?" in out
