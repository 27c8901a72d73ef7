"""The schedule as a calendar (lịch phát): a week or a day, for a part of the fleet.

Drawn from controller.preview.preview(), which is plan(), the function the scheduler
fires from, so the calendar and what airs cannot disagree. Each play shows its time,
programme, level, how long it lasts (its audio measured once per file and kept while the
file is unchanged) and, for a programme that needs approval, whether it is approved;
each day shows the holidays it belongs to. Anyone signed in sees their own clusters;
`target` narrows to a commune, a village or a cluster within them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from controller.approval import ContentUnreadableError
from controller.overlap import span
from controller.playlist import Programme
from controller.preview import PreviewRow, measure, preview
from controller.report import parse_day
from controller.web.context import WebContext
from controller.web.pages import Ctx, SignedIn, _render

router = APIRouter(include_in_schema=False)

_durations: dict[tuple[Path, int, int], float] = {}
_lock = threading.Lock()


def durations_of(programmes: list[Programme]) -> dict[Path, float]:
    """Each audio file's duration, measured once while the file stays as it is."""
    out: dict[Path, float] = {}
    todo: list[Programme] = []
    for programme in programmes:
        for bulletin in programme.bulletins:
            for path in bulletin.audio():
                try:
                    st = path.stat()
                except OSError:
                    continue
                key = (path, st.st_mtime_ns, st.st_size)
                with _lock:
                    found = _durations.get(key)
                if found is None:
                    todo.append(programme)
                else:
                    out[path] = found
    if todo:
        measured = measure(todo)
        with _lock:
            for path, seconds in measured.items():
                st = path.stat()
                _durations[(path, st.st_mtime_ns, st.st_size)] = seconds
        out.update(measured)
    return out


@dataclass(frozen=True)
class Entry:
    row: PreviewRow
    at: str  # local HH:MM
    lasts: str
    state: str  # none | approved | pending


@dataclass(frozen=True)
class Day:
    day: date
    holidays: list[str]
    entries: list[Entry]


def _approval(ctx: WebContext, programme: Programme) -> str:
    if ctx.approvals is None:
        return "pending: no store to ask"
    try:
        return str(ctx.approvals.state(programme).describe(ctx.tz))
    except ContentUnreadableError as exc:  # an unreadable file says why it waits
        return f"pending: {exc}"


def calendar_days(
    ctx: WebContext, first: date, days: int, only: set[str]
) -> list[Day]:
    if ctx.playlists is None:
        return []
    playlists = ctx.playlists()
    fleet = ctx.service.fleet()
    start = datetime.combine(first, time(0), ctx.tz)
    end = datetime.combine(first + timedelta(days=days), time(0), ctx.tz)
    programmes = list(playlists.programmes.values())
    rows = preview(playlists, fleet, start, end, ctx.tz, only=only,
                   durations=durations_of(programmes),
                   approval=lambda p: _approval(ctx, p))
    out = []
    for i in range(days):
        day = first + timedelta(days=i)
        holidays = []
        if playlists.holidays is not None:
            holidays = [playlists.holidays.holidays[h].name
                        for h in sorted(playlists.holidays.on(day))]
        entries = [
            Entry(r, r.occurrence.start.astimezone(ctx.tz).strftime("%H:%M"),
                  span(r.seconds) if r.seconds is not None else "?",
                  "none" if r.approval is None else ("pending" if r.pending else "approved"))
            for r in rows if r.occurrence.start.astimezone(ctx.tz).date() == day
        ]
        out.append(Day(day, holidays, entries))
    return out


@router.get("/calendar")
def calendar_page(request: Request, ctx: Ctx, found: SignedIn) -> Response:
    q = request.query_params
    view = "day" if q.get("view") == "day" else "week"
    today = datetime.now(ctx.tz).date()
    try:
        day = parse_day(q["day"], "day") if q.get("day") else today
    except ValueError:
        day = today
    first = day if view == "day" else day - timedelta(days=day.weekday())
    days = 1 if view == "day" else 7
    reach = set(ctx.service.reach(found[1]))
    fleet = ctx.service.fleet()
    target = q.get("target") or ""
    only = reach
    if target:
        only = reach & set(fleet.clusters_in(target)) if (
            target in fleet.nodes or target in fleet.clusters
        ) else set()
    targets = [
        (n.id, n.name) for n in fleet.communes() if set(fleet.clusters_in(n.id)) & reach
    ]
    step = timedelta(days=days)
    return _render(
        request, "calendar.html", found, days=calendar_days(ctx, first, days, only),
        view=view, day=day, target=target, targets=targets,
        previous=first - step, following=first + step, today=today,
    )
