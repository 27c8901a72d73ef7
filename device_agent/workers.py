"""Where an agent's work runs: on a thread of its own.

An agent's work is a *step*: handle a batch of what arrived (messages, connection
changes, wake-ups), then do what is due, and say how many seconds may pass before it
must look again with nothing new (None: it has stopped). A runner calls one agent's
step on one thread at a time, in arrival order, and takes everything that has arrived
since the last step as the next batch (up to BATCH), so the agent's housekeeping runs
once per batch rather than once per message.

`OwnThread` is the agent on the pole: one thread sleeping on its queue. A process that
runs hundreds of agents (a simulated fleet) gives them `Mailboxes` of its own instead:
scripts/sim_workers.py, which is not part of what a pole installs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

Item = tuple[Any, ...]
Step = Callable[[list[Item]], "float | None"]

WAKE: Item = ("wake",)
# What one step takes at most: bounds how long what is due waits behind a burst.
BATCH = 32


class Mailbox(Protocol):
    """Where an agent's inputs go; runs its step."""

    def put(self, item: Item) -> None: ...
    def start(self) -> None: ...
    def join(self, timeout: float) -> bool: ...


class Mailboxes(Protocol):
    """Where many agents of one process run their steps together (a simulated fleet)."""

    def mailbox(self, name: str, step: Step) -> Mailbox: ...


class OwnThread:
    """One agent, one thread."""

    def __init__(self, name: str, step: Step) -> None:
        self._name = name
        self._step = step
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def put(self, item: Item) -> None:
        self._queue.put(item)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _run(self) -> None:
        sleep: float | None = 0.0
        while sleep is not None:
            try:
                batch = [self._queue.get(timeout=sleep)]
            except queue.Empty:
                batch = [WAKE]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            sleep = self._step(batch)
