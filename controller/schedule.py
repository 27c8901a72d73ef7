"""The schedule: APScheduler glue, and the plan it follows.

`plan()` lists every occurrence of every programme in a time window. It is the one
source of truth: `loa-controller schedule` prints it, and the scheduler fires it.

How the scheduler runs (the choices APScheduler leaves to us, made explicit):
- One `DateTrigger` job per occurrence, added for a rolling horizon (lead time plus
  one hour ahead, re-planned every few minutes and on every reload). Job ids are
  `<programme>@<UTC start>`, so re-planning never adds the same occurrence twice.
- A job fires `lead_time` before the occurrence starts: the play command and audio reach
  the agents ahead, and they start on their own clock even if the link drops.
- `misfire_grace_time=None` and `coalesce=False`: APScheduler never drops or merges a
  late run silently. The dispatch itself decides: still before the programme's latest
  start (start + lateness) → sent; later → recorded as missed with the reason.
- Every occurrence dealt with is recorded in the store (sent or missed) before anything
  goes out; an occurrence already recorded is never sent again. That is what stops a
  restart at noon from replaying the morning bulletin, while a restart still picks up
  the afternoon one (its job is planned again from the playlists).
- Reload swaps playlists and fleet atomically: jobs of occurrences that no longer exist
  are removed, new ones added; occurrences already dispatched stay as they were.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
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
        dispatch: Callable[[Occurrence], None],
        already_dealt_with: Callable[[Occurrence], bool],
    ) -> None:
        self._clock = clock
        self._tz = tz
        self._lead = lead_time
        self._dispatch = dispatch
        self._dealt_with = already_dealt_with
        self._lock = threading.RLock()
        self._playlists: Playlists | None = None
        self._aps = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"misfire_grace_time": None, "coalesce": False, "max_instances": 1},
        )

    @property
    def playlists(self) -> Playlists | None:
        return self._playlists

    def start(self) -> None:
        self._aps.start()
        self._aps.add_job(
            self.replan, "interval", seconds=REPLAN_EVERY.total_seconds(), id="replan"
        )
        self.replan()

    def shutdown(self) -> None:
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
        longest = max(
            (p.lateness for p in self._playlists.programmes.values()), default=timedelta(0)
        )
        return now - longest, now + self._lead + HORIZON

    def upcoming(self, now: datetime) -> list[Occurrence]:
        with self._lock:
            if self._playlists is None:
                return []
            start, end = self.window(now)
            return [
                o for o in plan(self._playlists, start, end, self._tz)
                if o.latest_start >= now and not self._dealt_with(o)
            ]

    def replan(self) -> None:
        now = self._clock.now()
        with self._lock:
            wanted = {o.job_id: o for o in self.upcoming(now)}
            existing = {
                job.id for job in self._aps.get_jobs() if job.id.startswith(JOB_PREFIX)
            }
            for job_id in existing - wanted.keys():
                with contextlib.suppress(JobLookupError):  # it fired meanwhile
                    self._aps.remove_job(job_id)
            # Convert the (possibly injected) clock's time to the wall clock APScheduler uses.
            skew = datetime.now(UTC) - now
            for job_id, occ in wanted.items():
                if job_id in existing:
                    continue
                self._aps.add_job(
                    self._fire,
                    "date",
                    run_date=occ.start - self._lead + skew,
                    args=[occ],
                    id=job_id,
                )
        log.debug("planned %d upcoming occurrences", len(wanted))

    def pending_jobs(self) -> list[str]:
        return sorted(j.id for j in self._aps.get_jobs() if j.id.startswith(JOB_PREFIX))

    def _fire(self, occ: Occurrence) -> None:
        try:
            self._dispatch(occ)
        except Exception:
            log.exception("dispatch of %s failed", occ.play_id)

