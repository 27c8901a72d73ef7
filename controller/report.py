"""Proof-of-play reports (báo cáo kết quả phát), computed from the stored events only.

There is no second set of counters: every figure is worked out, when the report is
asked for, from the rows the store kept as things happened (controller.store.history).

A **play** here is one play on one cluster: a play sent to 12 clusters is 12 plays
scheduled. Each ends in one outcome, the last one its cluster reported:

- aired in full (đã phát xong): the cluster's last final event is `finished`;
- interrupted (bị ngắt): its last final event is `interrupted` (preempted by a higher
  level, or stopped);
- missed (bị lỡ): its last final event is `missed` (with the cluster's reason); or it
  reported nothing final and the controller recorded it "not received" (no
  confirmation by its latest start) or withdrawn (stopped before it started);
- failed (lỗi): its last final event is `failed` (with the reason);
- no result (chưa có kết quả): nothing final yet (still to come, or playing).

An interrupted play replayed to its end (`replay_if_interrupted`) is aired in full.
**Seconds aired** add up, for each `playing` event, the time to the next `finished`,
`interrupted` or `failed` of the same play on the same cluster, by the cluster's own
clock (so a replay counts both the cut part and the whole). Occurrences the controller
recorded as missed without sending them (it was not running, the programme was not
approved in time, its audio was refused) reach no cluster: they are counted per
programme as **not sent**, with the reason. **Live seconds** add up, for every live
session (a microphone, or a rebroadcast of a station) that ended in the range on a
cluster, the seconds of audio the cluster says it aired (its `finished`, `interrupted`
or `missed` event's `seconds`); by programme, a session's row is `live:<its title>`.
A cluster's **offline time** is the time in the range, up to now, during which its last
stored change of state was `offline`.

Plays belong to the range their start falls in, in the fleet's time zone: `--from
2026-11-01 --to 2026-11-30` is every play starting on those local days.
"""

from __future__ import annotations

import calendar
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from controller.store.history import History, StoredCluster
from protocol.l10n import _

Outcome = Literal["aired", "interrupted", "missed", "failed", "unknown"]
OUTCOMES: tuple[Outcome, ...] = ("aired", "interrupted", "missed", "failed", "unknown")
GroupBy = Literal["cluster", "commune", "programme", "level"]
GROUPINGS: tuple[GroupBy, ...] = ("cluster", "commune", "programme", "level")
LEVELS = ("normal", "priority", "emergency")
_FINAL: dict[str, Outcome] = {
    "finished": "aired", "interrupted": "interrupted", "missed": "missed", "failed": "failed",
}
_ENDS_AIRING = frozenset({"finished", "interrupted", "failed"})
URGENT_PREFIX = "urgent:"
#: A programme row of live sessions (report by programme): live:<the session's title>.
LIVE_PREFIX = "live:"


@dataclass(frozen=True)
class PlayOnCluster:
    """One play on one cluster, and how it ended."""

    play_id: str
    programme: str  # the programme id, or urgent:<play id> for an urgent announcement
    title: str
    level: str
    cluster: str
    start_at: datetime
    outcome: Outcome
    reason: str | None
    seconds: float


@dataclass
class Tally:
    """The figures of one row of a report."""

    key: str
    name: str
    commune: str = ""
    commune_name: str = ""
    clusters: int = 0
    scheduled: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    aired_by_level: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    offline_s: float | None = None
    #: Seconds of live audio aired (microphone sessions and rebroadcasts together), from
    #: the seconds each cluster reported at a session's end.
    live_s: float = 0.0
    not_sent: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, play: PlayOnCluster) -> None:
        self.scheduled += 1
        self.outcomes[play.outcome] += 1
        if play.outcome == "aired":
            self.aired_by_level[play.level] += 1
        self.seconds += play.seconds
        if play.reason and play.outcome in ("missed", "failed"):
            self.reasons[f"{play.outcome}: {reason_kind(play.reason)}"] += 1

    def count(self, outcome: Outcome) -> int:
        return self.outcomes.get(outcome, 0)

    def reasons_text(self) -> str:
        return "; ".join(f"{why} ×{n}" for why, n in sorted(
            self.reasons.items(), key=lambda item: (-item[1], item[0])
        ))


@dataclass
class Report:
    start: datetime
    end: datetime
    tz: ZoneInfo
    by: GroupBy
    rows: list[Tally]
    total: Tally
    plays: list[PlayOnCluster]

    @property
    def first_day(self) -> date:
        return self.start.astimezone(self.tz).date()

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(microseconds=1)).astimezone(self.tz).date()


def reason_kind(reason: str) -> str:
    """What a reason says, without its particulars: "not received: no confirmation ... by
    06:05" is "not received"; a reason with no such head is kept whole (80 characters)."""
    head, sep, _ = reason.partition(":")
    if sep and 0 < len(head) <= 40:
        return head.strip()
    text = re.sub(r"\s+", " ", reason).strip()
    return text if len(text) <= 80 else text[:79] + "…"


def plays_on_clusters(history: History) -> list[PlayOnCluster]:
    """Every play of the history on every cluster it was sent to, with its outcome."""
    by_pair: dict[tuple[str, str], list[tuple[str, datetime, str | None]]] = {}
    for ev in history.events:  # in time order
        by_pair.setdefault((ev.play_id, ev.cluster), []).append((ev.kind, ev.at, ev.reason))
    confirmed = {(c.play_id, c.cluster): c for c in history.confirmations}
    found: list[PlayOnCluster] = []
    for play in history.plays:
        programme = play.programme or f"{URGENT_PREFIX}{play.play_id}"
        for cluster in play.clusters:
            reported = by_pair.get((play.play_id, cluster), [])
            outcome: Outcome = "unknown"
            reason: str | None = None
            for kind, _at, why in reported:
                if kind in _FINAL:
                    outcome = _FINAL[kind]
                    reason = why
            if outcome == "unknown":
                confirmation = confirmed.get((play.play_id, cluster))
                if confirmation is not None and confirmation.state == "missed":
                    outcome, reason = "missed", confirmation.reason or "not received"
                elif confirmation is not None and confirmation.state == "withdrawn":
                    outcome, reason = "missed", "withdrawn: stopped before it started"
            found.append(PlayOnCluster(
                play.play_id, programme, play.bulletin, play.level, cluster, play.start_at,
                outcome, reason, _seconds_aired(reported),
            ))
    return found


def _seconds_aired(reported: list[tuple[str, datetime, str | None]]) -> float:
    total = 0.0
    started: datetime | None = None
    for kind, at, _reason in reported:
        if kind == "playing":
            started = at
        elif kind in _ENDS_AIRING and started is not None:
            total += max(0.0, (at - started).total_seconds())
            started = None
    return total


def offline_seconds(
    history: History, clusters: Iterable[str], now: datetime
) -> dict[str, float]:
    """Per cluster: seconds in [start, min(end, now)) it spent offline, by its stored
    changes of state (none stored: 0)."""
    end = min(history.end, max(now, history.start))
    changes: dict[str, list[tuple[datetime, str]]] = {}
    for change in history.state_changes:
        changes.setdefault(change.cluster, []).append((change.at, change.state))
    out: dict[str, float] = {}
    for cluster in clusters:
        total = 0.0
        timeline = sorted(changes.get(cluster, []))
        for i, (at, state) in enumerate(timeline):
            if state != "offline":
                continue
            until = timeline[i + 1][0] if i + 1 < len(timeline) else end
            a, b = max(at, history.start), min(until, end)
            if b > a:
                total += (b - a).total_seconds()
        out[cluster] = total
    return out


def build(history: History, tz: ZoneInfo, by: GroupBy, now: datetime) -> Report:
    """The report of a history, one row per cluster, commune, programme or level."""
    played = plays_on_clusters(history)
    known = {c.id: c for c in history.clusters}
    for p in played:  # a cluster the store does not list
        known.setdefault(p.cluster, StoredCluster(p.cluster, p.cluster, "", "", False))
    listed = [c for c in known.values() if c.in_fleet or any(p.cluster == c.id for p in played)]
    offline = offline_seconds(history, [c.id for c in listed], now)
    rows: dict[str, Tally] = {}
    if by == "cluster":
        for c in sorted(listed, key=lambda c: (c.commune, c.id)):
            rows[c.id] = Tally(c.id, c.name, c.commune, c.commune_name, clusters=1,
                               offline_s=offline[c.id])
        for p in played:
            rows[p.cluster].add(p)
    elif by == "commune":
        for c in sorted(listed, key=lambda c: c.commune):
            row = rows.setdefault(c.commune, Tally(c.commune, c.commune_name, c.commune,
                                                   c.commune_name, offline_s=0.0))
            row.clusters += 1
            row.offline_s = (row.offline_s or 0.0) + offline[c.id]
        for p in played:
            c = known[p.cluster]
            rows.setdefault(c.commune, Tally(c.commune, c.commune_name or "?")).add(p)
    elif by == "programme":
        for p in played:
            rows.setdefault(p.programme, Tally(p.programme, p.title)).add(p)
        for miss in history.not_sent:
            row = rows.setdefault(miss.programme, Tally(miss.programme, miss.programme))
            row.not_sent += 1
            row.reasons[f"not sent: {reason_kind(miss.reason)}"] += 1
        for row in rows.values():
            row.clusters = len({p.cluster for p in played if p.programme == row.key})
    else:
        for level in LEVELS:
            rows[level] = Tally(level, level)
        for p in played:
            rows.setdefault(p.level, Tally(p.level, p.level)).add(p)
        for row in rows.values():
            row.clusters = len({p.cluster for p in played if p.level == row.key})
    for aired in history.live:
        c = known.setdefault(
            aired.cluster, StoredCluster(aired.cluster, aired.cluster, "", "", False)
        )
        key, name = {
            "cluster": (c.id, c.name), "commune": (c.commune, c.commune_name or "?"),
            "programme": (f"{LIVE_PREFIX}{aired.bulletin}", aired.bulletin),
            "level": (aired.level, aired.level),
        }[by]
        rows.setdefault(key, Tally(key, name)).live_s += aired.seconds
    total = Tally("total", "total", clusters=len(listed),
                  offline_s=sum(offline.values()) if by in ("cluster", "commune") else None)
    for p in played:
        total.add(p)
    total.live_s = sum(aired.seconds for aired in history.live)
    total.not_sent = len(history.not_sent)
    for miss in history.not_sent:
        total.reasons[f"not sent: {reason_kind(miss.reason)}"] += 1
    ordered = list(rows.values())
    if by == "programme":
        ordered.sort(key=lambda r: r.key)
    return Report(history.start, history.end, tz, by, ordered, total, played)


# --- ranges of local days ---------------------------------------------------------------------


def parse_day(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(_(
            "{what} {text!r} is not a date: write YYYY-MM-DD, e.g. 2026-11-27", what=what,
            text=text,
        )) from None


def period(
    *,
    first: str | None = None,
    last: str | None = None,
    day: str | None = None,
    week: str | None = None,
    month: str | None = None,
) -> tuple[date | None, date | None]:
    """The first and last local day a report covers (None: open on that side).

    --day D; --week D (Monday to Sunday around D); --month YYYY-MM; or --from/--to.
    """
    if day:
        d = parse_day(day, "--day")
        return d, d
    if week:
        d = parse_day(week, "--week")
        monday = d - timedelta(days=d.weekday())
        return monday, monday + timedelta(days=6)
    if month:
        found = re.fullmatch(r"\s*(\d{4})-(\d{1,2})\s*", month)
        if not found or not 1 <= int(found[2]) <= 12:
            raise ValueError(_("--month {month!r}: write YYYY-MM, e.g. 2026-11", month=month))
        year, m = int(found[1]), int(found[2])
        return date(year, m, 1), date(year, m, calendar.monthrange(year, m)[1])
    a = parse_day(first, "--from") if first else None
    b = parse_day(last, "--to") if last else None
    if a and b and b < a:
        raise ValueError(
            _("--to {b} is before --from {a}: write the earlier day first", a=a, b=b)
        )
    return a, b


def local_range(first: date, last: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[first 00:00, the day after last 00:00) in local time, as aware datetimes."""
    return (
        datetime.combine(first, time(0), tz),
        datetime.combine(last + timedelta(days=1), time(0), tz),
    )


def restrict(history: History, clusters: frozenset[str], *, whole_fleet: bool) -> History:
    """The history as seen by someone whose part of the fleet is `clusters`: their
    clusters' plays, events and states only. Occurrences never sent reached no cluster:
    they are kept only for the whole fleet."""
    plays = [
        replace(p, clusters=tuple(c for c in p.clusters if c in clusters))
        for p in history.plays
    ]
    plays = [p for p in plays if p.clusters]
    kept = {p.play_id for p in plays}
    return History(
        history.start, history.end, plays,
        [e for e in history.events if e.cluster in clusters and e.play_id in kept],
        [c for c in history.confirmations if c.cluster in clusters and c.play_id in kept],
        history.not_sent if whole_fleet else [],
        [c for c in history.clusters if c.id in clusters],
        [s for s in history.state_changes if s.cluster in clusters],
    )
