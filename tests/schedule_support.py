"""A controller's scheduling parts on an injected clock, for the scheduling tests.

`Rig` builds what `controller.main.Controller` builds for scheduling — the store (a real
SQLite file), the audio library (real ffmpeg), approvals, the dispatcher and the
scheduler — around a `ManualClock`, with a distributor that records what it would
publish instead of publishing it. APScheduler is not started: `run()` moves the clock
step by step, re-plans every REPLAN_EVERY as the running scheduler does, and fires each
job whose due time has come through the scheduler's own `_fire`, so what is tested is
the scheduler's planning and the dispatch path; `test_schedule_live.py` runs the same
on a real APScheduler and a real broker.

`restart()` throws the parts away and builds them again on the same store file: a
controller restart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from textwrap import dedent
from zoneinfo import ZoneInfo

from controller.approval import Approvals
from controller.audio import AudioLibrary
from controller.dispatch import Dispatcher
from controller.distribution import PlaySpec
from controller.fleet import Fleet
from controller.playlist import Playlists
from controller.samples import tone
from controller.schedule import REPLAN_EVERY, Scheduler
from controller.sources import load_together
from controller.store import Store
from protocol.clock import ManualClock

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
LEAD = timedelta(minutes=30)

FLEET = """\
province:
  id: tinh-thu
  name: Tỉnh Thử
  communes:
    - id: xa-a
      name: Xã A
      clusters:
        - {id: a-01, name: Cụm A1}
        - {id: a-02, name: Cụm A2}
    - id: xa-b
      name: Xã B
      clusters:
        - {id: b-01, name: Cụm B1}
"""

# Morning and evening news every day, a weekly programme that needs approval, and a
# campaign repeated 15 minutes after each start, only in xa-b.
PLAYLIST = """\
programmes:
  - id: tin-sang
    name: Tin sáng
    bulletins: [{files: [tin.wav]}]
    schedule: {times: ["06:00"]}
    targets: [all]
    lateness: 10m
  - id: tin-chieu
    name: Tin chiều
    bulletins: [{files: [tin.wav]}]
    schedule: {times: ["17:30"]}
    targets: [all]
    lateness: 10m
  - id: phap-luat
    name: Pháp luật
    bulletins: [{title: Pháp luật tuần này, files: [luat.wav]}]
    schedule: {times: ["19:00"], weekdays: [sat]}
    targets: [xa-a]
    lateness: 30m
    requires_approval: true
  - id: chien-dich
    name: Chiến dịch
    level: priority
    bulletins: [{files: [tin.wav]}]
    schedule: {times: ["07:00"], weekdays: workdays, repeat: {count: 2, gap: 15m}}
    targets: [xa-b]
    lateness: 5m
"""


def local(day: date, hour: int, minute: int = 0, tz: ZoneInfo = HCM) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=tz)


@dataclass(frozen=True)
class Sent:
    at: datetime  # the clock's time when it was published
    spec: PlaySpec


class RecordingDistributor:
    """Stands in for controller.distribution.Distributor: records each play it is given.

    `fail` makes send_play raise (a broker-side failure); `gate` holds send_play until
    the test releases it (a slow send, for concurrency).
    """

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.sent: list[Sent] = []
        self.fail: Callable[[PlaySpec], bool] = lambda _spec: False
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def send_play(self, spec: PlaySpec) -> object:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail(spec):
            raise RuntimeError(f"publishing {spec.play_id} failed")
        with self._lock:
            self.sent.append(Sent(self.clock.now(), spec))
        return None

    def play_ids(self) -> list[str]:
        with self._lock:
            return [s.spec.play_id for s in self.sent]


class Rig:
    def __init__(
        self,
        folder: Path,
        clock: ManualClock,
        *,
        tz: ZoneInfo = HCM,
        lead: timedelta = LEAD,
        playlist: str = PLAYLIST,
        holidays: str | None = None,
    ) -> None:
        self.folder = folder
        self.clock = clock
        self.tz = tz
        self.lead = lead
        (folder / "playlists").mkdir(parents=True, exist_ok=True)
        self.fleet_path = folder / "fleet.yaml"
        self.fleet_path.write_text(FLEET, encoding="utf-8")
        self.playlist_path = folder / "playlists" / "list.yaml"
        self.playlist_path.write_text(dedent(playlist), encoding="utf-8")
        self.holidays_path: Path | None = None
        if holidays is not None:
            self.holidays_path = folder / "holidays.yaml"
            self.holidays_path.write_text(dedent(holidays), encoding="utf-8")
        tone(folder / "playlists" / "tin.wav", 0.4)
        tone(folder / "playlists" / "luat.wav", 0.4, freq=660)
        self.store_url = f"sqlite:///{folder / 'controller.db'}"
        self.library = AudioLibrary(folder / "content")
        self.distributor = RecordingDistributor(clock)
        self.fleet, self.playlists = self.load()
        self._last_replan: datetime | None = None
        self.boot()

    def load(self) -> tuple[Fleet, Playlists]:
        return load_together(
            self.fleet_path, [self.playlist_path], tz=self.tz, holidays=self.holidays_path
        )

    def boot(self) -> None:
        """Build the parts as Controller does, and plan (a controller start)."""
        self.store = Store(self.store_url)
        self.approvals = Approvals(self.store)
        self.dispatcher = Dispatcher(
            store=self.store,
            distributor=self.distributor,
            library=self.library,
            clock=self.clock,
            state=lambda: (self.playlists, self.fleet),
            is_approved=self.approvals.is_approved,
            tz=self.tz,
        )
        self.scheduler = Scheduler(
            clock=self.clock,
            tz=self.tz,
            lead_time=self.lead,
            dispatch=self.dispatcher,
            already_dealt_with=self.dispatcher.already_dealt_with,
            marks=self.store.marks,
        )
        self.scheduler.swap(self.playlists)
        self.replan()

    def stop(self) -> None:
        self.scheduler.shutdown()
        self.store.close()

    def restart(self, at: datetime) -> None:
        """Stop, let the clock jump to `at` (the controller is down meanwhile), start."""
        self.stop()
        self.clock.set(at)
        self.boot()

    def reload(self) -> None:
        """Swap in the playlists as they are now on disk (as Controller.reload does)."""
        self.fleet, self.playlists = self.load()
        self.scheduler.swap(self.playlists)
        self.replan()

    def replan(self) -> None:
        self.scheduler.replan()
        self._last_replan = self.clock.now()

    def fire_due(self) -> list[str]:
        """Fire every planned job whose due time has come, as APScheduler would."""
        now = self.clock.now()
        fired = []
        for job in self.scheduler.planned():
            if job.due <= now:
                self.scheduler._fire(job.occurrence)
                fired.append(job.occurrence.play_id)
        return fired

    def run(self, until: datetime, step: timedelta = timedelta(minutes=1)) -> None:
        """Move the clock to `until`: re-plan every REPLAN_EVERY, fire what is due."""
        while True:
            now = self.clock.now()
            if self._last_replan is None or now - self._last_replan >= REPLAN_EVERY:
                self.replan()
            self.fire_due()
            if now >= until:
                return
            self.clock.set(min(now + step, until))

    def outcome(self, programme: str, start: datetime) -> tuple[str, str | None] | None:
        return self.store.dispatches.of_programme(programme).get(start)
