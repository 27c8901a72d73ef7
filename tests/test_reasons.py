"""The clusters' reasons (English on the wire) as a Vietnamese reader sees them, and the
audit log's details: every kind the agents and the controller write, times in the
fleet's zone; one nobody taught the page is a plain sentence, the English kept."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from controller.confirmations import not_received_reason
from controller.reasons import audit_detail, shown

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
AT = datetime(2026, 12, 6, 7, 30, tzinfo=UTC)  # 14:30 in Hậu Giang


@pytest.mark.parametrize(("written", "read"), [
    ("stopped by the controller", "đã dừng theo lệnh của hệ thống quản lý"),
    ("preempted by Bão số 5 (emergency)", "bị ngắt bởi Bão số 5 (khẩn cấp)"),
    ("the agent was shut down during the play", "thiết bị thu bị tắt khi đang phát"),
    ("audio incomplete: 3 of 10 chunks missing", "chưa nhận đủ nội dung: thiếu 3 trên 10 phần"),
    (f"not connected since {AT.isoformat()}; sent 2 times, not confirmed yet",
     "mất kết nối từ 14:30 ngày 06/12/2026; đã gửi 2 lần, chưa có xác nhận"),
    ("not connected (never seen)", "chưa kết nối lần nào"),
    (not_received_reason(AT, HCM), "chưa nhận được: cụm loa không xác nhận trước 14:30 ngày "
     "06/12/2026"),
    (not_received_reason(AT, HCM, "expired"), "chưa nhận được: cụm loa không xác nhận trước "
     "14:30 ngày 06/12/2026 (cụm loa đã từ chối lệnh)"),
    ("nothing heard for 92.5 s (more than 1.5 × its keepalive of 60 s)",
     "không nhận được tín hiệu nào trong 92,5 giây (quá 1,5 lần chu kỳ giữ kết nối 60 giây)"),
])
def test_each_reason_reads_in_vietnamese(written: str, read: str) -> None:
    found = shown(written, "vi", HCM)
    assert found.text == read
    assert found.original is None
    assert shown(written, "en", HCM).text == written  # English as written


def test_a_reason_nobody_taught_the_page_is_a_plain_sentence_keeping_the_english() -> None:
    found = shown("opusdec exited with status 1", "vi", HCM)
    assert found.text == "thiết bị thu báo có sự cố"
    assert found.original == "opusdec exited with status 1"
    # one unknown part makes the whole a plain sentence: no half-translated line
    assert shown("stopped; something new", "vi", HCM).original == "stopped; something new"
    assert shown(None, "vi", HCM).text == ""


def test_audit_details_read_in_vietnamese() -> None:
    assert audit_detail("source=web repeat=2 gap_s=3", "vi", HCM).text == (
        "nguồn: web, số lần phát: 2, nghỉ (giây): 3"
    )
    assert audit_detail("registered key 4f2379e3c90a63fd, made by can-bo", "vi", HCM).text == (
        "đã đăng ký khóa 4f2379e3c90a63fd, do can-bo tạo"
    )
    assert audit_detail(
        f"token expires {AT.isoformat(timespec='seconds')}, needs a manager's approval; "
        "replaces key 4f2379e3c90a63fd", "vi", HCM,
    ).text == (
        "mã đăng ký dùng được đến 14:30 ngày 06/12/2026, cần cán bộ quản lý duyệt; "
        "thay khóa 4f2379e3c90a63fd"
    )
