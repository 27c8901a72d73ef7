"""The agent's worker without a broker: what it does while the link is down."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agent_support import Keys

from device_agent.agent import Agent
from device_agent.output import make_backend
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
    agent = Agent(ME, link, Keys().verifier, make_backend("null"), clock, tmp_path)
    # A refused command leaves an event in the outbox that cannot be sent.
    agent._handle_message(topics.cluster_topic(ME, "command"), b"not a command")
    assert agent.status().outbox_pending == 1
    wake_at = agent._housekeeping()
    # Nothing is due before the "still offline" warning: no busy loop on the unsent event.
    assert wake_at is not None
    assert wake_at > clock.now()
    assert link.published == []
