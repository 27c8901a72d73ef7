"""The controller's link to the broker came back: what the broker still holds, and who
acts on it. This is the controller's one "on reconnect" hook.

A broker is not a store. Killed -9, it loses what it held in memory since its last
autosave (mosquitto's default `autosave_interval` is 30 minutes): the QoS 1 messages it
queued for persistent sessions, the sessions themselves, retained messages. A broker
restored from an old backup, a cluster node that dies, a session that expires lose them
the same way. So after every connection of its link the controller looks at what the
broker kept, and hands a `Reconnection` to every action registered with `on_reconnect`:

- `session_present`: CONNACK's flag. False: the broker no longer held the controller's
  persistent session (its very first connection, or the broker lost it).
- `retained_lost`: the controller keeps one retained message of its own, the canary, on
  `loa/v1/controller/<id>/canary`. Having renewed its subscriptions on connecting (which
  makes the broker send matching retained messages again), it publishes a probe on the
  same topic (QoS 1, not retained). The broker sends the retained canary before it
  handles the probe, so a probe that comes back alone means the broker has lost its
  retained messages (the clusters' memberships, the agents' online states). None: the
  probe did not come back within PROBE_TIMEOUT_S (the link dropped again, and the next
  connection is looked at afresh). A missing canary is published again.

Actions run on the link's network thread (or the probe timer's): they must be quick and
hand heavy work to a thread of their own, as the confirmation tracker does
(controller/confirmations.py: everything not yet confirmed becomes due at once). An
action that raises is logged; the others still run.

The canary topic is writable by whoever may publish there (the broker's ACL gives it to
the controller alone): a forged canary can only hide a loss of retained messages from
this report, never make a speaker play. Commands are sent again after every
reconnection whatever the report says.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol import topics
from protocol.clock import Clock
from protocol.mqtt import Link

log = logging.getLogger(__name__)

#: How long after a connection its probe may take to come back (seconds).
PROBE_TIMEOUT_S = 10.0
#: A message on the canary topic longer than this is not ours (bytes).
MAX_CANARY_BYTES = 512


@dataclass(frozen=True)
class Reconnection:
    """One connection of the controller's link, and what the broker still held."""

    number: int  # 1: the first connection since the controller started
    session_present: bool
    retained_lost: bool | None  # None: not known (the probe did not come back in time)

    @property
    def first(self) -> bool:
        return self.number == 1

    @property
    def broker_lost_state(self) -> bool:
        """The broker forgot what it held for the controller: its session or its
        retained messages. Not known at the first connection: a controller's very first
        start on a broker finds neither."""
        return not self.first and (bool(self.retained_lost) or not self.session_present)

    def describe(self) -> str:
        session = "session present" if self.session_present else "no session"
        retained = {
            True: "retained messages missing", False: "retained messages kept", None:
            "retained messages not checked (no answer to the probe)",
        }[self.retained_lost]
        return f"{session}, {retained}"


ReconnectAction = Callable[[Reconnection], None]


@dataclass
class _Probe:
    number: int
    nonce: str
    session_present: bool
    canary_seen: bool = False
    done: bool = False
    timer: threading.Timer | None = field(default=None, repr=False)


def canary_id(client_id: str) -> str:
    """The controller's MQTT client id as a single topic level."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", client_id)[:64]
    if not cleaned or not cleaned[0].isalnum():
        cleaned = ("c" + cleaned)[:64]
    return cleaned


class BrokerWatch:
    """Looks at every connection of the controller's link; calls the reconnect actions."""

    def __init__(
        self,
        link: Link,
        client_id: str,
        clock: Clock,
        *,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        outage: Callable[[], str] = lambda: "",
    ) -> None:
        """outage(): how long the link was down before this connection, as the log line
        says it (controller.broker_state.BrokerState.outage_text)."""
        self._outage = outage
        self._link = link
        self._clock = clock
        self._id = canary_id(client_id)
        self.topic = topics.controller_topic(self._id, "canary")
        self._probe_timeout_s = probe_timeout_s
        self._lock = threading.Lock()
        self._actions: list[ReconnectAction] = []
        self._connections = 0
        self._probe: _Probe | None = None
        self._stopped = False
        # The latest connections looked at, latest last (for tests and diagnostics).
        self.seen: deque[Reconnection] = deque(maxlen=16)

    def on_reconnect(self, action: ReconnectAction) -> None:
        """Call action after every connection of the link (the first one included)."""
        with self._lock:
            self._actions.append(action)

    def start(self) -> None:
        """Subscribe and listen; before the link starts, so the first connection counts."""
        self._link.subscribe(self.topic, self._on_message)
        self._link.add_connection_listener(self._on_connection)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            probe, self._probe = self._probe, None
        if probe is not None and probe.timer is not None:
            probe.timer.cancel()

    # --- the link's network thread ---------------------------------------------------------

    def _on_connection(self, up: bool) -> None:
        if not up:
            return
        with self._lock:
            if self._stopped:
                return
            self._connections += 1
            previous = self._probe
            probe = _Probe(self._connections, uuid.uuid4().hex, self._link.session_present)
            probe.timer = threading.Timer(self._probe_timeout_s, self._finish, (probe, None))
            probe.timer.daemon = True
            self._probe = probe
        if previous is not None and previous.timer is not None:
            previous.timer.cancel()
        probe.timer.start()
        self._link.publish(self.topic, _message("probe", self._id, nonce=probe.nonce))

    def _on_message(self, _topic: str, payload: bytes) -> None:
        if len(payload) > MAX_CANARY_BYTES:
            return
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        with self._lock:
            probe = self._probe
            if probe is None or probe.done:
                return
            if message.get("kind") == "canary":
                probe.canary_seen = True
                return
            if message.get("kind") != "probe" or message.get("nonce") != probe.nonce:
                return
        self._finish(probe, not probe.canary_seen)

    def _finish(self, probe: _Probe, retained_lost: bool | None) -> None:
        with self._lock:
            if probe.done or self._stopped:
                return
            probe.done = True
            actions = list(self._actions)
        if probe.timer is not None:
            probe.timer.cancel()
        if not probe.canary_seen:
            self._link.publish(
                self.topic,
                _message("canary", self._id, at=self._clock.now().isoformat()),
                retain=True,
            )
        found = Reconnection(probe.number, probe.session_present, retained_lost)
        self.seen.append(found)
        if found.broker_lost_state:
            log.warning(
                "connected to the broker again%s, and it has lost what it held (%s): it was "
                "restarted without saving its state, or restored from an old backup. "
                "Commands not confirmed yet by their clusters and every retained message "
                "of the controller are sent again",
                self._outage(), found.describe(),
            )
        elif found.first:
            log.info(
                "connected to the broker (%s%s)", found.describe(),
                "; the first start on this broker, or it has lost its state"
                if found.retained_lost else "",
            )
        else:
            log.info(
                "connected to the broker again%s (%s); commands not confirmed yet by their "
                "clusters are sent again", self._outage(), found.describe(),
            )
        for action in actions:
            try:
                action(found)
            except Exception:
                log.exception("a reconnect action failed; the others still run")


def _message(kind: str, controller: str, **fields: str) -> bytes:
    return json.dumps({"v": 1, "kind": kind, "controller": controller, **fields}).encode()
