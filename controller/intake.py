"""Status intake: every event and availability change the agents publish, stored once.

The MQTT network thread only parses and queues. One writer thread drains the queue in
batches, stores the new events (duplicates from resends are dropped by the store),
acknowledges every event it holds, new or duplicate, with a signed ack command on the
cluster's command topic, and tells listeners about what is new. Acks wait up to
ACK_DELAY_S so that one ack covers what a cluster sent in a burst (received, delivered,
playing): a third of the signatures to make and of the ones each agent checks. An
agent resends only after 10 s, so the wait costs nothing.

Heartbeats (QoS 0, health) are not acknowledged: the latest one of each cluster in a
batch replaces the stored one. Availability: an agent's retained "online" (with its
connect time) or the broker's Last Will "offline"; a cluster coming back is logged with
how long it was away.

Silence (controller/silence.py): a cluster whose heartbeat tells its keepalive, and from
which nothing has come for 1.5 × that keepalive, is marked offline by the writer thread
itself, with the reason, without waiting for the broker's Last Will; anything heard from
it again (a late heartbeat, an event) brings it back online from that moment.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from controller.silence import SilenceWatch
from controller.store import Store
from protocol import topics
from protocol.clock import Clock
from protocol.messages import (
    AckBody,
    Address,
    Event,
    Heartbeat,
    MessageError,
    State,
    parse,
    parse_events,
)
from protocol.mqtt import Link
from protocol.signing import Signer

log = logging.getLogger(__name__)

EventListener = Callable[[Event], None]
BatchListener = Callable[[list[Event]], object]
StateListener = Callable[[str, str], None]

ACK_TTL = timedelta(hours=6)
#: Longest wait of the writer thread for a message before it looks for silent clusters (s).
SWEEP_S = 0.5
# Events of one cluster within this are acknowledged together (monotonic seconds).
ACK_DELAY_S = 1.0



class DueWork(Protocol):
    """Work the writer thread does at its own deadlines, between batches (the resends of
    controller/confirmations.py): it waits no longer than `next_due()`."""

    def next_due(self) -> datetime | None: ...
    def run_due(self, now: datetime | None = None) -> None: ...


# (cluster, state, the agent's connect time for "online")
Availability = tuple[str, str, datetime | None]
Intook = Event | Heartbeat | Availability


@dataclass
class IntakeStats:
    events: int = 0
    duplicates: int = 0
    invalid: int = 0
    states: int = 0
    heartbeats: int = 0
    silent: int = 0  # clusters marked offline for silence
    sweeps: int = 0  # looks for silent clusters
    acks: int = 0
    batches: int = 0
    last_error: str | None = None
    by_kind: dict[str, int] = field(default_factory=dict)


class Intake:
    def __init__(
        self,
        link: Link,
        store: Store,
        signer: Signer,
        clock: Clock,
        *,
        batch_max: int = 2000,
    ) -> None:
        self._link = link
        self._store = store
        self._signer = signer
        self._clock = clock
        self._batch_max = batch_max
        self._queue: queue.Queue[Intook | None] = queue.Queue()
        self._event_listeners: list[EventListener] = []
        self._batch_listeners: list[BatchListener] = []
        self._state_listeners: list[StateListener] = []
        self._due_work: list[DueWork] = []
        self._thread: threading.Thread | None = None
        self.stats = IntakeStats()
        self._idle = threading.Event()
        self._silence = SilenceWatch()
        self._silenced: set[str] = set()  # marked offline for silence, not heard since
        # Stored events not acknowledged yet, by (cluster, outbox); when the oldest came.
        self._unacked: dict[tuple[str, str], set[int]] = {}
        self._ack_due: float | None = None

    def add_listener(self, listener: EventListener) -> None:
        self._event_listeners.append(listener)

    def add_batch_listener(self, listener: BatchListener) -> None:
        """Called on the writer thread with each stored batch of new events."""
        self._batch_listeners.append(listener)

    def add_state_listener(self, listener: StateListener) -> None:
        self._state_listeners.append(listener)

    def add_due_work(self, work: DueWork) -> None:
        """Run work on the writer thread whenever its deadline comes (before start())."""
        self._due_work.append(work)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="intake", daemon=True)
        self._thread.start()
        self._link.subscribe(topics.all_clusters("event"), self._on_event)
        self._link.subscribe(topics.all_clusters("state"), self._on_state)
        self._link.subscribe(topics.all_clusters("heartbeat"), self._on_heartbeat, qos=0)

    def stop(self) -> None:
        self._link.unsubscribe(topics.all_clusters("event"))
        self._link.unsubscribe(topics.all_clusters("state"))
        self._link.unsubscribe(topics.all_clusters("heartbeat"))
        self._queue.put(None)
        if self._thread:
            self._thread.join(10)

    def drained(self) -> bool:
        """True when everything received so far has been stored (for tests and tools)."""
        return self._queue.empty() and self._idle.is_set()

    # --- network thread -------------------------------------------------------------------

    def _cluster_of(self, topic: str) -> str | None:
        parsed = topics.parse(topic)
        return parsed.name if parsed and parsed.scope == "cluster" else None

    def _on_event(self, topic: str, payload: bytes) -> None:
        """One event, or several the agent committed (or sends again) together."""
        cluster = self._cluster_of(topic)
        try:
            evs, problems = parse_events(payload)
        except MessageError as exc:
            self.stats.invalid += 1
            self.stats.last_error = f"{topic}: {exc}"
            log.warning("dropped an invalid event message on %s: %s", topic, exc)
            return
        for problem in problems:  # the valid ones of the message are still taken
            self.stats.invalid += 1
            self.stats.last_error = f"{topic}: {problem}"
            log.warning("dropped an invalid event on %s: %s", topic, problem)
        for ev in evs:
            if ev.cluster != cluster:
                self.stats.invalid += 1
                log.warning(
                    "dropped an event claiming cluster %s that arrived on %s's topic %s",
                    ev.cluster, cluster, topic,
                )
                continue
            self._idle.clear()
            self._queue.put(ev)

    def _on_state(self, topic: str, payload: bytes) -> None:
        cluster = self._cluster_of(topic)
        if not payload:  # a cleared retained message
            return
        try:
            st = parse(State, payload)
        except MessageError as exc:
            self.stats.invalid += 1
            log.warning("dropped an invalid state message on %s: %s", topic, exc)
            return
        if cluster is None or st.cluster != cluster:
            self.stats.invalid += 1
            log.warning("dropped a state message for %s on %s", st.cluster, topic)
            return
        self._idle.clear()
        self._queue.put((cluster, st.state, st.at if st.state == "online" else None))

    def _on_heartbeat(self, topic: str, payload: bytes) -> None:
        cluster = self._cluster_of(topic)
        try:
            beat = parse(Heartbeat, payload)
        except MessageError as exc:
            self.stats.invalid += 1
            log.warning("dropped an invalid heartbeat on %s: %s", topic, exc)
            return
        if beat.cluster != cluster:
            self.stats.invalid += 1
            log.warning("dropped a heartbeat for %s on %s", beat.cluster, topic)
            return
        self._idle.clear()
        self._queue.put(beat)

    # --- writer thread --------------------------------------------------------------------

    def _wait_s(self) -> float:
        """How long the writer may wait for a message before the next silence is due."""
        wait = SWEEP_S
        now = self._clock.now()
        dues = [self._silence.next_due(), *(work.next_due() for work in self._due_work)]
        for due in dues:
            if due is not None:
                wait = min(wait, max(0.01, (due - now).total_seconds()))
        if self._ack_due is not None:
            wait = min(wait, max(0.0, self._ack_due - time.monotonic()))
        return wait

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._wait_s())
            except queue.Empty:
                self._idle.set()
                self._sweep_safely()
                self._run_due_work()
                self._send_acks()
                continue
            if first is None:
                self._send_acks(now=True)
                return
            batch: list[Intook] = [first]
            while len(batch) < self._batch_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            try:
                self._process(batch)
            except Exception as exc:  # the store is down: keep going, agents will resend
                self.stats.last_error = str(exc)
                log.exception("could not store %d status messages; agents will resend", len(batch))
            self._sweep_safely()
            self._run_due_work()
            self._send_acks()
            if self._queue.empty():
                self._idle.set()

    def _sweep_safely(self) -> None:
        try:
            self._sweep()
        except Exception as exc:  # the store is down: the next sweep tries again
            self.stats.last_error = str(exc)
            log.exception("could not mark silent clusters offline")

    def _run_due_work(self) -> None:
        now = self._clock.now()
        for work in self._due_work:
            due = work.next_due()
            if due is None or due > now:
                continue
            try:
                work.run_due(now)
            except Exception as exc:  # the store is down: its deadline comes again
                self.stats.last_error = str(exc)
                log.exception("work due on the intake thread failed; trying again")

    def _sweep(self) -> None:
        """Mark offline every cluster silent for 1.5 × its keepalive."""
        now = self._clock.now()
        self.stats.sweeps += 1
        for silent in self._silence.due(now):
            reason = silent.reason(now)
            before, _ = self._store.clusters.set_state(
                silent.cluster, "offline", now, reason=reason
            )
            if before == "offline":  # the Last Will came first
                continue
            self._silenced.add(silent.cluster)
            self.stats.silent += 1
            log.warning("cluster %s is offline: %s", silent.cluster, reason)
            for slistener in self._state_listeners:
                slistener(silent.cluster, "offline")

    def _heard(self, item: Intook, now: datetime) -> None:
        """Something came from a cluster: keep watching it; back online if it was silent."""
        if isinstance(item, tuple):
            cluster, state, _ = item
            if state == "offline":
                self._silence.forget(cluster)
                self._silenced.discard(cluster)
                return
            self._silence.heard(cluster, now)
            self._silenced.discard(cluster)  # its "online" says since when
            return
        cluster = item.cluster
        self._silence.heard(
            cluster, now, item.keepalive_s if isinstance(item, Heartbeat) else None
        )
        if cluster not in self._silenced:
            return
        self._silenced.discard(cluster)
        _, before_at = self._store.clusters.set_state(cluster, "online", now)
        away = f" after {_span(now - before_at)} silent" if before_at is not None else ""
        log.info("cluster %s is back online%s (heard again)", cluster, away)
        for slistener in self._state_listeners:
            slistener(cluster, "online")

    def _process(self, batch: list[Intook]) -> None:
        now = self._clock.now()
        evs = [item for item in batch if isinstance(item, Event)]
        latest: dict[str, Heartbeat] = {}
        for item in batch:
            self._heard(item, now)
            if isinstance(item, Heartbeat):
                latest[item.cluster] = item
            elif isinstance(item, tuple):
                cluster, state, since = item
                before, before_at = self._store.clusters.set_state(cluster, state, now, since)
                self.stats.states += 1
                if state == "online" and before == "offline" and before_at is not None:
                    away = (since or now) - before_at
                    log.info(
                        "cluster %s is back online after %s offline", cluster, _span(away)
                    )
                else:
                    log.info("cluster %s is %s", cluster, state)
                for slistener in self._state_listeners:
                    slistener(cluster, state)
        if latest:
            self._store.clusters.set_heartbeats(
                [(b.cluster, b.at, b.model_dump_json(exclude_none=True)) for b in latest.values()],
                now,
            )
            self.stats.heartbeats += len(latest)
        if not evs:
            return
        fresh = self._store.events.add(evs, now)
        self.stats.batches += 1
        self.stats.events += len(fresh)
        self.stats.duplicates += len(evs) - len(fresh)
        for ev in fresh:
            self.stats.by_kind[ev.kind] = self.stats.by_kind.get(ev.kind, 0) + 1
            if ev.kind == "rejected":
                log.warning("cluster %s rejected a command: %s", ev.cluster, ev.reason)
        self._acknowledge(evs)
        for blistener in self._batch_listeners:
            try:
                blistener(fresh)
            except Exception:
                log.exception("event batch listener failed")
        for ev in fresh:
            for listener in self._event_listeners:
                try:
                    listener(ev)
                except Exception:
                    log.exception("event listener failed")

    def _acknowledge(self, evs: list[Event]) -> None:
        """Acknowledge these stored events within ACK_DELAY_S, with the ones after them."""
        for ev in evs:
            self._unacked.setdefault((ev.cluster, ev.outbox), set()).add(ev.seq)
        if self._ack_due is None:
            self._ack_due = time.monotonic() + ACK_DELAY_S

    def _send_acks(self, *, now: bool = False) -> None:
        if self._ack_due is None or (not now and time.monotonic() < self._ack_due):
            return
        by_outbox, self._unacked, self._ack_due = self._unacked, {}, None
        try:
            self._sign_acks(by_outbox)
        except Exception:  # the agents resend what stays unacknowledged
            log.exception("could not send acks to %d clusters", len(by_outbox))

    def _sign_acks(self, by_outbox: dict[tuple[str, str], set[int]]) -> None:
        now = self._clock.now()
        for (cluster, outbox), seqs in by_outbox.items():
            cmd = self._signer.command(
                AckBody(outbox=outbox, seqs=sorted(set(seqs))),
                Address(clusters=[cluster]),
                now,
                ACK_TTL,
            )
            self._link.publish(topics.cluster_topic(cluster, "command"), cmd.to_json())
            self.stats.acks += 1


def _span(delta: timedelta) -> str:
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
