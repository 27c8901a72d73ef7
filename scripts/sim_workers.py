"""Where the steps of a simulated fleet's agents run: a pool many agents of one process share.

Only the simulated fleets use this (scripts/bench_fleet.py, and the tests that run agents
as a fleet does); an agent on a pole runs its steps on a thread of its own
(`device_agent.workers.OwnThread`).

`WorkerPool`: a few threads take whichever agent has work, and one timer thread wakes an
agent when its time comes. Thread switches and kernel time stay flat as agents are
added. With no threads of its own, the pool's steps run wherever `run_ready` is called:
on the thread of the process's network loop (scripts/sim_network.py), after it has read
what arrived, so that a message goes from the socket to its agent with no thread switch
at all. Like `OwnThread`, it runs one agent's step on one thread at a time, in arrival
order, up to BATCH items a step.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

from device_agent.workers import BATCH, WAKE, Item, Mailbox, Step

log = logging.getLogger(__name__)


class _PooledBox:
    """One agent's inputs in a pool; `scheduled` while it is queued or being run."""

    def __init__(self, pool: WorkerPool, name: str, step: Step) -> None:
        self.pool = pool
        self.name = name
        self.step = step
        self.items: deque[Item] = deque()
        self.lock = threading.Lock()
        self.scheduled = False
        self.started = False
        self.generation = 0  # a timer set before the latest step is stale
        self.done = threading.Event()

    def put(self, item: Item) -> None:
        with self.lock:
            if self.done.is_set():
                return
            self.items.append(item)
            if self.scheduled or not self.started:
                return
            self.scheduled = True
        self.pool.ready(self)

    def start(self) -> None:
        with self.lock:
            self.started = True
            self.items.appendleft(WAKE)
            self.scheduled = True
        self.pool.ready(self)

    def join(self, timeout: float) -> bool:
        return self.done.wait(timeout)


class WorkerPool:
    """A few threads running the steps of many agents (see the module's docstring)."""

    def __init__(self, threads: int = 4, name: str = "agents") -> None:
        """threads=0: no threads of its own; see `run_ready` and `notify`."""
        self._name = name
        self._size = threads
        self._notify: Callable[[], None] | None = None
        self._ready: queue.SimpleQueue[_PooledBox | None] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, int, _PooledBox]] = []  # (due, n, generation, box)
        self._count = itertools.count()
        self._timer_cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def mailbox(self, name: str, step: Step) -> Mailbox:
        return _PooledBox(self, name, step)

    def start(self) -> None:
        for i in range(self._size):
            thread = threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        timer = threading.Thread(target=self._time, name=f"{self._name}-timer", daemon=True)
        timer.start()
        self._threads.append(timer)

    def stop(self, timeout: float = 5.0) -> None:
        """End the threads (stop the agents first: their steps are not called again)."""
        self._stopping = True
        for _ in range(self._size):
            self._ready.put(None)
        with self._timer_cond:
            self._timer_cond.notify()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    def notify(self, callback: Callable[[], None]) -> None:
        """With no threads: call this (from any thread) when an agent has work, so that
        the thread that runs `run_ready` wakes up."""
        self._notify = callback

    def ready(self, box: _PooledBox) -> None:
        self._ready.put(box)
        if self._notify is not None:
            self._notify()

    def run_ready(self) -> None:
        """With no threads: run the steps of every agent that has work, on this thread."""
        while True:
            try:
                box = self._ready.get_nowait()
            except queue.Empty:
                return
            if box is not None:
                self._run(box)

    def _work(self) -> None:
        while True:
            box = self._ready.get()
            if box is None:
                return
            self._run(box)

    def _run(self, box: _PooledBox) -> None:
        with box.lock:
            batch = [box.items.popleft() for _ in range(min(BATCH, len(box.items)))]
        try:
            sleep = box.step(batch or [WAKE])
        except Exception:  # the step catches its own; this keeps the pool alive
            log.exception("agent %s: unexpected error in its step", box.name)
            sleep = 60.0
        with box.lock:
            box.generation += 1
            generation = box.generation
            if sleep is None:
                box.done.set()
                box.items.clear()
                return
            again = bool(box.items)
            if not again:
                box.scheduled = False
        if again:
            self.ready(box)
        else:
            self._set_timer(box, generation, sleep)

    def _set_timer(self, box: _PooledBox, generation: int, sleep: float) -> None:
        due = time.monotonic() + sleep
        with self._timer_cond:
            first = not self._timers or due < self._timers[0][0]
            heapq.heappush(self._timers, (due, next(self._count), generation, box))
            if first:
                self._timer_cond.notify()

    def _time(self) -> None:
        with self._timer_cond:
            while not self._stopping:
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _due, _n, generation, box = heapq.heappop(self._timers)
                    if box.generation == generation:  # no step since: its time has come
                        box.put(WAKE)
                wait = self._timers[0][0] - now if self._timers else None
                self._timer_cond.wait(wait)
