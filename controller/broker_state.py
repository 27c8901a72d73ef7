"""Whether the controller can reach its broker now, and since when not: said at once.

While the controller's link is down nothing it sends reaches a speaker, and nothing the
clusters say reaches it. So `BrokerState`, a connection listener of the link:

- answers `unreachable()` with the reason an urgent announcement is refused ("the
  broker has been unreachable since 10:42"), for the API, the CLI and the web app's
  banner (controller/urgent.py raises NotSentError with it);
- keeps the outage's start, its length once it is over, and the count of reconnections
  (the reconnect log line and /metrics say them);
- writes the moments the link went down and came up to the store (`marks`:
  `broker-disconnected`, `broker-connected`; `controller-stopped` at a clean stop), so
  that `loa-controller fleet`, another process, tells "the controller is disconnected"
  from "the cluster is silent". The writes go through a thread of their own: the
  listener runs on the link's network thread, which must not wait on a database.

The intake does not mark clusters silent while the link is down (it hears nothing
because of the controller, not of them), and measures a cluster's time offline from
what it last heard (controller/intake.py).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from datetime import datetime, tzinfo

from protocol.clock import Clock
from protocol.mqtt import Link

log = logging.getLogger(__name__)

CONNECTED = "broker-connected"
DISCONNECTED = "broker-disconnected"
STOPPED = "controller-stopped"

#: Writes a named instant to the store (controller.store.status.MarkRepository.set).
MarkWriter = Callable[[str, datetime], None]


def span(seconds: float) -> str:
    """A duration for people: 45 s, 1 min 22 s, 2 h 5 min."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def clock_text(at: datetime, tz: tzinfo, now: datetime) -> str:
    """HH:MM in the controller's time zone; with the date when it is not today."""
    local, today = at.astimezone(tz), now.astimezone(tz)
    if local.date() == today.date():
        return local.strftime("%H:%M")
    return local.strftime("%Y-%m-%d %H:%M")


class BrokerState:
    """The controller's link to its broker, as operators are told it (module docstring)."""

    def __init__(
        self, link: Link, clock: Clock, tz: tzinfo, *, marks: MarkWriter | None = None
    ) -> None:
        self._link = link
        self._clock = clock
        self._tz = tz
        self._lock = threading.Lock()
        self._started = clock.now()
        self._down_since: datetime | None = self._started  # not connected yet
        self._up_since: datetime | None = None
        self.connections = 0  # connections made since the controller started
        self.last_outage_s: float | None = None  # the length of the last outage, once over
        self._marks = marks
        self._writes: queue.Queue[tuple[str, datetime] | None] = queue.Queue()
        self._writer: threading.Thread | None = None

    def start(self) -> None:
        """Listen to the link (before it starts) and record that it is not connected yet."""
        self._link.add_connection_listener(self._on_change)
        if self._marks is not None:
            self._writer = threading.Thread(target=self._write, name="broker-marks", daemon=True)
            self._writer.start()
            self._writes.put((DISCONNECTED, self._started))

    def stop(self) -> None:
        """Record a clean stop, and end the writer once it has written everything."""
        if self._writer is not None:
            self._writes.put((STOPPED, self._clock.now()))
            self._writes.put(None)
            self._writer.join(10)

    # --- what is said -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def reconnects(self) -> int:
        """Connections after the first one."""
        return max(self.connections - 1, 0)

    def down_since(self) -> datetime | None:
        """Since when the link is down; None while it is up."""
        with self._lock:
            return None if self._link.connected else self._down_since or self._started

    def unreachable(self) -> str | None:
        """Why nothing can be sent now, for the user; None while connected."""
        since = self.down_since()
        if since is None:
            return None
        when = clock_text(since, self._tz, self._clock.now())
        if self.connections == 0:
            return f"the broker has not been reached since the controller started at {when}"
        return f"the broker has been unreachable since {when}"

    def outage_text(self) -> str:
        """The last outage, for the reconnect log line: ' after an outage of 1 min 22 s
        (from 10:42:05)', or '' at the first connection."""
        with self._lock:
            if self.last_outage_s is None or self._up_since is None:
                return ""
            began = self._up_since.timestamp() - self.last_outage_s
        start = datetime.fromtimestamp(began, self._tz).strftime("%H:%M:%S")
        return f" after an outage of {span(self.last_outage_s)} (from {start})"

    # --- the link's network thread -------------------------------------------------------

    def _on_change(self, up: bool) -> None:
        now = self._clock.now()
        with self._lock:
            if up:
                if self.connections > 0 and self._down_since is not None:
                    self.last_outage_s = max((now - self._down_since).total_seconds(), 0.0)
                self.connections += 1
                self._down_since, self._up_since = None, now
            else:
                self._down_since = now
        if self._writer is not None:
            self._writes.put((CONNECTED if up else DISCONNECTED, now))

    def _write(self) -> None:
        assert self._marks is not None
        while True:
            item = self._writes.get()
            if item is None:
                return
            name, at = item
            try:
                self._marks(name, at)
            except Exception as exc:  # the store is down: the next change is written
                log.warning("could not record the broker connection's %s in the store: %s",
                            name, exc)


def describe_marks(
    connected: datetime | None,
    disconnected: datetime | None,
    stopped: datetime | None,
    tz: tzinfo,
    now: datetime,
) -> str | None:
    """What `loa-controller fleet` says first when the controller is not listening, from
    the marks it wrote; None when its link was up at its last word."""
    others = [t for t in (connected, disconnected) if t is not None]
    if stopped is not None and all(stopped >= t for t in others):
        return (
            f"the controller is not running (stopped at {clock_text(stopped, tz, now)}): what "
            "follows is what it heard until then"
        )
    if disconnected is not None and (connected is None or disconnected > connected):
        return (
            f"the controller is disconnected from its broker since "
            f"{clock_text(disconnected, tz, now)}: it hears nothing from the clusters, so what "
            "follows is what it heard until then (a cluster is not silent for that)"
        )
    return None
