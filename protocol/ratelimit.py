"""Refusals logged with a rate limit: a flood of bad input must not become a flood of log.

Anything read from the network can be sent a thousand times a second by whoever can
reach the broker. Each kind of refusal (a fixed string chosen by the code, never a
value from the network: the kinds are bounded) is logged at most `per_minute` times a
minute, one line each and without a traceback; the rest are counted, and their number
is logged once, in one line, when that minute is over (at the next refusal of the kind,
or at the next `flush`, which a thread that wakes up regularly calls).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]

WINDOW_S = 60.0


@dataclass
class _Window:
    started: float
    logged: int = 0
    held_back: int = 0


class LogLimiter:
    """At most `per_minute` lines a minute per kind of refusal; thread-safe."""

    def __init__(
        self,
        log: Logger,
        per_minute: int = 10,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._per_minute = per_minute
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self.held_back_total = 0  # lines not logged one by one, since the start

    def warning(self, kind: str, message: str, *args: Any) -> bool:
        """Log message % args as a warning unless this kind has had its lines this
        minute; True if it was logged."""
        return self._emit(logging.WARNING, kind, message, args)

    def info(self, kind: str, message: str, *args: Any) -> bool:
        return self._emit(logging.INFO, kind, message, args)

    def flush(self) -> None:
        """Log the counts of the windows that are over (call it now and then)."""
        now = self._monotonic()
        with self._lock:
            over = [
                (kind, window) for kind, window in self._windows.items()
                if now - window.started >= WINDOW_S
            ]
            for kind, _ in over:
                del self._windows[kind]
        for kind, window in over:
            self._summarise(kind, window)

    def _emit(self, level: int, kind: str, message: str, args: tuple[Any, ...]) -> bool:
        now = self._monotonic()
        ended: _Window | None = None
        with self._lock:
            window = self._windows.get(kind)
            if window is not None and now - window.started >= WINDOW_S:
                ended, window = window, None
            if window is None:
                window = self._windows[kind] = _Window(now)
            allowed = window.logged < self._per_minute
            if allowed:
                window.logged += 1
            else:
                window.held_back += 1
                self.held_back_total += 1
        if ended is not None:
            self._summarise(kind, ended)
        if allowed:
            self._log.log(level, message, *args)
        return allowed

    def _summarise(self, kind: str, window: _Window) -> None:
        if window.held_back:
            self._log.warning(
                "%d more of these in the last minute were not logged one by one: %s",
                window.held_back, kind,
            )
