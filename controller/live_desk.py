"""The controller's live sessions under way: rebroadcasts the scheduler fires, and those
started by hand (`LiveDesk.start`), each on a thread of its own (controller/live.py).

A scheduled rebroadcast is handed over `lead_time` before its start; its thread waits
until the session's delay before the start, so that the clusters air its first audio at
the programme's time, and runs it for its duration (what is left of it, if it starts
late). `sessions()` says what is live where (for `fleet` and the web status); `cut`
ends one; `close` ends them all when the controller stops.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.live import LiveBroadcast, LivePlan, LiveReport, LiveSettings, OpenSource
from protocol.clock import Clock
from protocol.mqtt import Link
from protocol.signing import Signer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveView:
    """A live session as `sessions()` shows it."""

    session_id: str
    bulletin: str
    source: str
    level: str
    clusters: tuple[str, ...]
    started_at: datetime
    ends_by: datetime
    by: str | None = None


class LiveDesk:
    def __init__(
        self,
        link: Link,
        signer: Signer,
        cover: Callable[[list[str]], tuple[list[str], list[str]]],
        clock: Clock,
        settings: LiveSettings | None = None,
    ) -> None:
        self._link = link
        self._signer = signer
        self._cover = cover
        self._clock = clock
        self.settings = settings or LiveSettings()
        self._lock = threading.Lock()
        self._live: dict[str, tuple[LiveBroadcast, LiveView]] = {}
        self._waiting: dict[str, threading.Event] = {}
        self._closed = threading.Event()
        self.reports: list[LiveReport] = []  # of sessions ended, newest last (bounded)

    def schedule(self, key: str, plan: LivePlan, start_at: datetime) -> None:
        """Air plan at start_at (a rebroadcast of the schedule); key: the occurrence."""
        cancel = threading.Event()
        with self._lock:
            if key in self._waiting:
                return
            self._waiting[key] = cancel

        def wait_then_run() -> None:
            try:
                lead = timedelta(milliseconds=self.settings.delay_ms)
                wait = (start_at - lead - self._clock.now()).total_seconds()
                if wait > 0 and (cancel.wait(wait) or self._closed.is_set()):
                    return
                late = max(0.0, (self._clock.now() - (start_at - lead)).total_seconds())
                duration = plan.duration_s
                if duration is not None:
                    duration -= late
                    if duration <= 1:
                        log.warning("rebroadcast %s: its time is over; not started", key)
                        return
                self._run(dataclasses.replace(plan, duration_s=duration), None)
            finally:
                with self._lock:
                    self._waiting.pop(key, None)

        threading.Thread(target=wait_then_run, name=f"live-{key}", daemon=True).start()

    def start(
        self, plan: LivePlan, by: str | None = None, open_source: OpenSource | None = None
    ) -> LiveBroadcast:
        """Start a live session now, on a thread of its own; the broadcast is returned
        (its session id, `stop`). open_source: how its inputs open (a microphone's feed),
        ffmpeg's if None."""
        broadcast = self._broadcast(plan, open_source)
        threading.Thread(
            target=self._run, args=(plan, by, broadcast), name="live-now", daemon=True
        ).start()
        return broadcast

    def _broadcast(self, plan: LivePlan, open_source: OpenSource | None = None) -> LiveBroadcast:
        return LiveBroadcast(
            plan, link=self._link, signer=self._signer, cover=self._cover, clock=self._clock,
            settings=self.settings, open_source=open_source,
        )  # fmt: skip

    def _run(self, plan: LivePlan, by: str | None, made: LiveBroadcast | None = None) -> None:
        broadcast = made or self._broadcast(plan)
        view = LiveView(
            session_id=broadcast.session_id, bulletin=plan.bulletin, source=plan.source,
            level=plan.level, clusters=tuple(plan.clusters), started_at=self._clock.now(),
            ends_by=broadcast.body.ends_by, by=by,
        )  # fmt: skip
        with self._lock:
            self._live[broadcast.session_id] = (broadcast, view)
        try:
            if not self._closed.is_set():
                report = broadcast.run()
                with self._lock:
                    self.reports = [*self.reports[-99:], report]
        except Exception:
            log.exception("live session %s failed", broadcast.session_id)
        finally:
            with self._lock:
                self._live.pop(broadcast.session_id, None)

    def sessions(self) -> list[LiveView]:
        with self._lock:
            return [view for _b, view in self._live.values()]

    def cut(self, session_id: str) -> bool:
        """End a live session now; False if there is none of that id."""
        with self._lock:
            found = self._live.get(session_id)
        if found is None:
            return False
        found[0].stop()
        return True

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            live = [b for b, _v in self._live.values()]
            waiting = list(self._waiting.values())
        for cancel in waiting:
            cancel.set()
        for broadcast in live:
            broadcast.stop()
