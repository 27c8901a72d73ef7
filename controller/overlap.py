"""Overlaps: two airings of the same level on the same cluster at the same time.

A cluster has one output. A higher level interrupts a lower one (that is what levels
are for), but airings of the same level wait for each other in start order, so the
second one starts late and may be missed. `loa-controller check` reports every pair of
programmes (and every programme with itself: repeats or times closer than its length)
whose airings overlap on a shared cluster within a horizon (the next 366 days), with the
file:line of both.

An airing lasts its programme's audio: each bulletin's files as measured (before the
silence trimming of preparation, so a little longer, never shorter), with the short gap
preparation puts between the parts; the bulletins of a programme air one after another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from controller.audio import GAP_MS
from controller.fleet import Fleet
from controller.playlist import Playlists, Programme
from protocol.config_errors import Problem
from protocol.l10n import _, current

HORIZON = timedelta(days=366)
SHOWN_CLUSTERS = 3


def programme_seconds(programme: Programme, durations: Mapping[Path, float]) -> float | None:
    """How long one airing lasts, from each audio file's duration (a rebroadcast's own
    duration); None if one is unknown."""
    total = 0.0
    for bulletin in programme.bulletins:
        if bulletin.rebroadcast is not None:
            total += bulletin.rebroadcast.duration.total_seconds()
            continue
        parts = bulletin.audio()
        if any(path not in durations for path in parts):
            return None
        total += sum(durations[path] for path in parts) + GAP_MS / 1000 * (len(parts) - 1)
    return total


def span(seconds: float) -> str:
    """A duration as managers write it: 45s, 3m20s, 1h05m."""
    whole = max(1, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


@dataclass(frozen=True)
class _Airings:
    programme: Programme
    length: timedelta
    clusters: frozenset[str]
    starts: list[datetime]


def _clashes(
    a: Sequence[datetime], a_len: timedelta, b: Sequence[datetime], b_len: timedelta
) -> list[tuple[datetime, datetime]]:
    """Pairs (start in a, start in b) of overlapping airings; both lists sorted."""
    found = []
    i = j = 0
    while i < len(a) and j < len(b):
        a_end, b_end = a[i] + a_len, b[j] + b_len
        if a[i] < b_end and b[j] < a_end:
            found.append((a[i], b[j]))
        if a_end <= b_end:
            i += 1
        else:
            j += 1
    return found


def _names(clusters: frozenset[str]) -> str:
    ordered = sorted(clusters)
    shown = ", ".join(ordered[:SHOWN_CLUSTERS])
    more = len(ordered) - SHOWN_CLUSTERS
    return _("{shown} and {more} more", shown=shown, more=more) if more > 0 else shown


def _times(count: int) -> str:
    return _("once") if count == 1 else _("{count} times", count=count)


#: Days of the week as Vietnamese write them in a date (Monday first).
_WEEKDAYS_VI = ("T2", "T3", "T4", "T5", "T6", "T7", "CN")


def overlaps(
    playlists: Playlists,
    fleet: Fleet,
    durations: Mapping[Path, float],
    tz: ZoneInfo,
    start: datetime,
    end: datetime,
) -> list[Problem]:
    """Every same-level overlap on a shared cluster among airings starting in [start, end)."""
    found: list[_Airings] = []
    for programme in playlists.programmes.values():
        seconds = programme_seconds(programme, durations)
        if seconds is None:
            continue  # its audio is reported as missing or undecodable already
        try:
            clusters = frozenset(fleet.resolve(programme.targets, programme.exclude))
        except KeyError:
            continue
        if clusters:
            found.append(_Airings(
                programme, timedelta(seconds=seconds), clusters,
                list(programme.occurrences(start, end, tz)),
            ))
    found.sort(key=lambda a: (a.programme.source.file, a.programme.source.line))
    days = (end - start).days
    problems: list[Problem] = []

    def local(at: datetime) -> str:
        """Ends with HH:MM (cut off when both airings fall on one day)."""
        there = at.astimezone(tz)
        if current() == "vi":
            return f"{_WEEKDAYS_VI[there.weekday()]} {there:%d/%m/%Y %H:%M}"
        return there.strftime("%a %Y-%m-%d %H:%M")

    for one in found:
        p = one.programme
        close = [(x, y) for x, y in zip(one.starts, one.starts[1:], strict=False)
                 if y < x + one.length]
        if close:
            x, y = close[0]
            problems.append(Problem(
                p.source.file, p.source.line, 1,
                _("programme '{id}' lasts {length} but airs again "
                  "{after} after it starts (first at {first}; "
                  "{times} in the next {days} days): the airings overlap on its "
                  "clusters and the later one may be missed. Space its times or its repeat "
                  "gap at least {length} apart", id=p.id, length=span(one.length.total_seconds()),
                  after=span((y - x).total_seconds()), first=local(x),
                  times=_times(len(close)), days=days),
            ))
    for i, a in enumerate(found):
        for b in found[i + 1:]:
            pa, pb = a.programme, b.programme
            if pa.level != pb.level or a.clusters.isdisjoint(b.clusters):
                continue
            clashes = _clashes(a.starts, a.length, b.starts, b.length)
            if not clashes:
                continue
            first_a, first_b = clashes[0]
            # Report at the programme that would wait; name the other with its file:line.
            if first_b >= first_a:
                waits, waits_at, other, other_at, other_len = pb, first_b, pa, first_a, a.length
            else:
                waits, waits_at, other, other_at, other_len = pa, first_a, pb, first_b, b.length
            shared = a.clusters & b.clusters
            same_day = waits_at.astimezone(tz).date() == other_at.astimezone(tz).date()
            waits_when = local(waits_at)[-5:] if same_day else local(waits_at)
            problems.append(Problem(
                waits.source.file, waits.source.line, 1,
                _("programme '{waits}' overlaps programme '{other}' at {source} "
                  "(both level {level}) on {n} cluster(s) ({names}): "
                  "'{other}' airs at {other_at} for {length} "
                  "and '{waits}' starts at {waits_at} "
                  "({times} in the next {days} days). Same-level airings "
                  "wait for each other, so '{waits}' may be missed: move one of them, "
                  "change its targets, or give one another level", waits=waits.id,
                  other=other.id, source=other.source, level=pa.level, n=len(shared),
                  names=_names(shared), other_at=local(other_at),
                  length=span(other_len.total_seconds()), waits_at=waits_when,
                  times=_times(len(clashes)), days=days),
            ))
    return problems
