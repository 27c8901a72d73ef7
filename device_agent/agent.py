"""The agent of one speaker cluster: link, guard, cache, player and outbox wired together.

Threads: the link's network thread only queues what arrives (it never blocks on disk or
crypto); the agent's worker takes each message through the guard to the cache, the
player or the outbox, then lets the player and the outbox do what is due (once per
batch of messages), and wakes up on its own when something is due; the output of a play
runs on one short-lived thread while it plays. The worker is a thread of the agent's
own (device_agent/workers.py), or, where one process runs hundreds of simulated agents,
mailboxes on a pool they share (given by the simulator).

Commands before chunks: audio chunks wait in their own inbox (device_agent/inbox.py),
not in the worker's mailbox with the commands. A step handles every command, connection
change and call it took from the mailbox first, then chunks for at most CHUNK_SLICE_S
(chunks of content a play waits for before any other); if chunks are left, it asks for
another step behind whatever reached the mailbox meanwhile. So a flood of forged chunks
delays a command by one slice at most, never by the flood. The mailbox itself holds at
most MAX_QUEUED_COMMAND_BYTES of commands (per topic, and in all): each costs a
signature check, and a flood of forged ones must cost bounded memory.

Topics (see protocol/topics.py): the agent reads its cluster's key, command, content,
live and membership topics and its groups' command, content and live topics (live
frames go to device_agent/live.py, after the commands of their step); it writes events
(QoS 1, from the outbox), its retained online/offline state, chunk requests, and a
heartbeat (QoS 0) every `heartbeat_s`, on connecting and when the relay fails or recovers.

A new membership command means the controller (re)started: events it has not
acknowledged are sent again at once, not at their next resend time. A key rotation
(device_agent/trust.py) changes the controller keys it trusts, on disk.

A play this cluster already holds that arrives again (the broker delivering a command
twice, or the controller sending a play it has no confirmation of: a new command with
the same play id) is never scheduled twice; it is answered with the play's `received`,
so the controller learns that the cluster has it: the same event again (same outbox
sequence number: the controller keeps it once) while that one still waits for the
controller's acknowledgement. Once it has been acknowledged, the controller holds it; if
the controller asks all the same (a new command: it lost its record), a new `received`
says when the play first came and what became of it. A copy of the same command after
the acknowledgement needs no answer.

Identity (device_agent/identity.py): everything the agent publishes is signed with the
cluster's own key. Until the controller has registered that key, an agent given an
enrolment token sends a join request on its `enrol` topic at every connection and
again after `join_retry_s` (doubling, up to 10 minutes) until the controller answers
on its command topic: registered (its state, a heartbeat and every unacknowledged event
go out again at once, now to be stored), pending (a manager has to approve it; asked
again every 10 minutes) or refused (logged with the reason; no more requests).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from device_agent.amplifier import Amplifier, amplifier_from_config
from device_agent.cache import Cache, ChunkOutcome
from device_agent.guard import (
    Duplicate,
    Expired,
    Guard,
    Ignored,
    Membership,
    MembershipState,
    Rejected,
    RejectionLimiter,
    SeenStore,
)
from device_agent.health import ClockOffset, cpu_temperature, disk_free, folder_size, system_uptime
from device_agent.identity import AgentIdentity, JoinSchedule
from device_agent.inbox import ChunkInbox
from device_agent.live import LiveChannel, LiveRunner, LiveSession, PlayerControl
from device_agent.localdb import LocalDatabase
from device_agent.outbox import Outbox
from device_agent.output import OutputBackend
from device_agent.player import Player, PlayRecord, PlayView, clock_time
from device_agent.relays import RelayConfig
from device_agent.trust import ControllerKeys
from device_agent.workers import WAKE, Item, Mailboxes, OwnThread
from protocol import chunks, topics
from protocol.clock import Clock
from protocol.messages import (
    MAX_EVENTS_PER_MESSAGE,
    AckBody,
    ChunkRequest,
    Command,
    ContentRef,
    EnrolmentBody,
    Event,
    EventKind,
    Heartbeat,
    JoinRequest,
    KeyRotationBody,
    Level,
    LiveBody,
    MembershipBody,
    NowPlaying,
    PlayBody,
    State,
    StopBody,
    Transfer,
    events_body,
)
from protocol.mqtt import Link
from protocol.ratelimit import LogLimiter
from protocol.signing import Verifier

# Longest the worker sleeps without a reason: bounds the effect of a wall clock jump
# (NTP setting the time after boot) on anything the agent is waiting for.
MAX_SLEEP_S = 60.0
# Say so when the broker cannot be reached for this long (then every OFFLINE_REMINDER).
OFFLINE_WARNING = timedelta(seconds=30)
OFFLINE_REMINDER = timedelta(minutes=10)
# Complete audio kept for repeats, least recently used dropped beyond this (config
# cache_max_mb); checked when a download completes and this often.
MAX_CONTENT_BYTES = 1024 * 1024 * 1024
PRUNE_EVERY = timedelta(hours=1)
# A play received again is answered at most this often (copies in a burst: one answer).
ANSWER_AGAIN_EVERY = timedelta(seconds=1)
# Longest a step spends on chunks before it looks at the mailbox (commands) again.
CHUNK_SLICE_S = 0.02
# Commands waiting for the worker (each checked for its signature, which a small box does
# a few thousand times a second at most): at most this many bytes from one topic and in
# all; beyond, a command is dropped (and counted), so that a flood of forged commands
# costs bounded memory, and one flooded topic cannot crowd the others out. The
# controller's own commands are a few a minute.
MAX_QUEUED_COMMAND_BYTES_PER_TOPIC = 512 * 1024
MAX_QUEUED_COMMAND_BYTES = 2 * 1024 * 1024
# What a waiting command costs beyond its bytes (the objects that hold it).
COMMAND_OVERHEAD = 300


class ClusterLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the cluster id: one process may run many agents."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return f"[{self.extra['cluster'] if self.extra else '?'}] {msg}", kwargs


@dataclass(frozen=True)
class AgentStatus:
    cluster_id: str
    connected: bool
    groups: tuple[str, ...]
    current: PlayView | None
    queue: list[PlayView]
    outbox_id: str
    outbox_pending: int


_WAKE = WAKE
_STOP = ("stop",)


_HEARTBEAT = ("heartbeat",)
_CHUNKS = ("chunks",)  # chunks wait in the chunk inbox: take a slice of them


class Agent:
    """One cluster's agent. `start()` connects and runs; `stop()` reports and disconnects."""

    def __init__(
        self,
        cluster_id: str,
        link: Link,
        verifier: Verifier,
        output: OutputBackend,
        clock: Clock,
        data_dir: Path,
        *,
        groups: Sequence[str] = (),
        outbox_resend_s: float = 10.0,
        request_interval_s: float = 10.0,
        rejections_per_minute: int = 10,
        durable: bool = True,
        version: str | None = None,
        cache: Cache | None = None,
        relay: RelayConfig | None = None,
        heartbeat_s: float | None = 60.0,
        default_volume: int = 100,
        max_content_bytes: int = MAX_CONTENT_BYTES,
        pool: Mailboxes | None = None,
        keepalive_s: int | None = None,
        identity: AgentIdentity,
        enrolment_token: str | None = None,
        join_retry_s: float = 30.0,
        live_runner: LiveRunner | None = None,
    ) -> None:
        """durable=False skips every fsync: state then survives a crash of the process, not
        a power cut. cache: a content cache shared by the agents of a simulated fleet in
        one process (content is addressed by its hash, so sharing is safe); by default
        each agent has its own under data_dir, which it prunes. relay: the relay board
        that powers the amplifier (None or driver none: nothing to switch); its faults and
        recoveries are logged and sent in a heartbeat at once. heartbeat_s: seconds
        between heartbeats (None: none). max_content_bytes: the quota of complete audio in
        the agent's own cache, least recently used evicted beyond it, never the audio of
        plays still scheduled or playing. pool: run the worker on this pool shared with
        other agents of the process instead of a thread of its own (a simulated fleet).
        keepalive_s: the link's MQTT keepalive, sent in each heartbeat: the controller
        declares the cluster offline after 1.5 x that without hearing from it. identity:
        the cluster's key, which signs everything published (its Last Will too: build the
        link with `identity.will(cluster_id, started_at)`). enrolment_token: the one-time
        token to ask with for that key to be registered, until it is; join_retry_s:
        seconds before a join request left unanswered is sent again (doubling).
        live_runner: what steps the live sessions (a simulated fleet's one thread for
        all its agents); None: a thread per session."""
        self.cluster_id = topics.check_id(cluster_id, "cluster id")
        self._link = link
        self._clock = clock
        self._version = version
        self._log = ClusterLog(logging.getLogger(__name__), {"cluster": cluster_id})
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        name = f"agent-{cluster_id}"
        self._queue = pool.mailbox(name, self._step) if pool else OwnThread(name, self._step)
        # Events committed in this step, published together once it is committed.
        self._outgoing: list[Event] = []
        self._outgoing_lock = threading.Lock()
        # When a chunk a play waits for last arrived (set by the network thread).
        self._content_arrived_at: datetime | None = None
        # Bytes of commands waiting for the worker, per topic and in all; those dropped.
        self._commands_lock = threading.Lock()
        self._queued_commands: dict[str, int] = {}
        self._queued_command_bytes = 0
        self._dropped_commands = 0
        self._refusals = LogLimiter(self._log)
        self._offline_since = clock.now()
        self._offline_warned_at: datetime | None = None
        self._online = threading.Event()  # the worker has handled the current connection
        self._started_mono = time.monotonic()
        self._amplifier: Amplifier | None = None
        if relay is not None and relay.driver != "none":
            self._amplifier = amplifier_from_config(
                relay, clock,
                ClusterLog(logging.getLogger("device_agent.amplifier"), {"cluster": cluster_id}),
                on_fault=self.relay_changed,
                on_recovered=self.relay_changed,
                wake=self._wake,
            )
        self._heartbeat_s = heartbeat_s
        self._keepalive_s = keepalive_s
        self._identity = identity
        self._join = JoinSchedule(  # with a token, until the key is registered or refused
            enrolment_token, timedelta(seconds=join_retry_s), registered=identity.registered()
        )
        self._next_heartbeat: datetime | None = None
        self.clock_offset = ClockOffset()

        self._db = LocalDatabase(data_dir / "agent.sqlite", durable=durable)
        self._outbox = Outbox(self._db, cluster_id, clock, resend_after_s=outbox_resend_s)
        self._membership = MembershipState(self._db.document("membership"), groups)
        self._trust, self._verifier = self._trusted(verifier)
        self._guard = Guard(
            self._verifier,
            cluster_id, self._membership.current, clock,
            SeenStore(self._db.table("seen-commands")),
            rotation_applied=self._trust.already_applied if self._trust is not None else None,
        )
        self._limiter = RejectionLimiter(clock, rejections_per_minute)
        self._owns_cache = cache is None
        self._cache_dir = data_dir / "content"
        self._max_content_bytes = max_content_bytes
        self._arriving: set[str] = set()  # content of the play command being admitted
        # play id -> last answer to a copy of it (or its report as expired)
        self._answered: dict[str, datetime] = {}
        self._cache = cache or Cache(
            self._cache_dir,
            durable=durable,
            log=ClusterLog(logging.getLogger("device_agent.cache"), {"cluster": cluster_id}),
            uses=self._db.document("cache-uses"),
            clock=clock,
        )
        self._next_prune = clock.now() + PRUNE_EVERY
        self._wake_at: datetime | None = None  # when the housekeeping asked to run next
        self._player = Player(
            output, self._cache, clock, self._db.table("plays"),
            report=self._report_play,
            request_chunks=self._request_chunks,
            on_worker=self._run_on_worker,
            request_interval_s=request_interval_s,
            log=ClusterLog(logging.getLogger("device_agent.player"), {"cluster": cluster_id}),
            amplifier=self._amplifier,
            default_volume=default_volume,
            content_activity=lambda: self._content_arrived_at,
        )
        self._live = self._live_channel(output, default_volume, live_runner)
        self._inbox = ChunkInbox(self._cache.downloading)
        self._cache.add_listener(self._on_content)
        for ref in self._player.wanted_content():
            self._cache.expect(ref)

    def _trusted(self, verifier: Verifier) -> tuple[ControllerKeys | None, Verifier]:
        """The controller keys trusted, and the verifier over them: the key of the verifier
        given is the one pinned in the config; rotations add to it (kept in the database).
        A verifier over other keys is used as it is."""
        pinned = verifier.pinned
        if pinned is None:
            return None, verifier
        trust = ControllerKeys(pinned, self._db.document("controller-keys"), self._clock)
        return trust, Verifier(trust)

    def _live_channel(
        self, output: OutputBackend, default_volume: int, runner: LiveRunner | None
    ) -> LiveChannel:
        return LiveChannel(
            output, self._clock, self._verifier.keys,
            PlayerControl(
                claim=self._player.live_claim,
                done=lambda s: self._run_on_worker(lambda: self._live_ended(s)),
                released=self._player.live_released,
            ),
            self._report_live,
            amplifier=self._amplifier,
            default_volume=default_volume,
            log=ClusterLog(logging.getLogger("device_agent.live"), {"cluster": self.cluster_id}),
            runner=runner,
        )

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        me = self.cluster_id
        for channel in topics.TO_AGENT:
            self._link.subscribe(topics.cluster_topic(me, channel), self._on_message)
        for group in self._membership.current().groups:
            self._subscribe_group(group)
        self._link.add_connection_listener(self._on_connection)
        self._queue.start()
        self._link.start()
        self._log.info(
            "agent started: groups %s, data in %s, %d events waiting for the controller",
            ", ".join(self._membership.current().groups) or "(none yet)", self.data_dir,
            self._outbox.pending(),
        )
        self._say_identity()

    def _say_identity(self) -> None:
        key = self._identity.key_id
        found = self._identity.enrolment()
        if found is not None and found.status == "registered":
            self._log.info("this cluster's key %s is registered with the controller", key)
        elif self._join.asking:
            self._log.info(
                "this cluster's key %s is not registered yet: asking the controller with "
                "the enrolment token", key,
            )
        else:
            self._log.warning(
                "this cluster's key %s is not registered with the controller, and there is "
                "no enrolment token: the controller stores nothing this cluster reports "
                "(unless it still accepts unsigned clusters while upgrading). Ask for a "
                "token (loa-controller enrol token %s), name its file in "
                "enrolment_token_file, and restart the agent", key, self.cluster_id,
            )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop playing (reported as interrupted), switch the amplifier off, say offline,
        disconnect, close the outbox."""
        self._live.close(timeout)
        self._player.close(timeout)
        self._queue.put(_STOP)
        self._queue.join(timeout)
        if self._amplifier is not None:
            self._amplifier.close()
        if self._link.connected:
            self._publish_state("offline")
        self._link.stop()
        self._cache.remove_listener(self._on_content)
        if self._owns_cache:
            self._cache.flush()
            self._cache.close()
        self._db.close()
        self._log.info("agent stopped")

    def status(self) -> AgentStatus:
        player = self._player.status()
        return AgentStatus(
            cluster_id=self.cluster_id,
            connected=self._link.connected,
            groups=self._membership.current().groups,
            current=player.current,
            queue=player.queue,
            outbox_id=self._outbox.outbox_id,
            outbox_pending=self._outbox.pending(),
        )

    @property
    def identity(self) -> AgentIdentity:
        return self._identity

    def registered(self) -> bool:
        """True once the controller has said this cluster's key is registered."""
        return self._identity.registered()

    def ready(self) -> bool:
        """Connected, subscribed, and said online (its backlog of events sent again)."""
        return self._online.is_set() and self._link.connected

    @property
    def membership(self) -> Membership:
        return self._membership.current()

    def heartbeat(self) -> Heartbeat:
        """This agent's health now (what it publishes every heartbeat_s)."""
        player = self._player.status()
        current = player.current
        now = self._clock.now()
        live = self._live.on_air()
        if current is None and live is not None:
            playing: NowPlaying | None = NowPlaying(
                play_id=live.session_id, bulletin=live.body.bulletin, level=live.body.level,
                live=live.body.source,
            )
        else:
            playing = NowPlaying(
                play_id=current.play_id,
                bulletin=current.bulletin,
                level=current.level,
                started_at=current.started_at,
            ) if current is not None else None
        return Heartbeat(
            cluster=self.cluster_id,
            at=now,
            version=self._version,
            uptime_s=round(time.monotonic() - self._started_mono, 1),
            system_uptime_s=system_uptime(),
            disk_free_bytes=disk_free(self.data_dir),
            cache_bytes=folder_size(self._cache_dir) if self._owns_cache else None,
            cpu_temp_c=cpu_temperature(),
            relay=self._amplifier.state()[:1000] if self._amplifier is not None else None,
            volume=current.volume if current is not None else self._player.default_volume,
            clock_offset_s=self.clock_offset.estimate(now),
            playing=playing,
            queued=len(player.queue),
            outbox_pending=self._outbox.pending(),
            transfers=self._transfers(),
            keepalive_s=self._keepalive_s,
        )

    def _transfers(self) -> list[Transfer] | None:
        """Downloads under way in this agent's own cache (None: none, or a shared cache)."""
        if not self._owns_cache:
            return None
        under_way = [
            Transfer(sha256=sha, held=held, chunks=count)
            for sha, held, count in self._cache.transfers()[:64]
        ]
        return under_way or None

    def relay_changed(self, _fault: str | None = None) -> None:
        """The amplifier's relay failed or recovered: send a heartbeat now (any thread)."""
        self._queue.put(_HEARTBEAT)

    # --- network thread: queue only ---------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/content"):
            arrival = self._inbox.put(topic, payload)
            if arrival.wanted:
                self._content_arrived_at = self._clock.now()
            if arrival.wake:
                self._queue.put(_CHUNKS)
            return
        cost = len(payload) + COMMAND_OVERHEAD
        with self._commands_lock:
            on_topic = self._queued_commands.get(topic, 0)
            if (on_topic + cost > MAX_QUEUED_COMMAND_BYTES_PER_TOPIC
                    or self._queued_command_bytes + cost > MAX_QUEUED_COMMAND_BYTES):
                self._dropped_commands += 1
                return
            self._queued_commands[topic] = on_topic + cost
            self._queued_command_bytes += cost
        # When it arrived, for the clock offset (the worker may get to it later).
        self._queue.put(("message", topic, payload, self._clock.now(), time.monotonic()))

    def _command_taken(self, topic: str, payload: bytes) -> None:
        """The worker took a command off the mailbox (see MAX_QUEUED_COMMAND_BYTES)."""
        cost = len(payload) + COMMAND_OVERHEAD
        with self._commands_lock:
            left = self._queued_commands.get(topic, 0) - cost
            if left > 0:
                self._queued_commands[topic] = left
            else:
                self._queued_commands.pop(topic, None)
            self._queued_command_bytes -= cost

    def _on_connection(self, up: bool) -> None:
        self._queue.put(("connection", up))

    def _wake(self) -> None:
        self._queue.put(_WAKE)

    def _run_on_worker(self, action: Callable[[], None]) -> None:
        self._queue.put(("call", action))

    def _on_content(self, sha256: str) -> None:
        """Content completed (in this agent's worker, or another's if the cache is shared)."""
        if self._player.content_ready(sha256) and not self._owns_cache:
            self._wake()
        if self._owns_cache:  # over quota now? evict what no play still needs
            keep = self._player.needed_content() | self._arriving | {sha256}
            self._cache.evict(keep, self._max_content_bytes)

    # --- worker thread ----------------------------------------------------------------------

    def _step(self, batch: list[Item]) -> float | None:
        """Handle what arrived, then what is due; seconds until the next look (None: stop).

        Commands first: chunks are taken after everything else in the batch, for one
        slice (`_take_chunks`). A slice of audio chunks that completed no content changes
        nothing that is due: the housekeeping is skipped until the time it asked for, so
        a chunk costs the same however many plays the agent holds."""
        with self._db.batch():  # one commit for the step; publishes after it
            quiet = True
            chunks_waiting = False
            for item in batch:
                if item is _STOP:
                    return None
                if item is _CHUNKS:
                    chunks_waiting = True
                    continue
                try:
                    if item[0] == "message":
                        self._command_taken(item[1], item[2])
                        quiet = self._handle_message(item[1], item[2], *item[3:]) and quiet
                    elif item[0] == "connection":
                        quiet = False
                        self._handle_connection(bool(item[1]))
                    elif item[0] == "call":
                        quiet = False
                        item[1]()
                    else:
                        quiet = False
                        if item is _HEARTBEAT:
                            self._send_heartbeat()
                except Exception:
                    quiet = False
                    self._log.exception("unexpected error in the agent worker; carrying on")
            if chunks_waiting:
                quiet = self._take_chunks() and quiet
            now = self._clock.now()
            if not quiet or self._wake_at is None or self._wake_at <= now:
                try:
                    self._wake_at = self._housekeeping()
                except Exception:
                    self._log.exception("unexpected error in the agent worker; carrying on")
                    self._wake_at = None
        if self._wake_at is None:
            return MAX_SLEEP_S
        until = (self._wake_at - self._clock.now()).total_seconds()
        return min(max(until, 0.0), MAX_SLEEP_S)

    def _housekeeping(self) -> datetime | None:
        """Let the player and the outbox do what is due; the earliest next time to look."""
        times = [self._player.tick()]
        if self._amplifier is not None:
            times.append(self._amplifier.tick())
        times.append(self._heartbeat_due())
        times.append(self._join_due())
        if self._link.connected:  # offline, the outbox waits for the next connection
            due = self._outbox.due()
            if due:
                self._log.debug(
                    "sending again %d events the controller has not acknowledged", len(due)
                )
                self._send(due)
            times.append(self._outbox.next_due_at())
        held_back = self._limiter.take_summary()
        if held_back:
            self._log.warning(
                "%d more commands were refused in the last minute and not reported one by one "
                "(a flood of forged or stale commands?)",
                held_back,
            )
            self._add_event(
                "rejected",
                reason=f"{held_back} more commands rejected in the last minute "
                "(not reported one by one)",
            )
        times.append(self._limiter.summary_due_at())
        times.append(self._warn_if_offline())
        if self._owns_cache and self._clock.now() >= self._next_prune:
            self._cache.prune(self._player.needed_content(), self._max_content_bytes)
            self._next_prune = self._clock.now() + PRUNE_EVERY
        times.append(self._next_prune if self._owns_cache else None)
        if self._owns_cache:
            self._cache.flush(force=False)
            self._cache.expire_early()
        with self._commands_lock:
            dropped_commands, self._dropped_commands = self._dropped_commands, 0
        if dropped_commands:
            self._refusals.warning(
                "commands dropped unread",
                "dropped %d commands unread: more were waiting to be checked than the agent "
                "keeps (a flood of forged commands?); the controller's next ones get through "
                "once it is over", dropped_commands,
            )
        dropped = self._inbox.take_dropped()
        if dropped.wanted:
            self._log.warning(
                "dropped %d audio chunks of plays: too many chunks waiting to be stored; "
                "they will be asked for again when their play notices them missing",
                dropped.wanted,
            )
        if dropped.unsure:
            self._refusals.warning(
                "audio chunks dropped unread",
                "dropped %d audio chunks no play waits for: more were waiting than the "
                "agent takes from one topic (a flood of forged chunks?)", dropped.unsure,
            )
        self._refusals.flush()
        return min((t for t in times if t is not None), default=None)

    def _warn_if_offline(self) -> datetime | None:
        """Tell the technician the broker is out of reach; when to look again."""
        if self._link.connected:
            return None
        now = self._clock.now()
        warned = self._offline_warned_at
        due = (
            self._offline_since + OFFLINE_WARNING
            if warned is None
            else warned + OFFLINE_REMINDER
        )
        if now < due:
            return due
        self._offline_warned_at = now
        seconds = (now - self._offline_since).total_seconds()
        self._log.warning(
            "not connected to the broker for %s: check the 4G modem / network, the "
            "broker_url and the user name and password in the config. Plays already "
            "received still play on time; status events wait in the outbox.",
            f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min",
        )
        return now + OFFLINE_REMINDER

    def _handle_connection(self, up: bool) -> None:
        if not up:
            self._online.clear()
            self._offline_since = self._clock.now()
            self._offline_warned_at = None
            self._log.warning(
                "offline: plays already received still play on time; events wait in the outbox"
            )
            return
        self._publish_state("online")
        self._join.connected()  # ask at once on every connection, until registered
        pending = self._outbox.unacked()
        self._log.info(
            "connected to the broker; sending %d unacknowledged events", len(pending)
        )
        self._send(pending, reconnected=True)
        self._send_heartbeat()
        self._online.set()

    def _handle_message(
        self,
        topic: str,
        payload: bytes,
        received_at: datetime | None = None,
        received_mono: float | None = None,
    ) -> bool:
        """Take one command (or membership, or live frame); False: not quiet
        (housekeeping runs)."""
        if topic.endswith("/live"):
            self._live.frame(topic, payload)
            return True
        try:
            command = self._guard.admit(topic, payload)
        except Duplicate as exc:
            if isinstance(exc.command.body, PlayBody):
                self._answer_again(exc.command, same_command=True)
            elif isinstance(exc.command.body, LiveBody):
                self._live_start(exc.command)
            return False
        except Ignored as exc:
            self._log.debug("ignored command %s on %s: %s", exc.command_id, topic, exc.reason)
            return False
        except Expired as exc:
            if isinstance(exc.command.body, PlayBody):
                self._expired(exc.command, exc.reason)
                return False
            if self._limiter.allow():
                self._log.warning(
                    "refused command %s on %s: %s. Nothing was played.",
                    exc.command_id, topic, exc.reason,
                )
                self._add_event("rejected", ref=exc.command_id, reason=exc.reason)
            return False
        except Rejected as exc:
            if self._limiter.allow():
                if topic.endswith("/membership"):
                    kept = self._membership.current()
                    self._log.warning(
                        "ignored the membership on %s: %s. Still in groups %s; waiting for "
                        "the controller's signed membership (it publishes it again after "
                        "every reconnection and every few minutes)",
                        topic, exc.reason, ", ".join(kept.groups) or "(none yet)",
                    )
                else:
                    self._log.warning(
                        "refused command %s on %s: %s. Nothing was played.",
                        exc.command_id or "(no id)", topic, exc.reason,
                    )
                self._add_event("rejected", ref=exc.command_id, reason=exc.reason)
            return False
        if received_at is not None and not isinstance(
            command.body, MembershipBody | KeyRotationBody
        ):
            # Retained ones were signed long before they are delivered: not samples.
            self.clock_offset.add(command.issued_at, received_at, received_mono)
        self._obey(command, payload)
        return False

    def _obey(self, command: Command, payload: bytes | None = None) -> None:
        body = command.body
        if isinstance(body, PlayBody):
            self._arriving = {ref.sha256 for ref in body.items}
            try:
                for ref in body.items:
                    if not self._cache.expect(ref):
                        # its chunks that came first wait no longer behind other chunks
                        self._inbox.promote(ref.sha256)
                if not self._player.accept(command):
                    self._answer_again(command, same_command=False)
            finally:
                self._arriving = set()
        elif isinstance(body, LiveBody):
            self._live_start(command)
        elif isinstance(body, StopBody):
            count = self._player.stop(body.play_id)
            count += self._live.stop(body.play_id, "stopped by the controller")
            self._log.info(
                "stop command %s for %s: stopped %d plays",
                command.id, body.play_id or "everything playing or due", count,
            )
        elif isinstance(body, MembershipBody):
            self._apply_membership(command, payload)
        elif isinstance(body, AckBody):
            self._outbox.ack(body.outbox, body.seqs)
        elif isinstance(body, KeyRotationBody) and self._trust is not None:
            self._apply_rotation(command, body)
        elif isinstance(body, EnrolmentBody):
            self._apply_enrolment(body)

    def _apply_rotation(self, command: Command, body: KeyRotationBody) -> None:
        assert self._trust is not None
        old, new = self._trust.apply(command)
        self._log.info(
            "controller key rotated: now trusting %s; the old key %s is refused from %s on "
            "(trusted now: %s)",
            new, old, body.retire_at.isoformat(timespec="seconds"), self._trust.describe(),
        )
        # The retained membership may have come before the rotation that makes its
        # signature trusted: ask the broker for it again.
        membership = topics.cluster_topic(self.cluster_id, "membership")
        self._link.unsubscribe(membership)
        self._link.subscribe(membership, self._on_message)

    def _expired(self, command: Command, reason: str) -> None:
        """A play command that came after its expiry: played nothing, reported `expired`,
        unless this cluster has the play already (a copy delivered again after the
        expiry: the play was answered when it came in time)."""
        body = command.body
        assert isinstance(body, PlayBody)
        if self._player.known(body.play_id) is not None:
            self._answer_again(command, same_command=False)
            return
        if body.play_id in self._answered:
            return  # another copy (a group's and its own topic's): reported once
        self._answered[body.play_id] = self._clock.now()
        self._log.warning(
            "play %s (%s, %s) came too late: %s. Nothing was played; reported as expired",
            body.play_id, body.bulletin, body.level, reason,
        )
        self._add_event(
            "expired", ref=command.id, play_id=body.play_id, bulletin=body.bulletin,
            level=body.level, reason=reason,
        )

    def _answer_again(self, command: Command, *, same_command: bool) -> None:
        """A play this cluster holds came again: tell the controller it has it."""
        body = command.body
        assert isinstance(body, PlayBody)
        now = self._clock.now()
        last = self._answered.get(body.play_id)
        if last is not None and last <= now < last + ANSWER_AGAIN_EVERY:
            return
        if len(self._answered) >= 256:  # bounded: forget answers older than the interval
            self._answered = {
                p: at for p, at in self._answered.items() if at + ANSWER_AGAIN_EVERY > now
            }
        self._answered[body.play_id] = now
        waiting = self._outbox.unacked_of(body.play_id, "received")
        if waiting is not None:
            self._log.info(
                "play %s received again (command %s): sending its `received` again",
                body.play_id, command.id,
            )
            if self._link.connected:
                self._send([waiting])
            return
        known = self._player.known(body.play_id)
        if same_command or known is None:
            self._log.debug("play %s received again; the controller has its `received`",
                            body.play_id)
            return
        first_command, received_at, state = known
        self._log.info(
            "play %s received again in a new command %s: the controller asks; answering "
            "`received` again (it is %s)", body.play_id, command.id, state,
        )
        self._add_event(
            "received", ref=command.id, play_id=body.play_id, bulletin=body.bulletin,
            level=body.level,
            reason=f"received again: first received at {clock_time(received_at)} (command "
            f"{first_command}); it is {state}, not scheduled twice",
        )

    def _apply_enrolment(self, body: EnrolmentBody) -> None:
        """The controller's answer to a join request."""
        me = self._identity.key_id
        if body.cluster != self.cluster_id or body.key != me:
            self._log.info(
                "ignored an enrolment answer about key %s (this cluster's key is %s)",
                body.key, me,
            )
            return
        now = self._clock.now()
        before = self._identity.enrolment()
        self._identity.record(body.status, now, body.reason)
        if body.status == "registered":
            self._join.done()
            if before is None or before.status != "registered":
                self._log.info(
                    "the controller registered this cluster's key %s: from now on what it "
                    "reports is stored", me,
                )
            if self._link.connected:  # what it refused before is taken now
                self._publish_state("online")
                self._send_heartbeat()
                self._send(self._outbox.unacked(), reconnected=True)
        elif body.status == "pending":
            self._join.waiting(now)
            if before is None or before.status != "pending":
                self._log.warning(
                    "the join request of key %s waits for a manager's approval: "
                    "`loa-controller enrol approve %s`, or the web app's enrolment page",
                    me, self.cluster_id,
                )
        else:
            self._join.done()
            self._log.error(
                "the controller refused to register this cluster's key %s: %s. Ask for a "
                "new token (loa-controller enrol token %s, or enrol replace %s for a "
                "replaced box), put it in the enrolment_token_file and restart the agent",
                me, body.reason or "no reason given", self.cluster_id, self.cluster_id,
            )

    def _apply_membership(self, command: Command, payload: bytes | None) -> None:
        before = set(self._membership.current().groups)
        now = self._membership.apply(command, payload)
        after = set(now.groups)
        for group in sorted(before - after):
            for channel in topics.GROUP_CHANNELS:
                self._link.unsubscribe(topics.group_topic(group, channel))
        for group in sorted(after - before):
            self._subscribe_group(group)
        if before != after:
            self._log.info(
                "membership changed: now in groups %s (was %s)",
                ", ".join(now.groups) or "(none)", ", ".join(sorted(before)) or "(none)",
            )
        # A new membership command: the controller has (re)started. What it has not
        # acknowledged goes again now rather than at its next, backed-off resend time.
        pending = self._outbox.unacked() if self._link.connected else []
        if pending:
            self._log.info(
                "the controller is back: sending again %d unacknowledged events", len(pending)
            )
            self._send(pending, reconnected=True)

    def _take_chunks(self) -> bool:
        """Store waiting chunks for at most CHUNK_SLICE_S, wanted ones first; if some are
        left, another slice is queued behind what the mailbox holds. True (quiet) if none
        completed a content."""
        quiet = True
        deadline = time.monotonic() + CHUNK_SLICE_S
        try:
            while time.monotonic() < deadline:
                waiting = self._inbox.take()
                if waiting is None:
                    break
                try:
                    outcome = self._handle_chunk(waiting.topic, waiting.payload)
                except Exception:
                    self._log.exception("unexpected error storing a chunk; carrying on")
                    outcome = None
                quiet = quiet and outcome != "complete"
        finally:
            if self._inbox.end_slice():
                self._queue.put(_CHUNKS)
        return quiet

    def _handle_chunk(self, topic: str, payload: bytes) -> ChunkOutcome | None:
        try:
            chunk = chunks.decode(payload)
        except chunks.ChunkError as exc:
            self._refusals.warning(
                "payloads on content topics that are not chunks",
                "dropped a payload on %s: %s", topic, exc,
            )
            return None
        outcome = self._cache.add_chunk(chunk, topic)
        if outcome == "corrupt":
            ref = self._cache.manifest(chunk.sha256)
            if ref is not None:
                self._request_chunks(ref, self._cache.missing(ref))
        return outcome

    # --- outgoing ---------------------------------------------------------------------------

    def _subscribe_group(self, group: str) -> None:
        for channel in topics.GROUP_CHANNELS:
            self._link.subscribe(topics.group_topic(group, channel), self._on_message)

    def _heartbeat_due(self) -> datetime | None:
        """Send the heartbeat if it is due; when the next one is."""
        if self._heartbeat_s is None or not self._link.connected:
            return None
        now = self._clock.now()
        if self._next_heartbeat is None or now >= self._next_heartbeat:
            self._send_heartbeat()
        return self._next_heartbeat

    def _join_due(self) -> datetime | None:
        """Send a join request if one is due; when the next one is."""
        token = self._join.token
        if not self._join.asking or not self._link.connected or token is None:
            return None
        now = self._clock.now()
        if self._join.due(now):
            request = JoinRequest(
                cluster=self.cluster_id, public_key=self._identity.public_key,
                token=token, at=now, version=self._version,
            )
            self._publish(
                topics.cluster_topic(self.cluster_id, "enrol"),
                self._identity.seal("enrol", _body(request)), qos=1,
            )
            if self._identity.enrolment() is None:
                self._identity.record("requested", now)
            self._join.sent(now)
            self._log.info(
                "asked the controller to register this cluster's key %s",
                self._identity.key_id,
            )
        return self._join.next_at

    def _send_heartbeat(self) -> None:
        if self._heartbeat_s is None or not self._link.connected:
            return
        beat = self.heartbeat()
        self._publish(
            topics.cluster_topic(self.cluster_id, "heartbeat"),
            self._identity.seal("heartbeat", _body(beat)), qos=0,
        )
        self._next_heartbeat = beat.at + timedelta(seconds=self._heartbeat_s)

    def _publish_state(self, state: str) -> None:
        message = State(
            cluster=self.cluster_id,
            state="online" if state == "online" else "offline",
            at=self._clock.now(),
            version=self._version,
        )
        self._publish(
            topics.cluster_topic(self.cluster_id, "state"),
            self._identity.seal("state", _body(message)), qos=1, retain=True,
        )

    def _report_play(self, kind: EventKind, record: PlayRecord, reason: str | None) -> None:
        if kind in ("delivered", "playing"):  # a use, for the cache's eviction order
            self._cache.touch(item.sha256 for item in record.body.items)
        self._add_event(
            kind,
            ref=record.command_id,
            play_id=record.play_id,
            bulletin=record.body.bulletin,
            level=record.body.level,
            reason=reason,
        )

    def _report_live(
        self, kind: EventKind, session: LiveSession, reason: str | None, seconds: float | None
    ) -> None:
        """A live session's report (from its thread): into the outbox on the worker."""
        body = session.body
        self._run_on_worker(lambda: self._add_event(
            kind, ref=session.command_id, play_id=body.session_id, bulletin=body.bulletin,
            level=body.level, reason=reason, seconds=seconds,
        ))  # fmt: skip

    def _live_start(self, command: Command) -> None:
        """Start a live session; a start for one that has ended here is a replay: refused
        and reported (a copy for one still live is the same start again: nothing to do)."""
        body = command.body
        assert isinstance(body, LiveBody)
        if self._live.ended_before(body.session_id):
            reason = (
                f"replayed: the live session {body.session_id} has already ended on this "
                "cluster; not aired again"
            )
            if self._limiter.allow():
                self._log.warning("refused command %s: %s", command.id, reason)
                self._add_event("rejected", ref=command.id, play_id=body.session_id,
                                reason=reason)  # fmt: skip
            return
        self._live.start(command)

    def _live_ended(self, session: LiveSession) -> None:
        self._live.ended(session)
        self._player.live_done(session)

    def _add_event(
        self,
        kind: EventKind,
        *,
        ref: str | None = None,
        play_id: str | None = None,
        bulletin: str | None = None,
        level: Level | None = None,
        reason: str | None = None,
        seconds: float | None = None,
    ) -> None:
        """Commit the event to the outbox, then publish it if the broker is reachable:
        the events a step commits go out together, in one message."""
        online = self._link.connected
        event = self._outbox.add(
            kind, ref=ref, play_id=play_id, bulletin=bulletin, level=level, reason=reason,
            sending=online, seconds=seconds,
        )
        if online:
            with self._outgoing_lock:
                first = not self._outgoing
                self._outgoing.append(event)
            if first:
                self._db.after_commit(self._send_outgoing)

    def _send_outgoing(self) -> None:
        with self._outgoing_lock:
            events, self._outgoing = self._outgoing, []
        self._publish_events(events)

    def _send(self, events: Sequence[Event], reconnected: bool = False) -> None:
        if events:
            again = list(events)
            self._db.after_commit(lambda: self._publish_events(again))
        self._outbox.mark_sent((event.seq for event in events), reconnected=reconnected)

    def _publish_events(self, events: Sequence[Event]) -> None:
        """Now, signed: as few messages as MAX_EVENTS_PER_MESSAGE allows."""
        topic = topics.cluster_topic(self.cluster_id, "event")
        for start in range(0, len(events), MAX_EVENTS_PER_MESSAGE):
            body = events_body(events[start : start + MAX_EVENTS_PER_MESSAGE])
            self._link.publish(topic, self._identity.seal("event", body), qos=1)

    def _publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish once the step's writes are committed: nothing goes out that a crash
        could take back (an event not in the outbox, a play not saved as started)."""
        self._db.after_commit(lambda: self._link.publish(topic, payload, qos, retain))

    def _request_chunks(self, ref: ContentRef, missing: list[int]) -> None:
        if not missing or not self._link.connected:
            return
        request = ChunkRequest(
            cluster=self.cluster_id, sha256=ref.sha256, missing=missing[:100_000]
        )
        self._publish(
            topics.cluster_topic(self.cluster_id, "request"),
            self._identity.seal("request", _body(request)), qos=1,
        )


def _body(message: JoinRequest | Heartbeat | State | ChunkRequest) -> dict[str, Any]:
    """A message as the JSON object its signed envelope carries."""
    return message.model_dump(mode="json", exclude_none=True)
