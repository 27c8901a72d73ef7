"""The schedule preview (`loa-controller schedule`): what plays when and where.

Built on `controller.schedule.plan()`, the very function the scheduler plans its jobs
from, so the preview and what airs cannot disagree. Each row is one occurrence with its
targets resolved against the fleet as it is now, and, when known, how long it lasts
and whether it still waits for approval.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from controller.audio import AudioError, AudioLibrary, AudioSettings
from controller.fleet import ALL, TAG_PREFIX, Fleet
from controller.overlap import programme_seconds
from controller.playlist import Playlists, Programme
from controller.schedule import Occurrence, plan
from protocol.l10n import N_, _
from protocol.validation import suggest

MAX_WINDOW = timedelta(days=366)

_RELATIVE = re.compile(r"([+-])\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?")
_DATE_TIME = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{2}))?")

WHEN_HELP = N_(
    'write a local date and time such as "2026-11-27 06:00", a date such as 2026-11-27 '
    "(its midnight), now, or a time from now such as +2h, +30m or +1d"
)


def parse_when(text: str, *, now: datetime, tz: ZoneInfo, base: datetime | None = None) -> datetime:
    """A time as managers write it on the command line, as an aware datetime.

    "now"; "+2h", "+1d6h", "-30m" (from `base`, else from now); "2026-11-27" (local
    midnight); "2026-11-27 06:00" (local time). Raises ValueError saying what to write.
    """
    value = text.strip()
    if value.lower() == "now":
        return now
    relative = _RELATIVE.fullmatch(value)
    if relative and any(relative.groups()[1:]):
        sign, days, hours, minutes = relative.groups()
        delta = timedelta(days=int(days or 0), hours=int(hours or 0), minutes=int(minutes or 0))
        return (base or now) + (delta if sign == "+" else -delta)
    absolute = _DATE_TIME.fullmatch(value)
    if absolute:
        year, month, day, hour, minute = absolute.groups()
        try:
            at = time(int(hour or 0), int(minute or 0))
            return datetime(int(year), int(month), int(day), at.hour, at.minute, tzinfo=tz)
        except ValueError as exc:
            raise ValueError(_("{text!r} is not a real date and time ({why}); {help}", text=text,
                               why=exc, help=_(WHEN_HELP))) from None
    raise ValueError(_("{text!r} is not a time: {help}", text=text, help=_(WHEN_HELP)))


@dataclass(frozen=True)
class PreviewRow:
    occurrence: Occurrence
    programme: Programme
    clusters: list[str]  # the clusters it airs on (within --cluster/--target, if given)
    all_clusters: int  # how many clusters its targets name in all
    seconds: float | None  # how long one airing lasts, if measured
    approval: str | None  # None: needs none; else "approved by ..." or "pending: ..."

    @property
    def pending(self) -> bool:
        return self.approval is not None and self.approval.startswith("pending")


def only_clusters(fleet: Fleet, cluster: str | None, target: str | None) -> set[str] | None:
    """The clusters --cluster or --target names (None: no filter); ValueError if unknown."""
    if cluster is not None:
        if cluster in fleet.nodes:
            node = fleet.nodes[cluster]
            raise ValueError(_(
                "--cluster {cluster!r} is a {kind} ({name}), not a cluster: write --target "
                "{cluster}", cluster=cluster, kind=node.kind, name=node.name,
            ))
        if cluster not in fleet.clusters:
            close = suggest(cluster, fleet.clusters)
            hint = _("did you mean {close!r}? ", close=close) if close else ""
            raise ValueError(_(
                "--cluster {cluster!r}: no such cluster in the fleet; {hint}write a cluster "
                "id from the fleet file, or use --target for a commune, village or tag",
                cluster=cluster, hint=hint,
            ))
        return {cluster}
    if target is not None:
        problem = fleet.target_problem(target)
        if problem is not None:
            raise ValueError(f"--target {target!r}: {problem}")
        return set(fleet.resolve([target]))
    return None


def target_label(fleet: Fleet, name: str) -> str:
    """A target as a manager reads it: the node's or cluster's name, a tag, or all."""
    if name == ALL:
        return _("all")
    if name.startswith(TAG_PREFIX):
        return name
    if name in fleet.nodes:
        return fleet.nodes[name].name
    if name in fleet.clusters:
        return f"{fleet.clusters[name].name} ({name})"
    try:  # a statistics code or a name written another way: the place's own name
        found = fleet.lookup(name)
    except KeyError:
        return name
    return target_label(fleet, found) if found != name else name


def where(fleet: Fleet, programme: Programme) -> str:
    text = ", ".join(target_label(fleet, t) for t in programme.targets)
    if programme.exclude:
        text += _("; less {targets}",
                  targets=", ".join(target_label(fleet, t) for t in programme.exclude))
    return text


def measure(programmes: Iterable[Programme], bitrate_kbps: int = 24) -> dict[Path, float]:
    """Durations of the programmes' audio files (those that decode), each measured once."""
    durations: dict[Path, float] = {}
    failed: set[Path] = set()
    with tempfile.TemporaryDirectory(prefix="loa-schedule-") as scratch:
        library = AudioLibrary(Path(scratch), AudioSettings(bitrate_kbps=bitrate_kbps))
        for programme in programmes:
            for bulletin in programme.bulletins:
                for path in bulletin.audio():
                    if path in durations or path in failed:
                        continue
                    try:
                        durations[path] = library.probe(path)
                    except AudioError:
                        failed.add(path)
    return durations


def preview(
    playlists: Playlists,
    fleet: Fleet,
    start: datetime,
    end: datetime,
    tz: ZoneInfo,
    *,
    only: set[str] | None = None,
    durations: Mapping[Path, float] | None = None,
    approval: Callable[[Programme], str | None] | None = None,
) -> list[PreviewRow]:
    """The occurrences in [start, end) as plan() gives them, where they air, in order."""
    rows: list[PreviewRow] = []
    resolved: dict[str, list[str]] = {}
    approvals: dict[str, str | None] = {}
    for occ in plan(playlists, start, end, tz):
        programme = playlists.programmes[occ.programme]
        if occ.programme not in resolved:
            resolved[occ.programme] = fleet.resolve(programme.targets, programme.exclude)
        clusters = resolved[occ.programme]
        shown = [c for c in clusters if only is None or c in only]
        if not shown:
            continue
        if occ.programme not in approvals:
            needs = programme.requires_approval
            approvals[occ.programme] = (
                (approval(programme) if approval else "pending: needs approval")
                if needs else None
            )
        rows.append(PreviewRow(
            occurrence=occ,
            programme=programme,
            clusters=shown,
            all_clusters=len(clusters),
            seconds=programme_seconds(programme, durations) if durations is not None else None,
            approval=approvals[occ.programme],
        ))
    return rows


def holiday_notes(playlists: Playlists, start: datetime, end: datetime, tz: ZoneInfo) -> list[str]:
    """One line per holiday in the window: its days and the programmes that skip it."""
    calendar = playlists.holidays
    if calendar is None:
        return []
    first = start.astimezone(tz).date()
    last = (end - timedelta(microseconds=1)).astimezone(tz).date()
    runs: dict[str, list[tuple[date, date]]] = {}
    for day, ids in calendar.between(first, last):
        for ident in sorted(ids):
            spans = runs.setdefault(ident, [])
            if spans and spans[-1][1] + timedelta(days=1) == day:
                spans[-1] = (spans[-1][0], day)
            else:
                spans.append((day, day))
    notes = []
    for ident, spans in runs.items():
        holiday = calendar.holidays[ident]
        days = ", ".join(str(a) if a == b else f"{a} to {b}" for a, b in spans)
        skipping = sorted(
            p.id for p in playlists.programmes.values()
            if p.schedule.skip is not None
            and (p.schedule.skip == "holidays" or ident in p.schedule.skip)
        )
        airing = sorted(
            p.id for p in playlists.programmes.values()
            if p.schedule.on_holidays is not None
            and (p.schedule.on_holidays == "holidays" or ident in p.schedule.on_holidays)
        )
        note = f"{holiday.name} ({ident}): {days}"
        if skipping:
            note += f"; skipped by {', '.join(skipping)}"
        if airing:
            note += f"; aired on by {', '.join(airing)}"
        notes.append(note)
    return notes
