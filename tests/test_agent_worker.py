"""The agent's worker without a broker: what it does while the link is down, and the two
places it can run (a thread of its own, and the pool a simulated fleet's agents share:
scripts/sim_workers.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from agent_support import Keys
from conftest import wait_until
from sim_workers import WorkerPool

from device_agent.agent import Agent
from device_agent.identity import AgentIdentity
from device_agent.output import make_backend
from device_agent.workers import Item, Mailbox, OwnThread, Step
from protocol import topics
from protocol.clock import ManualClock
from protocol.mqtt import ConnectionListener, Handler

T0 = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)
ME = "c-worker-01"


class DownLink:
    """A link whose broker is never reachable; records what the agent tried to send."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.handlers: dict[str, Handler] = {}

    @property
    def connected(self) -> bool:
        return False

    @property
    def session_present(self) -> bool:
        return False

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        self.handlers[topic_filter] = handler

    def unsubscribe(self, topic_filter: str) -> None:
        self.handlers.pop(topic_filter, None)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.published.append(topic)

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def wait_connected(self, timeout: float) -> bool:
        return False


def test_offline_the_outbox_waits_and_the_worker_does_not_spin(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    link = DownLink()
    agent = Agent(
        ME, link, Keys().verifier, make_backend("null"), clock, tmp_path,
        identity=AgentIdentity.load_or_create(tmp_path),
    )
    # A refused command leaves an event in the outbox that cannot be sent.
    agent._handle_message(topics.cluster_topic(ME, "command"), b"not a command")
    assert agent.status().outbox_pending == 1
    wake_at = agent._housekeeping()
    # Nothing is due before the "still offline" warning: no busy loop on the unsent event.
    assert wake_at is not None
    assert wake_at > clock.now()
    assert link.published == []


# --- where the worker runs: a thread of its own, or a pool -----------------------------------


class Recorder:
    """A step that records its batches and checks it never runs twice at once."""

    def __init__(self, sleep: float = 60.0) -> None:
        self.lock = threading.Lock()
        self.running = False
        self.overlapped = False
        self.items: list[Item] = []
        self.batches = 0
        self.sleep = sleep

    def __call__(self, batch: list[Item]) -> float | None:
        with self.lock:
            self.overlapped |= self.running
            self.running = True
        try:
            with self.lock:
                self.batches += 1
                for item in batch:
                    if item == ("stop",):
                        return None
                    self.items.append(item)
            return self.sleep
        finally:
            with self.lock:
                self.running = False

    def got(self, kind: str) -> list[Item]:
        with self.lock:
            return [item for item in self.items if item[0] == kind]


@pytest.fixture(params=["own-thread", "pool"])
def mailboxes(request: pytest.FixtureRequest) -> Iterator[Callable[[Step], Mailbox]]:
    """Mailboxes of either kind, started; the pool stopped at the end."""
    pool = WorkerPool(3) if request.param == "pool" else None
    if pool is not None:
        pool.start()

    def make(step: Step) -> Mailbox:
        box = pool.mailbox("test", step) if pool else OwnThread("test", step)
        box.start()
        return box

    yield make
    if pool is not None:
        pool.stop()


def test_each_agent_gets_its_items_in_order_one_step_at_a_time(
    mailboxes: Callable[[Step], Mailbox],
) -> None:
    steps = [Recorder() for _ in range(20)]
    boxes = [mailboxes(step) for step in steps]

    def produce(box: Mailbox) -> None:
        for i in range(200):
            box.put(("message", i))

    threads = [threading.Thread(target=produce, args=(box,)) for box in boxes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for step in steps:
        wait_until(lambda s=step: len(s.got("message")) == 200, 10, "every item handled")  # type: ignore[misc]
        assert step.got("message") == [("message", i) for i in range(200)]
        assert not step.overlapped
        # Items that arrive together are handled together: fewer steps than items.
        assert step.batches <= 200


def test_a_step_is_run_again_when_its_time_comes(mailboxes: Callable[[Step], Mailbox]) -> None:
    step = Recorder(sleep=0.05)
    mailboxes(step)
    wait_until(lambda: len(step.got("wake")) >= 5, 10, "the step to be woken by its timer")


def test_a_stopped_mailbox_runs_nothing_more(mailboxes: Callable[[Step], Mailbox]) -> None:
    step = Recorder()
    box = mailboxes(step)
    box.put(("message", 1))
    box.put(("stop",))
    assert box.join(5), "the step did not stop"
    box.put(("message", 2))
    wait_until(lambda: step.got("message") == [("message", 1)], 5, "the first item")
    assert step.got("message") == [("message", 1)]
