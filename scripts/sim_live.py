"""The simulator's live runner: the live sessions of every agent of one process stepped
on one thread (device_agent.live.LiveRunner), instead of a thread per session as on a
pole. The sessions hand their slots over at the same instants (the session's timeline),
so one wake-up serves every agent of the process. Never installed on a pole."""

from __future__ import annotations

import heapq
import itertools
import threading
import time

from device_agent.live import LiveSession


class SharedLiveRunner:
    def __init__(self, name: str = "live") -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, int, LiveSession]] = []
        self._generation: dict[int, int] = {}
        self._order = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(self, session: LiveSession) -> None:
        self.poke(session)

    def poke(self, session: LiveSession) -> None:
        """Step this session now (it was given the output, a frame came...)."""
        self._at(session, time.monotonic())

    def _at(self, session: LiveSession, when: float) -> None:
        with self._cond:
            key = id(session)
            generation = self._generation.get(key, 0) + 1
            self._generation[key] = generation
            heapq.heappush(self._heap, (when, next(self._order), generation, session))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            due: list[LiveSession] = []
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                if self._stopped:
                    return
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _when, _n, generation, session = heapq.heappop(self._heap)
                    if self._generation.get(id(session)) == generation:
                        due.append(session)
            for session in due:
                wait = session.step()
                if wait is None:
                    with self._cond:
                        self._generation.pop(id(session), None)
                else:
                    self._at(session, time.monotonic() + wait)
