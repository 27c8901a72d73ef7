"""Status intake: every event and availability change the agents publish, stored once.

Only what the cluster's registered key signed is taken (controller/trust.py): a forged
event, state or heartbeat is refused, counted and logged (rate-limited). Events are
judged within the identity that signed them: a resend of the same event is a duplicate,
a different event under a number already taken is a conflict, kept apart
(store.event_conflicts), logged and acknowledged. A heartbeat or an `online` state the
key signed before the newest one taken from it (its envelope's (boot, count), not its
clock) is a replay, refused; an `offline` of the same or a later start always counts
(the Last Will is signed when the agent starts).

The MQTT network thread only queues what arrives, as it arrived (bytes are the smallest
form of a message), within bounds: at most MAX_QUEUED_BYTES_PER_CLUSTER from one cluster
and MAX_QUEUED_BYTES in all wait; beyond, a message is dropped, not acknowledged (an
agent sends its events again), so a flood costs bounded memory and one flooded cluster
cannot crowd the others out. One writer thread drains the queue in batches (of at most
`batch_max` events, heartbeats and states), parses them, stores the new events
(duplicates from resends are dropped by the store), acknowledges every event it holds,
new or duplicate, with a signed ack command on the cluster's command topic, and tells
listeners about what is new. Acks wait up to ACK_DELAY_S so that one ack covers what a
cluster sent in a burst (received, delivered, playing): a third of the signatures to
make and of the ones each agent checks. An agent resends only after 10 s, so the wait
costs nothing.

Heartbeats (QoS 0, health) are not acknowledged: the latest one of each cluster in a
batch replaces the stored one. Availability: an agent's retained "online" (with its
connect time) or the broker's Last Will "offline"; a cluster coming back is logged with
how long it was away.

Silence (controller/silence.py): a cluster whose heartbeat tells its keepalive, and from
which nothing has come for 1.5 × that keepalive, is marked offline by the writer thread
itself, with the reason, without waiting for the broker's Last Will; anything heard from
it again (a late heartbeat, an event) brings it back online from that moment.

Hostile input (anyone who can publish on the broker can write on these topics): every
field is range-checked before anything is stored (protocol/messages.py bounds numbers,
sizes and times; here, times more than MAX_AHEAD past the controller's clock are
refused too); messages from clusters the fleet does not name (`known`) are counted
(`stats.unknown`), not stored; one event the store refuses never fails its batch (the
batch is split until the bad one is alone: the others are stored and acknowledged, it
is not); and every refusal is logged with a rate limit (protocol/ratelimit.py), one line
without a traceback.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from controller.silence import SilenceWatch
from controller.store import Store
from controller.store.events import SignedEvent
from controller.trust import ClusterKeys, Opened, Refused
from protocol import topics
from protocol.clock import Clock
from protocol.messages import (
    MAX_ACK_SEQS,
    Event,
    Heartbeat,
    MessageError,
    State,
    parse,
    parse_events,
)
from protocol.mqtt import Link
from protocol.ratelimit import LogLimiter
from protocol.signing import Channel, Signer

log = logging.getLogger(__name__)

EventListener = Callable[[Event], None]
BatchListener = Callable[[list[Event]], object]
StateListener = Callable[[str, str], None]

ACK_TTL = timedelta(hours=6)
#: Longest wait of the writer thread for a message before it looks for silent clusters (s).
SWEEP_S = 0.5
# Events of one cluster within this are acknowledged together (monotonic seconds).
ACK_DELAY_S = 1.0
#: An agent's time this far past the controller's clock is a broken clock or a forgery.
MAX_AHEAD = timedelta(days=1)
#: Most store attempts for one batch of events split to find the ones the store refuses;
#: the rest wait for the agents to send them again.
STORE_ATTEMPTS = 64
#: Bytes of messages waiting for the writer, from one cluster and in all (see above).
#: An event is about 200 bytes: 2,500 of one cluster's, 20,000 in all.
MAX_QUEUED_BYTES_PER_CLUSTER = 512 * 1024
MAX_QUEUED_BYTES = 4 * 1024 * 1024
#: What a waiting message costs beyond its bytes (the objects that hold it).
MESSAGE_OVERHEAD = 200
#: Clusters whose latest heartbeat and online state are remembered (against replays).
MAX_REMEMBERED = 100_000



class DueWork(Protocol):
    """Work the writer thread does at its own deadlines, between batches (the resends of
    controller/confirmations.py): it waits no longer than `next_due()`."""

    def next_due(self) -> datetime | None: ...
    def run_due(self, now: datetime | None = None) -> None: ...


# (cluster, state, the agent's connect time for "online")
Availability = tuple[str, str, datetime | None]


@dataclass(frozen=True, slots=True)
class Reported:
    """An event, and the id of the key that signed it (None: unsigned, while upgrading)."""

    event: Event
    key: str | None

    @property
    def cluster(self) -> str:
        return self.event.cluster


Intook = Reported | Heartbeat | Availability
# A message as it arrived: (channel, cluster, topic, payload)
Arrived = tuple[str, str, str, bytes]


@dataclass
class IntakeStats:
    received: int = 0  # messages on event, state and heartbeat topics, whatever they were
    events: int = 0
    duplicates: int = 0
    invalid: int = 0
    refused: int = 0  # not signed by the cluster's registered key
    replays: int = 0  # a heartbeat or online state signed before one already taken
    conflicts: int = 0  # a different event under a (key, outbox, seq) already taken
    unknown: int = 0  # messages from clusters the fleet does not name (not stored)
    dropped: int = 0  # messages dropped with the writer too far behind (MAX_QUEUED_...)
    refused_by_store: int = 0  # events the store could not take (not acknowledged)
    states: int = 0
    heartbeats: int = 0
    silent: int = 0  # clusters marked offline for silence
    sweeps: int = 0  # looks for silent clusters
    deaf_sweeps: int = 0  # sweeps not made: the controller's link was down
    acks: int = 0
    batches: int = 0
    last_error: str | None = None
    by_kind: dict[str, int] = field(default_factory=dict)
    # New events by (kind, level) since the start (level "" where the event has none).
    by_kind_level: dict[tuple[str, str], int] = field(default_factory=dict)


class Intake:
    def __init__(
        self,
        link: Link,
        store: Store,
        signer: Signer,
        clock: Clock,
        *,
        keys: ClusterKeys,
        batch_max: int = 2000,
        known: Callable[[str], bool] | None = None,
    ) -> None:
        """keys: the registered key of each cluster, what is taken is checked against.
        known(cluster): whether the fleet names this cluster (None: take every one)."""
        self._keys = keys
        # The newest online state and heartbeat taken from each cluster, as (key, boot,
        # count) (writer thread).
        self._latest_online: dict[str, tuple[str, int, int]] = {}
        self._latest_beat: dict[str, tuple[str, int, int]] = {}
        self._known = known
        self._refusals = LogLimiter(log)
        self._link = link
        self._store = store
        self._signer = signer
        self._clock = clock
        self._batch_max = batch_max
        self._queue: queue.Queue[Arrived | None] = queue.Queue()
        self._queued_lock = threading.Lock()
        self._queued: dict[str, int] = {}  # bytes waiting, per cluster
        self._arrivals: deque[float] = deque()  # monotonic, of each message waiting, in order
        self._queued_total = 0
        self._event_listeners: list[EventListener] = []
        self._batch_listeners: list[BatchListener] = []
        self._state_listeners: list[StateListener] = []
        self._due_work: list[DueWork] = []
        self._thread: threading.Thread | None = None
        self.stats = IntakeStats()
        self._idle = threading.Event()
        self._silence = SilenceWatch()
        self._silenced: set[str] = set()  # marked offline for silence, not heard since
        # When the link to the broker last came up (set on the network thread): clusters
        # are silent only once they have had their time since (controller/silence.py).
        self._listening_since: datetime | None = None
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
        self._link.add_connection_listener(self._on_link)
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

    def lag_s(self) -> float:
        """How long the oldest message waiting for the writer has waited (0: none waits)."""
        with self._queued_lock:
            oldest = self._arrivals[0] if self._arrivals else None
        return 0.0 if oldest is None else max(time.monotonic() - oldest, 0.0)

    def drained(self) -> bool:
        """True when everything received so far has been stored (for tests and tools)."""
        return self._queue.empty() and self._idle.is_set()

    # --- network thread -------------------------------------------------------------------

    def _on_link(self, up: bool) -> None:
        if up:
            self._listening_since = self._clock.now()

    def _cluster_of(self, topic: str) -> str | None:
        parsed = topics.parse(topic)
        return parsed.name if parsed and parsed.scope == "cluster" else None

    def _refuse(self, kind: str, topic: str, reason: object, *, invalid: bool = True) -> None:
        """Count and log (rate-limited) a refused message; an invalid one (not merely
        misplaced) is also the latest error."""
        self.stats.invalid += 1
        if invalid:
            self.stats.last_error = f"{topic}: {reason}"
        self._refusals.warning(kind, "dropped %s on %s: %s", kind, topic, reason)

    def _from_known(self, cluster: str | None, topic: str) -> bool:
        """Whether the cluster of this topic is in the fleet; counts (and logs, rate
        limited) those that are not."""
        if cluster is None:
            self._refuse("a message on a topic that names no cluster", topic, "not a Loa topic")
            return False
        if self._known is None or self._known(cluster):
            return True
        self.stats.unknown += 1
        self._refusals.warning(
            "messages from clusters not in the fleet",
            "dropped a message on %s: cluster %s is not in the fleet (counted, not stored; "
            "add it to fleet.yaml if it is one of ours)", topic, cluster,
        )
        return False

    def _too_far_ahead(self, at: datetime | None, topic: str) -> bool:
        if at is None or at <= self._clock.now() + MAX_AHEAD:
            return False
        self._refuse(
            "a message dated ahead of the controller's clock", topic,
            f"dated {at.isoformat()}, more than {MAX_AHEAD} ahead of the controller's clock "
            "(check the cluster's clock and NTP)",
        )
        return True

    def _on_event(self, topic: str, payload: bytes) -> None:
        """One event, or several the agent committed (or sends again) together."""
        self._enqueue("event", topic, payload)

    def _on_state(self, topic: str, payload: bytes) -> None:
        if payload:  # empty: a cleared retained message
            self._enqueue("state", topic, payload)

    def _on_heartbeat(self, topic: str, payload: bytes) -> None:
        self._enqueue("heartbeat", topic, payload)

    def _enqueue(self, channel: str, topic: str, payload: bytes) -> None:
        """Hand a message to the writer, as it arrived, within the bounds on what waits."""
        self.stats.received += 1
        cluster = self._cluster_of(topic)
        if not self._from_known(cluster, topic):
            return
        assert cluster is not None
        cost = len(payload) + MESSAGE_OVERHEAD
        with self._queued_lock:
            mine = self._queued.get(cluster, 0)
            full = (mine + cost > MAX_QUEUED_BYTES_PER_CLUSTER
                    or self._queued_total + cost > MAX_QUEUED_BYTES)  # fmt: skip
            if not full:
                self._queued[cluster] = mine + cost
                self._queued_total += cost
        if full:
            self.stats.dropped += 1
            self._refusals.warning(
                "messages dropped with the writer behind",
                "dropped a message on %s: %d KB from cluster %s and %d KB in all wait to be "
                "stored (a flood?); an agent sends its events again", topic, mine // 1024,
                cluster, self._queued_total // 1024,
            )
            return
        self._idle.clear()
        with self._queued_lock:
            self._arrivals.append(time.monotonic())
            self._queue.put((channel, cluster, topic, payload))

    def _taken(self, arrived: Arrived) -> None:
        """The writer took this message off the queue."""
        _, cluster, _, payload = arrived
        cost = len(payload) + MESSAGE_OVERHEAD
        with self._queued_lock:
            if self._arrivals:
                self._arrivals.popleft()
            left = self._queued.get(cluster, 0) - cost
            if left > 0:
                self._queued[cluster] = left
            else:
                self._queued.pop(cluster, None)
            self._queued_total -= cost

    # --- writer thread: reading what arrived ------------------------------------------------

    def _read(self, arrived: Arrived) -> list[Intook]:
        """The events, heartbeat or state in a message, each checked; refusals counted."""
        channel, cluster, topic, payload = arrived
        if channel == "event":
            return list(self._read_events(cluster, topic, payload))
        if channel == "state":
            state = self._read_state(cluster, topic, payload)
            return [state] if state is not None else []
        beat = self._read_heartbeat(cluster, topic, payload)
        return [beat] if beat is not None else []

    def _open(self, cluster: str, channel: Channel, topic: str, payload: bytes) -> Opened | None:
        """The message, if the cluster's registered key signed it (refusals counted)."""
        try:
            return self._keys.open(cluster, channel, payload)
        except Refused:  # logged, rate-limited, by the check
            self.stats.refused += 1
        except MessageError as exc:
            self._refuse(f"an invalid {channel} message", topic, exc)
        return None

    def _replayed(
        self,
        taken: dict[str, tuple[str, int, int]],
        cluster: str,
        topic: str,
        message: Opened,
        offline: bool = False,
    ) -> bool:
        """True (counted, logged) if the cluster's key signed this before the newest of
        its kind taken (heartbeats, online states). An offline state counts if it is of
        the same start (boot) as the newest online or a later one: the Last Will is
        signed when the agent starts."""
        if message.key is None or message.n is None:  # unsigned, while upgrading
            return False
        boot, count = message.n
        latest = taken.get(cluster)
        if latest is not None and latest[0] == message.key:
            old = boot < latest[1] if offline else (boot, count) <= (latest[1], latest[2])
            if old:
                self.stats.replays += 1
                self._refusals.warning(
                    "old signed messages sent again",
                    "dropped a message on %s: signed as message %d of start %d of key %s, "
                    "and message %d of start %d was taken already: an old one sent again",
                    topic, count, boot, message.key, latest[2], latest[1],
                )
                return True
        if not offline:
            if len(taken) >= MAX_REMEMBERED and cluster not in taken:
                taken.clear()  # bounded memory; only replays of the forgotten pass
            taken[cluster] = (message.key, boot, count)
        return False

    def _read_events(self, cluster: str, topic: str, payload: bytes) -> list[Reported]:
        message = self._open(cluster, "event", topic, payload)
        if message is None:
            return []
        try:
            evs, problems = parse_events(message.body)
        except MessageError as exc:
            self._refuse("an invalid event message", topic, exc)
            return []
        for problem in problems:  # the valid ones of the message are still taken
            self._refuse("an invalid event", topic, problem)
        taken = []
        for ev in evs:
            if ev.cluster != cluster:
                self._refuse(
                    "an event on another cluster's topic", topic,
                    f"it claims cluster {ev.cluster}", invalid=False,
                )
            elif not self._too_far_ahead(ev.at, topic):
                taken.append(Reported(ev, message.key))
        return taken

    def _read_state(self, cluster: str, topic: str, payload: bytes) -> Availability | None:
        message = self._open(cluster, "state", topic, payload)
        if message is None:
            return None
        try:
            st = parse(State, message.body)
        except MessageError as exc:
            self._refuse("an invalid state message", topic, exc)
            return None
        if st.cluster != cluster:
            self._refuse("a state message on another cluster's topic", topic,
                         f"it claims cluster {st.cluster}", invalid=False)
            return None
        if self._too_far_ahead(st.at, topic) or self._replayed(
            self._latest_online, cluster, topic, message, st.state == "offline"
        ):
            return None
        return (cluster, st.state, st.at if st.state == "online" else None)

    def _read_heartbeat(self, cluster: str, topic: str, payload: bytes) -> Heartbeat | None:
        message = self._open(cluster, "heartbeat", topic, payload)
        if message is None:
            return None
        try:
            beat = parse(Heartbeat, message.body)
        except MessageError as exc:
            self._refuse("an invalid heartbeat", topic, exc)
            return None
        if beat.cluster != cluster:
            self._refuse("a heartbeat on another cluster's topic", topic,
                         f"it claims cluster {beat.cluster}", invalid=False)
            return None
        if self._too_far_ahead(beat.at, topic) or self._replayed(
            self._latest_beat, cluster, topic, message
        ):
            return None
        return beat

    # --- writer thread --------------------------------------------------------------------

    def _wait_s(self) -> float:
        """How long the writer may wait for a message before the next silence is due."""
        wait = SWEEP_S
        now = self._clock.now()
        silence = self._silence.next_due() if self._link.connected else None
        dues = [silence, *(work.next_due() for work in self._due_work)]
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
                self._refusals.flush()
                continue
            if first is None:
                self._send_acks(now=True)
                return
            batch = self._read_batch(first)
            try:
                self._process(batch)
            except Exception as exc:  # the store is down: keep going, agents will resend
                self.stats.last_error = str(exc)
                self._refusals.warning(
                    "failures to store status messages",
                    "could not store %d status messages (%s: %s); the agents will send them "
                    "again", len(batch), type(exc).__name__, exc,
                )
            self._sweep_safely()
            self._run_due_work()
            self._send_acks()
            if self._queue.empty():
                self._idle.set()

    def _read_batch(self, first: Arrived) -> list[Intook]:
        """What arrived, read and checked, until batch_max items or nothing waits."""
        self._taken(first)
        batch = self._read(first)
        while len(batch) < self._batch_max:
            try:
                arrived = self._queue.get_nowait()
            except queue.Empty:
                break
            if arrived is None:
                self._queue.put(None)
                break
            self._taken(arrived)
            batch += self._read(arrived)
        return batch

    def _sweep_safely(self) -> None:
        try:
            self._sweep()
        except Exception as exc:  # the store is down: the next sweep tries again
            self.stats.last_error = str(exc)
            self._refusals.warning(
                "failures to mark silent clusters offline",
                "could not mark silent clusters offline (%s: %s); trying again at the next "
                "sweep", type(exc).__name__, exc,
            )

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
        """Mark offline every cluster silent for 1.5 × its keepalive, from what was last
        heard from it. Not while the controller's own link is down: nothing can be heard
        then, and that is not the clusters' doing (`loa-controller fleet` says the
        controller is disconnected instead)."""
        now = self._clock.now()
        if not self._link.connected:
            self.stats.deaf_sweeps += 1
            return
        self.stats.sweeps += 1
        for silent in self._silence.due(now, self._listening_since):
            reason = silent.reason(now)
            before, _ = self._store.clusters.set_state(
                silent.cluster, "offline", now, since=silent.last_heard, reason=reason
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
        reported = [item for item in batch if isinstance(item, Reported)]
        latest: dict[str, Heartbeat] = {}
        for item in batch:
            try:
                self._heard(item, now)
            except Exception as exc:  # this one only: the rest of the batch goes on
                self._store_refused("a cluster heard again", exc)
            if isinstance(item, Heartbeat):
                latest[item.cluster] = item
            elif isinstance(item, tuple):
                self._take_state(item, now)
        if latest:
            self._take_heartbeats(list(latest.values()), now)
        if not reported:
            return
        fresh, stored, conflicts = self._store_events(reported, now)
        self.stats.batches += 1
        self.stats.events += len(fresh)
        self.stats.conflicts += len(conflicts)
        self.stats.duplicates += len(stored) - len(fresh) - len(conflicts)
        for ev, key in conflicts:
            self._refusals.warning(
                "events in conflict with a stored one",
                "cluster %s sent a different event under outbox %s seq %d (key %s) than the "
                "one stored: kept apart as a conflict (event_conflicts), not as proof of play",
                ev.cluster, ev.outbox, ev.seq, key or "unsigned",
            )
        evs = stored
        for ev in fresh:
            self.stats.by_kind[ev.kind] = self.stats.by_kind.get(ev.kind, 0) + 1
            pair = (ev.kind, ev.level or "")
            self.stats.by_kind_level[pair] = self.stats.by_kind_level.get(pair, 0) + 1
            if ev.kind == "rejected":
                self._refusals.warning(
                    "commands the clusters rejected",
                    "cluster %s rejected a command: %s", ev.cluster, ev.reason,
                )
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

    def _take_state(self, item: Availability, now: datetime) -> None:
        cluster, state, since = item
        try:
            before, before_at = self._store.clusters.set_state(cluster, state, now, since)
        except Exception as exc:  # this one only: the rest of the batch goes on
            self._store_refused(f"the {state} state of cluster {cluster}", exc)
            return
        self.stats.states += 1
        if state == "online" and before == "offline" and before_at is not None:
            away = (since or now) - before_at
            log.info("cluster %s is back online after %s offline", cluster, _span(away))
        elif state != before:
            log.info("cluster %s is %s", cluster, state)
        else:  # a retained copy heard again, or a repeat
            log.debug("cluster %s is still %s", cluster, state)
        for slistener in self._state_listeners:
            slistener(cluster, state)

    def _take_heartbeats(self, beats: list[Heartbeat], now: datetime) -> None:
        rows = [(b.cluster, b.at, b.model_dump_json(exclude_none=True)) for b in beats]
        try:
            self._store.clusters.set_heartbeats(rows, now)
        except Exception:
            for row in rows:  # one by one: a refused one spoils only itself
                try:
                    self._store.clusters.set_heartbeats([row], now)
                except Exception as exc:
                    self._store_refused(f"the heartbeat of cluster {row[0]}", exc)
                    continue
                self.stats.heartbeats += 1
            return
        self.stats.heartbeats += len(rows)

    def _store_events(
        self, evs: list[Reported], now: datetime
    ) -> tuple[list[Event], list[Event], list[SignedEvent]]:
        """Store a batch of events: (the new ones, every one stored or found stored, those
        in conflict with a stored one, kept apart). If the store refuses the batch, it is
        split until what it refuses is alone, within STORE_ATTEMPTS; what was not stored
        is not acknowledged (agents send it again)."""
        fresh: list[Event] = []
        stored: list[Event] = []
        conflicts: list[SignedEvent] = []
        attempts = 0
        left_out = 0
        last_error: Exception | None = None

        def attempt(part: list[Reported]) -> None:
            nonlocal attempts, left_out, last_error
            if attempts >= STORE_ATTEMPTS:
                left_out += len(part)
                return
            attempts += 1
            try:
                result = self._store.events.store([(r.event, r.key) for r in part], now)
            except Exception as exc:
                last_error = exc
                if len(part) == 1:
                    ev = part[0].event
                    self.stats.refused_by_store += 1
                    self._store_refused(
                        f"event {ev.outbox}/{ev.seq} ({ev.kind}) of cluster {ev.cluster}", exc
                    )
                    return
                middle = len(part) // 2
                attempt(part[:middle])
                attempt(part[middle:])
                return
            fresh.extend(result.fresh)
            conflicts.extend(result.conflicts)
            stored.extend(r.event for r in part)

        attempt(evs)
        if left_out:
            self._refusals.warning(
                "failures to store status messages",
                "could not store %d events (%s: %s); the agents will send them again",
                left_out, type(last_error).__name__, last_error,
            )
        return fresh, stored, conflicts

    def _store_refused(self, what: str, exc: Exception) -> None:
        self.stats.last_error = f"{what}: {exc}"
        self._refusals.warning(
            "status messages the store refused",
            "the store refused %s (%s: %s); dropped, not acknowledged", what,
            type(exc).__name__, str(exc)[:300],
        )

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
            ordered = sorted(seqs)
            for start in range(0, len(ordered), MAX_ACK_SEQS):
                payload = self._signer.ack_payload(
                    cluster, outbox, ordered[start : start + MAX_ACK_SEQS], now, ACK_TTL
                )
                self._link.publish(topics.cluster_topic(cluster, "command"), payload)
                self.stats.acks += 1


def _span(delta: timedelta) -> str:
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
