"""The cluster's amplifier, powered through its relay: switched on before a play, with a
warm-up before the first sample, switched off after an idle time; relay faults reported
and retried with backoff, never raised.

How the agent uses it:

- on a play's thread, before the first sample: `go = amplifier.power_on_for_play(stop)`.
  The relay is (re)commanded on — a board that lost power meanwhile is switched on
  again — and the call waits out what is left of the warm-up since the relay went on
  (nothing when it has been on long enough). False means: the relay failed and the
  config says not to play without it; the play should be reported failed with
  `amplifier.fault` as the reason. Setting `stop` ends the warm-up at once.
- optionally, on the worker, warm_up_s before a scheduled play's start time:
  `amplifier.power_on_ahead()`, so that the warm-up is over when the play starts and
  its first sample goes out on time (clusters of one commune start together).
- after that play, whatever happened (in a `finally`): `amplifier.play_finished()`.
  Every `power_on_for_play` is matched by one `play_finished`; while any play is on,
  the amplifier stays on.
- on the agent's worker, with the player and the outbox: `next_at = amplifier.tick()`,
  and again at next_at. tick switches the amplifier off once it has been idle for
  idle_off, and retries a failed relay when its backoff has passed (1 s, doubling, up
  to retry_max; the port is opened again on every try). `wake()` is called when tick is
  due sooner than it last said (a play finished, a fault was met on a play's thread).
- in the heartbeat: `amplifier.state()`: "on", "off", "unknown" (not switched since the
  agent started), "none" (no relay configured) or "fault: <what is wrong, what to try>".
- at shutdown: `amplifier.close()` switches the amplifier off and releases the port.

`on_fault(message)` is called when a fault begins or its message changes (not on every
failed retry), `on_recovered()` when the relay works again. Callbacks run on the thread
that met the fault or recovery, outside the amplifier's lock.

Time: idle-off and retries follow the injected Clock, so tests move a ManualClock and
call tick. The warm-up is waited in real time on the play's thread; it ends when the
Clock says warm_up has passed since the relay went on, and never lasts longer than
warm_up of monotonic time, whatever the wall clock does. Relay I/O happens under the
amplifier's lock, on the calling thread: a board that does not answer holds that
thread up to the driver's reply timeout.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from device_agent.relays import Relay, RelayConfig, RelayError, open_relay
from protocol.clock import Clock

module_log = logging.getLogger(__name__)

#: First wait before retrying a failed relay (seconds); it doubles up to retry_max_s.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
#: How often a warm-up in progress looks at the clock (seconds).
WARM_UP_POLL_S = 0.05

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


class Amplifier:
    """The amplifier of one cluster and the relay that powers it. Thread-safe."""

    def __init__(
        self,
        relay_factory: Callable[[], Relay] | None,
        clock: Clock,
        warm_up_s: float,
        idle_off_s: float,
        play_without_relay: bool,
        log: Log | None = None,
        *,
        on_fault: Callable[[str], None] | None = None,
        on_recovered: Callable[[], None] | None = None,
        wake: Callable[[], None] | None = None,
        retry_first_s: float = RETRY_FIRST_S,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        """relay_factory opens the relay (RelayError when it cannot); None: no relay is
        wired, the amplifier is always on and plays never wait."""
        if warm_up_s < 0 or idle_off_s < 0:
            raise ValueError("warm_up_s and idle_off_s cannot be negative")
        if not 0 < retry_first_s <= retry_max_s:
            raise ValueError("retries need 0 < retry_first_s <= retry_max_s")
        self._factory = relay_factory
        self._clock = clock
        self.warm_up_s = warm_up_s
        self.idle_off_s = idle_off_s
        self.play_without_relay = play_without_relay
        self._log = log or module_log
        self._on_fault = on_fault
        self._on_recovered = on_recovered
        self._wake = wake
        self._retry_first_s = retry_first_s
        self._retry_max_s = retry_max_s

        self._lock = threading.Lock()
        self._relay: Relay | None = None
        self._on: bool | None = None  # what the relay was last switched to; None: unknown
        self._on_since: datetime | None = None
        self._plays = 0
        self._idle_since = clock.now()  # an amplifier left on by a crash goes off when idle
        self._fault: str | None = None
        self._retry_at: datetime | None = None
        self._retry_delay_s = retry_first_s
        self._closed = False
        self._notes: list[Callable[[], None]] = []  # callbacks due once the lock is released

    # --- the agent's calls ------------------------------------------------------------------

    def power_on_for_play(self, stop: threading.Event | None = None) -> bool:
        """Switch on and warm up before a play's first sample; whether the play may go on."""
        if self._factory is None:
            return True
        with self._lock:
            if self._closed:
                return True
            self._plays += 1
            now = self._clock.now()
            powered = self._attempt(True, now)
            on_since = self._on_since
            fault = self._fault
            notes = self._take_notes()
        self._notify(notes)
        if not powered:
            if self._wake is not None:
                self._wake()  # its retry is due on the worker
            if self.play_without_relay:
                self._log.warning("playing without the amplifier relay: %s", fault)
                return True
            self._log.warning("not playing: the amplifier relay failed: %s", fault)
            return False
        if on_since is not None:
            self._warm_up(on_since, stop or threading.Event())
        return True

    def power_on_ahead(self) -> None:
        """Switch on now for a play due in warm_up_s, without waiting: its
        power_on_for_play then finds the amplifier warm and the first sample goes out on
        time. If no play comes, the amplifier goes off after idle_off from now."""
        if self._factory is None:
            return
        with self._lock:
            if self._closed:
                return
            now = self._clock.now()
            self._attempt(True, now)  # a failure is recorded and retried like any other
            if self._plays == 0:
                self._idle_since = now
            notes = self._take_notes()
        self._notify(notes)
        if self._wake is not None:
            self._wake()  # the idle time, or the retry, is due on the worker

    def play_finished(self) -> None:
        """A play that called power_on_for_play has ended; the idle time starts if it was
        the last one."""
        if self._factory is None:
            return
        with self._lock:
            if self._closed:
                return
            if self._plays == 0:
                self._log.warning("play_finished() without power_on_for_play(); ignored")
                return
            self._plays -= 1
            if self._plays == 0:
                self._idle_since = self._clock.now()
        if self._wake is not None:
            self._wake()

    def tick(self, now: datetime | None = None) -> datetime | None:
        """Switch off when idle long enough, retry a failed relay when due; when to tick
        next (None: nothing planned)."""
        if self._factory is None:
            return None
        with self._lock:
            if self._closed:
                return None
            now = now or self._clock.now()
            # The wall clock went back (NTP after boot): the idle time restarts from now.
            self._idle_since = min(self._idle_since, now)
            wanted = self._wanted(now)
            if wanted is not None and (
                (self._fault is not None and self._retry_at is not None and now >= self._retry_at)
                or (self._fault is None and self._on is not wanted)
            ):
                self._attempt(wanted, now)
            next_at = self._next_at(now)
            notes = self._take_notes()
        self._notify(notes)
        return next_at

    def state(self) -> str:
        """For the heartbeat: on, off, unknown, none, or fault: <message>."""
        if self._factory is None:
            return "none"
        with self._lock:
            if self._fault is not None:
                return f"fault: {self._fault}"
            return {True: "on", False: "off", None: "unknown"}[self._on]

    @property
    def fault(self) -> str | None:
        """What is wrong with the relay, or None."""
        with self._lock:
            return self._fault

    def close(self, switch_off: bool = True) -> None:
        """Switch the amplifier off (one try, no retry) and release the port. Never raises."""
        if self._factory is None:
            return
        with self._lock:
            self._closed = True
            if switch_off and self._on is not False:
                self._attempt(False, self._clock.now())
            self._notes.clear()  # shutting down: nothing more to report
            self._drop_relay()

    # --- internals (lock held) --------------------------------------------------------------

    def _wanted(self, now: datetime) -> bool | None:
        """What the relay should be now; None: leave it as it is."""
        if self._plays > 0:
            return True
        if self._fault is not None:
            return False  # idle with a faulty relay: its retry leaves the amplifier off
        if now >= self._idle_since + timedelta(seconds=self.idle_off_s):
            return False
        return None

    def _next_at(self, now: datetime) -> datetime | None:
        if self._fault is not None:
            return self._retry_at
        if self._plays == 0 and self._on is not False:
            return max(now, self._idle_since + timedelta(seconds=self.idle_off_s))
        return None

    def _attempt(self, on: bool, now: datetime) -> bool:
        """Open the relay if needed and switch it; on failure, record the fault."""
        assert self._factory is not None
        try:
            if self._relay is None:
                self._relay = self._factory()
            self._relay.switch(on)
        except RelayError as exc:
            self._failed(str(exc), now)
            return False
        except Exception as exc:  # a driver bug must not stop the agent: treated as a fault
            self._log.exception("the relay driver failed unexpectedly")
            self._failed(f"unexpected error in the relay driver: {exc!r}", now)
            return False
        if on and self._on is not True:
            self._on_since = now
            self._log.info("amplifier on (warm-up %g s)", self.warm_up_s)
        elif not on and self._on is not False:
            self._on_since = None
            self._log.info("amplifier off")
        self._on = on
        if self._fault is not None:
            self._log.info("the amplifier relay works again")
            if self._on_recovered is not None:
                self._notes.append(self._on_recovered)
        self._fault = None
        self._retry_at = None
        self._retry_delay_s = self._retry_first_s
        return True

    def _failed(self, message: str, now: datetime) -> None:
        self._drop_relay()
        self._on = None
        self._on_since = None
        delay = self._retry_delay_s
        self._retry_at = now + timedelta(seconds=delay)
        self._retry_delay_s = min(delay * 2, self._retry_max_s)
        if message != self._fault:
            self._log.warning("amplifier relay fault: %s. Trying again in %g s", message, delay)
            if self._on_fault is not None:
                on_fault = self._on_fault
                self._notes.append(lambda: on_fault(message))
        else:
            self._log.info("amplifier relay still failing; trying again in %g s", delay)
        self._fault = message

    def _drop_relay(self) -> None:
        """Close the port so that the next try opens it again (the device may be new)."""
        if self._relay is not None:
            with contextlib.suppress(Exception):  # closing a port that is gone: nothing to do
                self._relay.close()
            self._relay = None

    def _take_notes(self) -> list[Callable[[], None]]:
        notes, self._notes = self._notes, []
        return notes

    # --- outside the lock -------------------------------------------------------------------

    def _notify(self, notes: list[Callable[[], None]]) -> None:
        for note in notes:
            try:
                note()
            except Exception:
                self._log.exception("a relay fault callback failed")

    def _warm_up(self, on_since: datetime, stop: threading.Event) -> None:
        """Wait until warm_up_s has passed since on_since (by the clock), or stop is set;
        never longer than what was left at the start, in monotonic time."""

        def left_by_clock() -> float:
            return self.warm_up_s - (self._clock.now() - on_since).total_seconds()

        limit = time.monotonic() + left_by_clock()
        while True:
            left = min(left_by_clock(), limit - time.monotonic())
            if left <= 0 or stop.wait(min(left, WARM_UP_POLL_S)):
                return


def amplifier_from_config(
    config: RelayConfig,
    clock: Clock,
    log: Log | None = None,
    *,
    on_fault: Callable[[str], None] | None = None,
    on_recovered: Callable[[], None] | None = None,
    wake: Callable[[], None] | None = None,
) -> Amplifier:
    """The amplifier the agent config's `relay:` section describes (driver none: no relay)."""

    def relay_factory() -> Relay:
        return open_relay(config)

    return Amplifier(
        None if config.driver == "none" else relay_factory,
        clock,
        config.warm_up.total_seconds(),
        config.idle_off.total_seconds(),
        config.play_without_relay,
        log,
        on_fault=on_fault,
        on_recovered=on_recovered,
        wake=wake,
        retry_max_s=config.retry_max.total_seconds(),
    )
