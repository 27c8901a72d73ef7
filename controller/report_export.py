"""A proof-of-play report as a terminal table, JSON, CSV or XLSX (controller.report).

CSV and XLSX are what managers pass on, so their headers are Vietnamese (the glossary's
words); CSV is UTF-8 with a byte-order mark, which spreadsheet programs need to show
Vietnamese. The terminal table speaks the command line's language (protocol.l10n); JSON
keeps the code's English keys. Every format has the same rows and the same figures, and a
total row.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from controller.report import LEVELS, GroupBy, Report, Tally
from protocol.l10n import N_, _

LEVEL_VI = {"normal": "thông thường", "priority": "ưu tiên", "emergency": "khẩn cấp"}
TOTAL_VI = "Tổng cộng"

_KEY_VI: dict[GroupBy, list[str]] = {
    "cluster": ["Mã cụm loa", "Cụm loa", "Mã xã", "Xã"],
    "commune": ["Mã xã", "Xã", "Số cụm loa"],
    "programme": ["Mã chương trình", "Chương trình", "Số cụm loa"],
    "level": ["Mức", "Số cụm loa"],
}
_KEY_EN: dict[GroupBy, list[str]] = {
    "cluster": [N_("cluster"), N_("name"), N_("commune")],
    "commune": [N_("commune"), N_("name"), N_("clusters")],
    "programme": [N_("programme"), N_("name"), N_("clusters")],
    "level": [N_("level"), N_("clusters")],
}
_FIGURES_VI = [
    "Lượt phát theo lịch", "Đã phát xong", "Bị ngắt", "Bị lỡ", "Lỗi", "Chưa có kết quả",
    "Số giây đã phát",
    *(f"Đã phát xong mức {LEVEL_VI[level]}" for level in LEVELS),
    "Số giây phát trực tiếp và tiếp sóng",
]
_FIGURES_EN = [
    N_("scheduled"), N_("aired"), N_("interrupted"), N_("missed"), N_("failed"),
    N_("no result"), N_("aired"),
]


def _offline(by: GroupBy) -> bool:
    return by in ("cluster", "commune")


def headers_vi(by: GroupBy) -> list[str]:
    extra = ["Thời gian mất kết nối (giây)"] if _offline(by) else []
    if by == "programme":
        extra = ["Lần không gửi được"]
    return [*_KEY_VI[by], *_FIGURES_VI, *extra, "Lý do bị lỡ, lỗi"]


def _key_cells(by: GroupBy, row: Tally, total: bool) -> list[Any]:
    if total:
        first: list[Any] = [TOTAL_VI] + [""] * (len(_KEY_VI[by]) - 1)
        if by != "cluster":
            first[-1] = row.clusters
        return first
    if by == "cluster":
        return [row.key, row.name, row.commune, row.commune_name]
    if by == "level":
        return [LEVEL_VI.get(row.key, row.key), row.clusters]
    return [row.key, row.name, row.clusters]


def cells(by: GroupBy, row: Tally, *, total: bool = False) -> list[Any]:
    """One row's values under headers_vi(by): numbers as numbers."""
    figures: list[Any] = [
        row.scheduled, row.count("aired"), row.count("interrupted"), row.count("missed"),
        row.count("failed"), row.count("unknown"), round(row.seconds, 1),
        *(row.aired_by_level.get(level, 0) for level in LEVELS), round(row.live_s, 1),
    ]
    extra: list[Any] = []
    if _offline(by):
        extra = [round(row.offline_s or 0.0, 1)]
    elif by == "programme":
        extra = [row.not_sent]
    return [*_key_cells(by, row, total), *figures, *extra, row.reasons_text()]


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers_vi(report.by))
    for row in report.rows:
        writer.writerow(cells(report.by, row))
    writer.writerow(cells(report.by, report.total, total=True))
    return "\ufeff" + out.getvalue()


def to_xlsx(report: Report) -> bytes:
    """The report as an XLSX workbook: the rows on one sheet, what it covers on another."""
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Báo cáo"
    headers = headers_vi(report.by)
    sheet.append(headers)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in report.rows:
        sheet.append(cells(report.by, row))
    sheet.append(cells(report.by, report.total, total=True))
    for cell in sheet[sheet.max_row]:
        cell.font = Font(bold=True)
    sheet.freeze_panes = "A2"
    for i, header in enumerate(headers, start=1):
        sheet.column_dimensions[get_column_letter(i)].width = max(10, min(40, len(header) + 2))
    about = book.create_sheet("Thông tin")
    for line in _about(report):
        about.append(line)
    about.column_dimensions["A"].width = 24
    about.column_dimensions["B"].width = 60
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def _about(report: Report) -> list[list[str]]:
    return [
        ["Báo cáo kết quả phát", ""],
        ["Từ ngày", report.first_day.isoformat()],
        ["Đến ngày", report.last_day.isoformat()],
        ["Múi giờ", report.tz.key],
        ["Theo", {"cluster": "cụm loa", "commune": "xã", "programme": "chương trình",
                  "level": "mức"}[report.by]],
        ["Nguồn số liệu", "các sự kiện cụm loa đã báo về, lưu trong cơ sở dữ liệu"],
    ]


def _tally_json(row: Tally) -> dict[str, Any]:
    return {
        "key": row.key,
        "name": row.name,
        "commune": row.commune or None,
        "commune_name": row.commune_name or None,
        "clusters": row.clusters,
        "scheduled": row.scheduled,
        "aired": row.count("aired"),
        "interrupted": row.count("interrupted"),
        "missed": row.count("missed"),
        "failed": row.count("failed"),
        "no_result": row.count("unknown"),
        "seconds_aired": round(row.seconds, 3),
        "aired_by_level": {level: row.aired_by_level.get(level, 0) for level in LEVELS},
        "live_s": round(row.live_s, 3),
        "offline_s": None if row.offline_s is None else round(row.offline_s, 3),
        "not_sent": row.not_sent,
        "reasons": dict(sorted(row.reasons.items())),
    }


def to_json(report: Report) -> str:
    return json.dumps({
        "from": report.first_day.isoformat(),
        "to": report.last_day.isoformat(),
        "timezone": report.tz.key,
        "by": report.by,
        "rows": [_tally_json(r) for r in report.rows],
        "total": _tally_json(report.total),
    }, ensure_ascii=False, indent=2)


def to_table(report: Report) -> str:
    from controller.overlap import span
    from controller.text_table import format_table

    def show(row: Tally, total: bool = False) -> list[str]:
        if total:
            key = [_("total"), *([""] * (len(_KEY_EN[report.by]) - 1))]
        elif report.by == "cluster":
            key = [row.key, row.name, row.commune_name]
        elif report.by == "level":
            key = [_(row.key), str(row.clusters)]  # a level: normal, priority, emergency
        else:
            key = [row.key, row.name, str(row.clusters)]
        figures = [str(row.scheduled), *(str(row.count(o)) for o in (
            "aired", "interrupted", "missed", "failed", "unknown"
        ))]
        aired = span(row.seconds) if row.seconds else "0s"
        live = span(row.live_s) if row.live_s else "-"
        extra = []
        if _offline(report.by):
            extra = [span(row.offline_s) if row.offline_s else "-"]
        elif report.by == "programme":
            extra = [str(row.not_sent)]
        return [*key, *figures, aired, live, *extra, row.reasons_text()]

    headers = [_(h) for h in [
        *_KEY_EN[report.by], *_FIGURES_EN[:-1], N_("aired for"), N_("live"),
        *([N_("offline")] if _offline(report.by) else []),
        *([N_("not sent")] if report.by == "programme" else []), N_("why missed or failed"),
    ]]
    rows = [show(r) for r in report.rows] + [show(report.total, total=True)]
    title = _("Proof of play from {first} to {last} ({tz}), by {by}: {plays} plays on "
              "{clusters} clusters.", first=report.first_day, last=report.last_day,
              tz=report.tz.key, by=_(report.by), plays=report.total.scheduled,
              clusters=report.total.clusters)
    return title + "\n" + format_table(headers, rows)


def render(report: Report, fmt: str) -> str | bytes:
    if fmt == "csv":
        return to_csv(report)
    if fmt == "xlsx":
        return to_xlsx(report)
    if fmt == "json":
        return to_json(report)
    return to_table(report)
