"""The proof-of-play report pages (báo cáo kết quả phát): /reports, and its CSV and XLSX.

Managers only, each over their own part of the fleet (controller.report.restrict). The
page shows the report's rows as a table and, whatever the rows are, a chart of plays
aired in full against plays scheduled per commune: an SVG drawn on the server (no
script, no chart library), so it shows with JavaScript off and prints. The downloads
are the CLI's CSV and XLSX (controller.report_export) for the same range and rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import Response

from controller.report import GROUPINGS, GroupBy, Report, build, local_range, period, restrict
from controller.report_export import to_csv, to_xlsx
from controller.users import User
from controller.web.context import WebContext
from controller.web.pages import Ctx, Manager, _render

router = APIRouter(include_in_schema=False)
DEFAULT_DAYS = 7
MAX_DAYS = 366
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@dataclass(frozen=True)
class Bar:
    """One commune of the chart: its bars' lengths in the drawing's units."""

    commune: str
    name: str
    scheduled: int
    aired: int
    y: int
    scheduled_w: float
    aired_w: float


CHART_W = 480.0
ROW_H = 22


def _range(ctx: WebContext, first: str | None, last: str | None) -> tuple[date, date]:
    today = datetime.now(ctx.tz).date()
    a, b = period(first=first or None, last=last or None)
    b = b or today
    a = a or b - timedelta(days=DEFAULT_DAYS - 1)
    if b < a or (b - a).days >= MAX_DAYS:
        raise ValueError(f"{a} to {b}: from a day to a later one, at most {MAX_DAYS} days")
    return a, b


def _report(ctx: WebContext, user: User, first: date, last: date, by: GroupBy) -> Report:
    store = ctx.service.store
    start, end = local_range(first, last, ctx.tz)
    history = store.history.between(start, end)
    reach = ctx.service.reach(user)
    whole = reach >= {c.id for c in history.clusters if c.in_fleet}
    return build(restrict(history, reach, whole_fleet=whole), ctx.tz, by,
                 datetime.now(ctx.tz))


def chart(report: Report) -> list[Bar]:
    """Aired in full against scheduled, per commune, from a report by commune."""
    top = max((r.scheduled for r in report.rows), default=0) or 1
    return [
        Bar(r.key, r.name, r.scheduled, r.count("aired"), i * ROW_H,
            CHART_W * r.scheduled / top, CHART_W * r.count("aired") / top)
        for i, r in enumerate(report.rows)
    ]


MAX_HEAT_DAYS = 31


@dataclass(frozen=True)
class HeatCell:
    day: date
    scheduled: int
    aired: int
    level: str  # none (nothing scheduled), or heat-0 (none aired) ... heat-4 (all aired)


@dataclass(frozen=True)
class HeatRow:
    cluster: str
    name: str
    cells: list[HeatCell]


def heat_map(report: Report, clusters: list[tuple[str, str]]) -> tuple[list[date], list[HeatRow]]:
    """Per cluster and local day: plays aired in full out of those scheduled (the days of
    the report, at most MAX_HEAT_DAYS of them)."""
    days = [report.first_day + timedelta(days=i)
            for i in range((report.last_day - report.first_day).days + 1)][:MAX_HEAT_DAYS]
    counts: dict[tuple[str, date], list[int]] = {}
    for p in report.plays:
        key = (p.cluster, p.start_at.astimezone(report.tz).date())
        found = counts.setdefault(key, [0, 0])
        found[0] += 1
        found[1] += p.outcome == "aired"
    rows = []
    for cid, name in clusters:
        cells = []
        for day in days:
            scheduled, aired = counts.get((cid, day), [0, 0])
            level = "none" if not scheduled else f"heat-{min(4, int(4 * aired / scheduled))}"
            cells.append(HeatCell(day, scheduled, aired, level))
        rows.append(HeatRow(cid, name, cells))
    return days, rows


def _by(value: str | None) -> GroupBy:
    for choice in GROUPINGS:
        if value == choice:
            return choice
    return "commune"


@router.get("/reports")
def reports(request: Request, ctx: Ctx, found: Manager) -> Response:
    q = request.query_params
    by = _by(q.get("by"))
    try:
        first, last = _range(ctx, q.get("from"), q.get("to"))
    except ValueError:
        today = datetime.now(ctx.tz).date()
        return _render(request, "reports.html", found, 400, error=True,
                       report=None, bars=[], by=by, first=today, last=today,
                       groupings=GROUPINGS, query="")
    report = _report(ctx, found[1], first, last, by)
    communes = report if by == "commune" else _report(ctx, found[1], first, last, "commune")
    per_cluster = report if by == "cluster" else _report(ctx, found[1], first, last, "cluster")
    days, heat = heat_map(per_cluster, [(r.key, r.name) for r in per_cluster.rows])
    query = f"from={first}&to={last}&by={by}"
    return _render(
        request, "reports.html", found, report=report, bars=chart(communes), by=by,
        first=first, last=last, groupings=GROUPINGS, query=query, error=False,
        chart_w=CHART_W, row_h=ROW_H, heat_days=days, heat=heat,
    )


def _download(request: Request, ctx: WebContext, user: User, kind: str) -> Response:
    q = request.query_params
    try:
        first, last = _range(ctx, q.get("from"), q.get("to"))
    except ValueError as exc:
        return Response(str(exc), status_code=400, media_type="text/plain; charset=utf-8")
    by = _by(q.get("by"))
    report = _report(ctx, user, first, last, by)
    name = f"loa-bao-cao-{first}-{last}-{by}.{kind}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if kind == "csv":
        return Response(to_csv(report), media_type="text/csv; charset=utf-8", headers=headers)
    return Response(to_xlsx(report), media_type=XLSX, headers=headers)


@router.get("/reports.csv")
def reports_csv(request: Request, ctx: Ctx, found: Manager) -> Response:
    return _download(request, ctx, found[1], "csv")


@router.get("/reports.xlsx")
def reports_xlsx(request: Request, ctx: Ctx, found: Manager) -> Response:
    return _download(request, ctx, found[1], "xlsx")
