"""The schedule: APScheduler glue, and the plan it follows (docs/scheduling.md).

`plan()` lists every occurrence of every programme in a time window. It is the one
source of truth: `loa-controller schedule` prints it, and the scheduler fires it.

How the scheduler runs (the choices APScheduler leaves to us, made explicit):
- One `DateTrigger` job per occurrence, added for a rolling horizon (lead time plus
  one hour ahead, re-planned every few minutes and on every reload). Job ids are
  `occ:<programme>@<UTC start>`, so re-planning never adds the same occurrence twice.
- A job fires `lead_time` before the occurrence starts: the play command and audio reach
  the agents ahead, and they start on their own clock even if the link drops. An
  occurrence whose start is already closer than the lead time when it is planned (at
  start-up, after a reload) gets a run date in the past, and APScheduler runs it at once.
- `misfire_grace_time=None` and `coalesce=False`: APScheduler never drops or merges a
  late run silently. The dispatch itself decides: still before the programme's latest
  start (start + lateness) → sent; later → recorded as missed with the reason.
- Every occurrence dealt with is recorded in the store (sent or missed); an occurrence
  already recorded is never sent again. That is what stops a restart at noon from
  replaying the morning bulletin, while a restart still picks up the afternoon one (its
  job is planned again from the playlists).
- No silent skips: each re-plan first sweeps the occurrences whose latest start passed
  since the previous re-plan (the store keeps that instant, the "mark", across
  restarts) and has the dispatcher record every one not dealt with as missed, with the
  reason (the controller was not running, not approved in time, ...).
- An occurrence waiting for approval is tried again every `APPROVAL_RETRY`, and once
  more just after its latest start (then it is recorded as missed).
- Reload swaps playlists atomically: jobs of occurrences that no longer exist are
  removed, new ones added; occurrences already dispatched stay as they were.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol
from zoneinfo import ZoneInfo

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from protocol.clock import Clock

if TYPE_CHECKING:
    from controller.playlist import Playlists, Programme

log = logging.getLogger(__name__)

JOB_PREFIX = "occ:"
REPLAN_EVERY = timedelta(minutes=5)
HORIZON = timedelta(hours=1)
APPROVAL_RETRY = timedelta(seconds=30)
# A gap this long between two re-plans means the controller was not running meanwhile.
DOWN_AFTER = 2 * REPLAN_EVERY
MARK = "scheduler"

# What the dispatcher did with an occurrence:
#   sent     the play went out (and is recorded)
#   missed   recorded as missed, with the reason
#   waiting  not sent yet (approval pending): try again later
#   skipped  nothing to do: already recorded, being sent right now, or no longer planned
Outcome = Literal["sent", "missed", "waiting", "skipped"]


class Dispatch(Protocol):
    """What the scheduler calls for a due occurrence (controller.dispatch.Dispatcher)."""

    def __call__(self, occ: Occurrence, *, down_since: datetime | None = None) -> Outcome: ...


class MarkStore(Protocol):
    """Where the scheduler keeps its mark across restarts
    (controller.store.status.MarkRepository)."""

    def get(self, name: str) -> datetime | None: ...
    def set(self, name: str, at: datetime) -> None: ...


class MemoryMarks:
    """A MarkStore that forgets on restart (tests, or a scheduler without a store)."""

    def __init__(self) -> None:
        self._marks: dict[str, datetime] = {}

    def get(self, name: str) -> datetime | None:
        return self._marks.get(name)

    def set(self, name: str, at: datetime) -> None:
        self._marks[name] = at


@dataclass(frozen=True)
class PlannedJob:
    """An APScheduler job for one occurrence; `due` is in the injected clock's time."""

    occurrence: Occurrence
    due: datetime


@dataclass(frozen=True)
class Occurrence:
    """One scheduled start of one programme."""

    programme: str
    start: datetime  # UTC
    latest_start: datetime  # UTC: later than this, the play is recorded as missed

    @property
    def job_id(self) -> str:
        return f"{JOB_PREFIX}{self.programme}@{self.start.strftime('%Y%m%dT%H%M%SZ')}"

    @property
    def play_id(self) -> str:
        return f"{self.programme}@{self.start.strftime('%Y%m%dT%H%M%SZ')}"


def occurrences_of(
    programme: Programme, start: datetime, end: datetime, tz: ZoneInfo
) -> list[Occurrence]:
    return [
        Occurrence(programme.id, when.astimezone(UTC), (when + programme.lateness).astimezone(UTC))
        for when in programme.occurrences(start, end, tz)
    ]


def plan(
    playlists: Playlists, start: datetime, end: datetime, tz: ZoneInfo
) -> list[Occurrence]:
    """Every occurrence of every programme with start in [start, end), in time order."""
    found: list[Occurrence] = []
    for programme in playlists.programmes.values():
        found.extend(occurrences_of(programme, start, end, tz))
    return sorted(found, key=lambda o: (o.start, o.programme))


class Scheduler:
    """Keeps one APScheduler job per upcoming occurrence and fires `dispatch` for it."""

    def __init__(
        self,
        *,
        clock: Clock,
        tz: ZoneInfo,
        lead_time: timedelta,
        dispatch: Dispatch,
        already_dealt_with: Callable[[Occurrence], bool],
        marks: MarkStore | None = None,
    ) -> None:
        self._clock = clock
        self._tz = tz
        self._lead = lead_time
        self._dispatch = dispatch
        self._dealt_with = already_dealt_with
        self._marks = marks or MemoryMarks()
        self._lock = threading.RLock()
        self._playlists: Playlists | None = None
        self._planned: dict[str, PlannedJob] = {}
        self._stopping = False
        self._aps = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"misfire_grace_time": None, "coalesce": False, "max_instances": 1},
        )

    @property
    def playlists(self) -> Playlists | None:
        return self._playlists

    @property
    def lead_time(self) -> timedelta:
        return self._lead

    @property
    def running(self) -> bool:
        return bool(self._aps.running)

    def start(self) -> None:
        self._aps.start()
        self._aps.add_job(
            self.replan, "interval", seconds=REPLAN_EVERY.total_seconds(), id="replan"
        )
        self.replan()

    def shutdown(self) -> None:
        self._stopping = True
        if self._aps.running:
            self._aps.shutdown(wait=False)

    def swap(self, playlists: Playlists) -> None:
        """Atomically replace the programmes (a validated reload) and re-plan."""
        with self._lock:
            self._playlists = playlists
        if self._aps.running:
            self.replan()

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """Occurrences worth a job now: not yet past their latest start, up to the horizon."""
        assert self._playlists is not None
        return now - self._longest_lateness(), now + self._lead + HORIZON

    def _longest_lateness(self) -> timedelta:
        assert self._playlists is not None
        return max(
            (p.lateness for p in self._playlists.programmes.values()), default=timedelta(0)
        )

    def due_time(self, occ: Occurrence) -> datetime:
        """When the occurrence is sent: lead_time before its start (in the clock's time)."""
        return occ.start - self._lead

    def upcoming(self, now: datetime) -> list[Occurrence]:
        with self._lock:
            if self._playlists is None:
                return []
            start, end = self.window(now)
            return [
                o for o in plan(self._playlists, start, end, self._tz)
                if o.latest_start >= now and not self._dealt_with(o)
            ]

    def sweep(self, now: datetime) -> list[Occurrence]:
        """Have every occurrence whose latest start passed since the mark dealt with.

        The dispatcher records each one not yet recorded as missed, with its reason.
        Returns the occurrences it was asked about. The first run ever has no mark:
        nothing before it is invented as missed.
        """
        with self._lock:
            if self._playlists is None:
                return []
            mark = self._marks.get(MARK)
            if mark is None or mark >= now:
                return []
            down_since = mark if now - mark > DOWN_AFTER else None
            swept = [
                o for o in plan(self._playlists, mark - self._longest_lateness(), now, self._tz)
                if mark <= o.latest_start < now and not self._dealt_with(o)
            ]
        for occ in swept:
            self._call(occ, down_since)
        return swept

    def replan(self) -> None:
        now = self._clock.now()
        with self._lock:
            if self._playlists is None:
                return
            self.sweep(now)
            wanted = {o.job_id: o for o in self.upcoming(now)}
            for job_id in set(self._planned) - wanted.keys():
                self._unplan(job_id)
            for job_id, occ in wanted.items():
                if job_id not in self._planned:
                    self._plan(occ, self.due_time(occ), now)
            self._marks.set(MARK, now)
        log.debug("planned %d upcoming occurrences", len(wanted))

    def planned(self) -> list[PlannedJob]:
        """The jobs waiting to fire, by due time (clock time)."""
        with self._lock:
            return sorted(
                self._planned.values(), key=lambda j: (j.due, j.occurrence.programme)
            )

    def pending_jobs(self) -> list[str]:
        return sorted(j.id for j in self._aps.get_jobs() if j.id.startswith(JOB_PREFIX))

    # --- jobs ---------------------------------------------------------------------------------

    def _plan(self, occ: Occurrence, due: datetime, now: datetime) -> None:
        # Convert the (possibly injected) clock's time to the wall clock APScheduler uses.
        # A due time in the past runs at once (misfire_grace_time=None).
        skew = datetime.now(UTC) - now
        self._aps.add_job(
            self._fire, "date", run_date=due + skew, args=[occ], id=occ.job_id,
            replace_existing=True,
        )
        self._planned[occ.job_id] = PlannedJob(occ, due)

    def _unplan(self, job_id: str) -> None:
        self._planned.pop(job_id, None)
        with contextlib.suppress(JobLookupError):  # it fired meanwhile
            self._aps.remove_job(job_id)

    def _call(self, occ: Occurrence, down_since: datetime | None = None) -> Outcome | None:
        try:
            return self._dispatch(occ, down_since=down_since)
        except Exception as exc:
            # Not recorded: planned again at the next re-plan (or start) while it can still
            # start, then swept as missed.
            if self._stopping:  # the store or the link went away under it: no fault
                log.info("dispatch of %s cut short by the controller stopping (%s); it is "
                         "dispatched at the next start while it can still start",
                         occ.play_id, type(exc).__name__)
                return None
            log.exception("dispatch of %s failed", occ.play_id)
            return None

    def _fire(self, occ: Occurrence) -> None:
        outcome = self._call(occ)
        now = self._clock.now()
        with self._lock:
            self._unplan(occ.job_id)
            if outcome == "waiting":
                # Waiting for approval: again soon, and once just after the latest start,
                # when the dispatcher records it as missed.
                retry = min(now + APPROVAL_RETRY, occ.latest_start + timedelta(seconds=1))
                self._plan(occ, retry, now)
