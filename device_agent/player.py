"""The local schedule and the player: each play starts at its commanded time, one at a time.

The schedule is kept on disk (a state document, saved on every change and before a
play's first sound), so an agent that restarts still plays what comes next and never
plays a finished play again.

Rules, in the words of Circular 39/2020's three levels:

- a play is due at `start_at` (this cluster's clock) and may start until `latest_start`;
  past that it is *missed*, with the reason (audio incomplete, output busy, agent not
  running);
- if its audio stops arriving (`stall_s` without progress, counted from when the play
  was received), the missing chunks are requested, ahead of the start as well as after
  it, and again every `request_interval_s` until the audio is complete or the latest
  start has passed; chunks still arriving are waited for rather than asked for twice;
- one output: a due play of a higher level (emergency > priority > normal) interrupts a
  lower one at once; equal or lower levels wait their turn in start time order;
- a play interrupted by a higher level is reported interrupted; if its command asks for
  it (`replay_if_interrupted`), it waits for the output to be free and plays again from
  the start, at most MAX_REPLAYS times and until the later of its latest start and
  REPLAY_WITHIN after the interruption. A stop command or a shutdown is never replayed;
- a stop command stops one play (or everything playing and everything due and waiting);
- a play id already received is never scheduled twice;
- the amplifier (device_agent/amplifier.py), when there is one, is switched on for each
  play, and ahead of a scheduled play by its warm-up, so that the first sample goes out
  at the start time and not a warm-up later;
- a live session (device_agent/live.py) takes the same one output by the same rules: it
  claims it (`live_claim`) from its warm-up before its first sample is due; a higher
  level interrupts it, and it interrupts lower levels. A live session that loses the
  output goes on receiving and takes the output back, live, once it is free (never where
  it was); the player grants (`LiveClaim.grant`) and takes back (`LiveClaim.revoke`),
  and the session says when it has let the output go (`live_released`).

Every state change is reported through `report` (the agent turns it into an outbox
event): received, delivered, playing, finished, interrupted, missed, failed.
The player decides in `tick()`, which the agent's worker calls after every message and
at the time `tick()` returned; the output itself runs on one short-lived thread per play.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from device_agent.localdb import StateTable
from device_agent.output import OutputBackend, PlayOutcome
from protocol.clock import Clock
from protocol.messages import LEVEL_RANK, Command, ContentRef, EventKind, Level, PlayBody

module_log = logging.getLogger(__name__)

EndState = Literal["finished", "interrupted", "missed", "failed"]
PlayState = Literal["scheduled", "playing", EndState]
TERMINAL: frozenset[str] = frozenset({"finished", "interrupted", "missed", "failed"})

# A finished play is remembered this long past its command's expiry, so that a late
# re-delivery of the same play (under a new command id) cannot make it play twice.
DEFAULT_RETENTION = timedelta(days=1)
DEFAULT_REQUEST_INTERVAL_S = 10.0
# A due play's audio that made no progress this long is asked for (not before: the
# chunks of an urgent announcement follow its command by milliseconds).
DEFAULT_STALL_S = 3.0
JUST_AFTER = timedelta(milliseconds=1)
# Replays of a play interrupted by a higher level (when its command asks for them).
MAX_REPLAYS = 3
REPLAY_WITHIN = timedelta(hours=1)

StopCause = Literal["preempted", "stopped", "shutdown"]


class AudioCache(Protocol):
    """What the player needs from the agent's audio cache (device_agent.cache.Cache): whether
    a bulletin's audio is held, where its file is, and which chunks are still missing."""

    def has(self, sha256: str) -> bool: ...
    def path(self, sha256: str) -> Path: ...
    def missing(self, ref: ContentRef) -> list[int]: ...


class AmplifierControl(Protocol):
    """What the player needs from device_agent.amplifier.Amplifier."""

    @property
    def warm_up_s(self) -> float: ...
    @property
    def fault(self) -> str | None: ...
    def power_on_for_play(self, stop: threading.Event | None = None) -> bool: ...
    def play_finished(self) -> None: ...


# What PlayRecord.to_json() saves: changing one of these makes the record saved again.
_SAVED_FIELDS = frozenset({
    "command_id", "body", "received_at", "keep_until", "order", "state", "delivered",
    "started_at", "ended_at", "replays", "replay_until",
})  # fmt: skip


@dataclass
class PlayRecord:
    """One play on this cluster and where it stands."""

    command_id: str
    body: PlayBody
    received_at: datetime
    keep_until: datetime
    order: int
    state: PlayState = "scheduled"
    delivered: bool = False
    started_at: datetime | None = None
    ended_at: datetime | None = None
    last_request_at: datetime | None = None
    replays: int = 0  # times it was put back after an interruption
    replay_until: datetime | None = None  # a replay may start until then
    # Download progress while due (not saved): chunks missing at the last look, and when
    # that number last went down.
    seen_missing: int | None = None
    progress_at: datetime | None = None
    warmed: bool = False  # the amplifier was switched on ahead of the start (not saved)
    # All its audio was found in the cache (not saved): the cache never evicts the audio
    # of a play still to come, so it need not be looked for again.
    held: bool = False
    # The record as saved, encoded (None: changed since): the schedule is saved on every
    # change, and re-encoding every play it keeps each time grew with their number.
    _saved_text: str | None = field(default=None, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SAVED_FIELDS:
            object.__setattr__(self, "_saved_text", None)
        object.__setattr__(self, name, value)

    def saved_text(self) -> str:
        """to_json() as JSON text, encoded once per change."""
        if self._saved_text is None:
            text = json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"))
            object.__setattr__(self, "_saved_text", text)
            return text
        return self._saved_text

    @property
    def play_id(self) -> str:
        return self.body.play_id

    @property
    def rank(self) -> int:
        return LEVEL_RANK[self.body.level]

    @property
    def duration_s(self) -> float:
        return sum(item.duration_s for item in self.body.items)

    @property
    def deadline(self) -> datetime:
        """The latest it may start: its latest start, or the end of its replay window."""
        return self.replay_until or self.body.latest_start

    def describe(self) -> str:
        return f"{self.body.bulletin} ({self.body.level})"

    @functools.cached_property
    def body_json(self) -> dict[str, Any]:
        """The command's body as saved (it never changes: dumped once)."""
        return self.body.model_dump(mode="json", exclude_none=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "body": self.body_json,
            "received_at": self.received_at.isoformat(),
            "keep_until": self.keep_until.isoformat(),
            "order": self.order,
            "state": self.state,
            "delivered": self.delivered,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "replays": self.replays,
            "replay_until": self.replay_until.isoformat() if self.replay_until else None,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PlayRecord:
        def when(key: str) -> datetime | None:
            value = obj.get(key)
            return datetime.fromisoformat(value) if value else None

        received, keep = when("received_at"), when("keep_until")
        if received is None or keep is None:
            raise ValueError("received_at and keep_until are required")
        state = obj["state"]
        if state not in ("scheduled", "playing", *TERMINAL):
            raise ValueError(f"unknown state {state!r}")
        return cls(
            command_id=str(obj["command_id"]),
            body=PlayBody.model_validate(obj["body"]),
            received_at=received,
            keep_until=keep,
            order=int(obj["order"]),
            state=state,
            delivered=bool(obj.get("delivered")),
            started_at=when("started_at"),
            ended_at=when("ended_at"),
            replays=int(obj.get("replays") or 0),
            replay_until=when("replay_until"),
        )


@dataclass(frozen=True)
class PlayView:
    """A play as `Player.status()` shows it (for heartbeats and diagnostics)."""

    play_id: str
    bulletin: str
    level: Level
    state: PlayState
    start_at: datetime
    latest_start: datetime
    delivered: bool
    started_at: datetime | None
    volume: int | None = None  # the volume it plays at (the command's, or the default)


@dataclass(frozen=True)
class PlayerStatus:
    current: PlayView | None
    queue: list[PlayView]  # scheduled plays, by start time


class LiveClaim(Protocol):
    """A live session as the player arbitrates it (device_agent/live.py)."""

    @property
    def session_id(self) -> str: ...
    @property
    def rank(self) -> int: ...
    @property
    def claim_from(self) -> datetime:
        """When it wants the output: its warm-up before its first sample is due."""
        ...
    def describe(self) -> str: ...
    def grant(self) -> None:
        """It may play now (called with the player's lock held: only flags and wakes)."""
        ...
    def revoke(self, reason: str) -> None:
        """It must let the output go; it calls live_released once it has."""
        ...


ReportFn = Callable[[EventKind, PlayRecord, str | None], None]
RequestFn = Callable[[ContentRef, list[int]], None]


def clock_time(when: datetime) -> str:
    """A time as a technician reads it on this box: local HH:MM with the UTC offset."""
    local = when.astimezone()
    offset = local.isoformat()[-6:] if local.utcoffset() else "UTC"
    return f"{local:%H:%M} {offset}" if offset == "UTC" else f"{local:%H:%M} (UTC{offset})"


class Player:
    """The schedule of one cluster and its single output."""

    def __init__(
        self,
        output: OutputBackend,
        cache: AudioCache,
        clock: Clock,
        state: StateTable | None,
        *,
        report: ReportFn,
        request_chunks: RequestFn,
        on_worker: Callable[[Callable[[], None]], None] | None = None,
        request_interval_s: float = DEFAULT_REQUEST_INTERVAL_S,
        stall_s: float = DEFAULT_STALL_S,
        retention: timedelta = DEFAULT_RETENTION,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        amplifier: AmplifierControl | None = None,
        default_volume: int = 100,
        content_activity: Callable[[], datetime | None] = lambda: None,
    ) -> None:
        """Load the saved schedule; a play the previous run left playing is reported
        interrupted (it was cut off by a crash or power loss and is not played again).

        amplifier: switched on for every play (None: no relay to drive); default_volume:
        the output level of plays whose command sets none; content_activity: when audio
        last arrived from the broker (chunks still queued in the agent count as progress,
        so a busy link is not mistaken for a stalled download); on_worker: runs a function
        on the thread that owns the agent's state (its worker), where the output thread
        hands over the end of a play (None: the output thread records it itself)."""
        self._log = log or module_log
        self._content_activity = content_activity
        self._output = output
        self._cache = cache
        self._clock = clock
        self._file = state
        self._report = report
        self._request_chunks = request_chunks
        self._on_worker = on_worker
        self._request_interval = timedelta(seconds=request_interval_s)
        self._stall = timedelta(seconds=stall_s)
        self._retention = retention
        self._amplifier = amplifier
        self.default_volume = default_volume
        self._lock = threading.Lock()
        self._plays: dict[str, PlayRecord] = {}
        self._current: PlayRecord | None = None
        self._stop_event: threading.Event | None = None
        self._stop_reason: str | None = None
        self._stop_cause: StopCause = "stopped"
        # The output runs on one thread of the player's, started here and kept: starting a
        # thread costs more than the rest of starting a play, so an urgent play must not
        # wait for one (neither per play nor on the first play after the agent started).
        self._to_play: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._outputs, name="player", daemon=True)
        self._closing = False
        self._closed = threading.Event()  # ends warm-ups started ahead of a play
        self._order = 0
        self._dirty = False
        self._pending: list[tuple[EventKind, PlayRecord, str | None]] = []
        self._written: dict[str, str] = {}  # each play's text as last saved
        # The live session that wants the output, and whether it has it: off, on (granted),
        # or yielding (revoked, not yet released).
        self._live: LiveClaim | None = None
        self._live_state: Literal["off", "on", "yielding"] = "off"
        self.up_since = clock.now()
        self._load()
        self._thread.start()

    # --- commands ---------------------------------------------------------------------------

    def accept(self, command: Command) -> bool:
        """Schedule an admitted play command; False if this play id was already received."""
        body = command.body
        if not isinstance(body, PlayBody):
            raise TypeError(f"command {command.id} is a {body.kind} command, not a play")
        with self._lock:
            known = self._plays.get(body.play_id)
            if known is not None:
                self._log.info(
                    "play %s (%s) received again (command %s); it is %s, not scheduling it twice",
                    body.play_id, body.bulletin, command.id, known.state,
                )
                return False
            now = self._clock.now()
            self._order += 1
            record = PlayRecord(
                command_id=command.id,
                body=body,
                received_at=now,
                keep_until=max(command.expires_at, body.latest_start) + self._retention,
                order=self._order,
            )
            self._plays[body.play_id] = record
            self._emit("received", record, None)
            self._log.info(
                "play %s: %s scheduled for %s (latest %s)",
                body.play_id, record.describe(), clock_time(body.start_at),
                clock_time(body.latest_start),
            )
            if self._all_held(record):
                record.delivered = True
                self._emit("delivered", record, None)
            if now > body.latest_start:
                self._end(
                    record, "missed",
                    f"arrived at {clock_time(now)}, after its latest start "
                    f"{clock_time(body.latest_start)} (agent offline or the command delayed)",
                )
            self._commit()
            return True

    def known(self, play_id: str) -> tuple[str, datetime, PlayState] | None:
        """A play this cluster holds: (the command it came in, when, its state)."""
        with self._lock:
            record = self._plays.get(play_id)
            if record is None:
                return None
            return record.command_id, record.received_at, record.state

    def stop(self, play_id: str | None) -> int:
        """Stop one play, or (None) what is playing and every due play waiting; how many."""
        with self._lock:
            now = self._clock.now()
            if play_id is not None:
                targets = [self._plays[play_id]] if play_id in self._plays else []
                if not targets or targets[0].state in TERMINAL:
                    self._log.info(
                        "stop for play %s: %s; nothing to stop", play_id,
                        f"it is already {targets[0].state}" if targets else "no such play here",
                    )
                    return 0
            else:
                targets = [
                    r for r in self._plays.values()
                    if r.state == "playing" or (r.state == "scheduled" and r.body.start_at <= now)
                ]
            for record in targets:
                if record is self._current and self._stop_event is not None:
                    self._stop_reason = "stopped by the controller"
                    self._stop_cause = "stopped"
                    self._stop_event.set()
                else:
                    self._end(record, "interrupted", "stopped before it started")
            self._commit()
            return len(targets)

    def content_ready(self, sha256: str) -> bool:
        """Content arrived complete: mark the plays that now hold all their audio as
        delivered (True if there were any: tick soon). Their `delivered` goes out with the
        next tick, in the same save as a start it allows: one write to the SD card."""
        with self._lock:
            ready = False
            for record in self._plays.values():
                if (
                    record.state == "scheduled"
                    and not record.delivered
                    and any(item.sha256 == sha256 for item in record.body.items)
                    and self._all_held(record)
                ):
                    record.delivered = True
                    ready = True
                    self._emit("delivered", record, None)
            return ready

    def wanted_content(self) -> list[ContentRef]:
        """Manifests of audio that plays still to come lack (for the cache after a restart)."""
        with self._lock:
            return [
                item
                for record in self._plays.values()
                if record.state == "scheduled"
                for item in record.body.items
                if not self._cache.has(item.sha256)
            ]

    def needed_content(self) -> set[str]:
        """Hashes of the audio of every play that is still to come or playing."""
        with self._lock:
            return {
                item.sha256
                for record in self._plays.values()
                if record.state in ("scheduled", "playing")
                for item in record.body.items
            }

    # --- live sessions ------------------------------------------------------------------

    def live_claim(self, claim: LiveClaim) -> None:
        """A live session wants the output from claim.claim_from on (it replaces any other
        live session's claim: one session at a time on a cluster, the newest)."""
        with self._lock:
            old = self._live
            if old is not None and old is not claim and self._live_state == "on":
                old.revoke(f"replaced by {claim.describe()}")
                self._live_state = "yielding"
            self._live = claim

    def live_done(self, claim: LiveClaim) -> None:
        """The live session has ended (and let the output go, if it had it)."""
        with self._lock:
            if self._live is claim:
                self._live = None
                self._live_state = "off"
            self._tick()

    def live_released(self, claim: LiveClaim) -> None:
        """The live session let the output go after a revoke (any thread)."""

        def released() -> None:
            with self._lock:
                if self._live is claim or self._live_state == "yielding":
                    self._live_state = "off"
                self._tick()

        if self._on_worker is not None:
            self._on_worker(released)
        else:
            released()

    def live_on_air(self) -> LiveClaim | None:
        """The live session holding the output, if one does."""
        with self._lock:
            return self._live if self._live_state == "on" else None

    # --- time -------------------------------------------------------------------------------

    def tick(self) -> datetime | None:
        """Do what is due now (miss, request, start, preempt); return when to tick next."""
        with self._lock:
            return self._tick()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the output (the play is reported interrupted) and start nothing more."""
        with self._lock:
            self._closing = True
            self._closed.set()
            if self._current is not None and self._stop_event is not None:
                self._stop_reason = "the agent was shut down during the play"
                self._stop_cause = "shutdown"
                self._stop_event.set()
        self._to_play.put(None)  # after the play it is stopping, if any
        self._thread.join(timeout)

    def status(self) -> PlayerStatus:
        with self._lock:
            current = self._view(self._current) if self._current else None
            queue = sorted(
                (r for r in self._plays.values() if r.state == "scheduled"),
                key=lambda r: (r.body.start_at, -r.rank, r.order),
            )
            return PlayerStatus(current=current, queue=[self._view(r) for r in queue])

    def record(self, play_id: str) -> PlayRecord | None:
        with self._lock:
            return self._plays.get(play_id)

    # --- internals (lock held) --------------------------------------------------------------

    def _tick(self) -> datetime | None:
        now = self._clock.now()
        self._forget(now)
        waiting: list[PlayRecord] = []
        for record in sorted(self._plays.values(), key=lambda r: r.order):
            if record.state != "scheduled":
                continue
            if now > record.deadline:
                self._end(record, "missed", self._missed_reason(record))
                continue
            if record.body.start_at > now:
                # Ahead of time: a download that stalled (or never began, as when the
                # agent joined after the chunks went out) is asked for now, not at the
                # start, so the play still starts on time if the link drops later.
                if not self._all_held(record):
                    if self._request_due(record, now):
                        self._request_missing(record, now)
                elif not record.warmed and now >= self._warm_up_from(record):
                    self._warm_up_ahead(record)
                continue
            if self._all_held(record):
                if not record.delivered:  # completed by another agent sharing the cache
                    record.delivered = True
                    self._emit("delivered", record, None)
                waiting.append(record)
            elif self._request_due(record, now):
                self._request_missing(record, now)
        self._arbitrate(waiting, now)
        self._commit()
        nxt = self._next_tick(now)
        live = self._live
        if live is not None and self._live_state == "off" and live.claim_from > now:
            nxt = live.claim_from if nxt is None else min(nxt, live.claim_from)
        return nxt

    def _arbitrate(self, waiting: list[PlayRecord], now: datetime) -> None:
        """Give the output to the best of the due plays and the live session: start it,
        or interrupt what has it if the best is of a higher level."""
        live = self._live
        live_wants = (
            live is not None and self._live_state == "off" and now >= live.claim_from
        )
        if (waiting or live_wants) and not self._closing:
            best = min(waiting, key=lambda r: (-r.rank, r.body.start_at, r.order), default=None)
            current = self._current
            if self._live_state != "off":  # a live session has (or is leaving) the output
                assert live is not None
                if best is not None and best.rank > live.rank and self._live_state == "on":
                    self._log.info(
                        "play %s: %s interrupts the live session %s", best.play_id,
                        best.describe(), live.describe(),
                    )
                    live.revoke(f"preempted by {best.describe()}")
                    self._live_state = "yielding"
            elif current is None:
                assert live is not None or best is not None
                if live is not None and live_wants and (
                    best is None or live.rank > best.rank
                    or (live.rank == best.rank and live.claim_from <= best.body.start_at)
                ):
                    self._live_state = "on"
                    live.grant()
                elif best is not None:
                    self._start(best, now)
            elif self._stop_event and not self._stop_event.is_set():
                rival = max(
                    ([(best.rank, best.describe())] if best is not None else [])
                    + ([(live.rank, f"the live session {live.describe()}")]
                       if live is not None and live_wants else []),
                    default=None,
                )  # fmt: skip
                if rival is not None and rival[0] > current.rank:
                    self._stop_reason = f"preempted by {rival[1]}"
                    self._stop_cause = "preempted"
                    self._log.info("play %s: %s interrupts it", current.play_id, rival[1])
                    self._stop_event.set()

    def _next_tick(self, now: datetime) -> datetime | None:
        times: list[datetime] = []
        for record in self._plays.values():
            if record.state in TERMINAL:
                times.append(record.keep_until + JUST_AFTER)
                continue
            if record.state != "scheduled":
                continue
            times.append(record.deadline + JUST_AFTER)
            if record.body.start_at > now:
                times.append(record.body.start_at)
                if not record.warmed and self._all_held(record):
                    times.append(self._warm_up_from(record))
            if not self._all_held(record):
                times.append(self._next_request_at(record))
        return min(times, default=None)

    def _warm_up_from(self, record: PlayRecord) -> datetime:
        """When to switch the amplifier on for a scheduled play (its start if no relay)."""
        amplifier = self._amplifier
        warm_up = amplifier.warm_up_s if amplifier is not None else 0.0
        return record.body.start_at - timedelta(seconds=warm_up)

    def _warm_up_ahead(self, record: PlayRecord) -> None:
        """Switch the amplifier on now, its warm-up before the play's start, on a thread
        of its own (relay I/O and the warm-up must not hold up the worker). The play
        itself then finds the amplifier warm and starts on time."""
        record.warmed = True
        amplifier = self._amplifier
        if amplifier is None or amplifier.warm_up_s <= 0:
            return
        closed = self._closed

        def warm_up() -> None:
            try:
                amplifier.power_on_for_play(closed)
            finally:
                amplifier.play_finished()

        threading.Thread(target=warm_up, name=f"warm-up-{record.play_id}", daemon=True).start()

    def _start(self, record: PlayRecord, now: datetime) -> None:
        record.state = "playing"
        record.started_at = now
        self._current = record
        self._stop_event = threading.Event()
        self._stop_reason = None
        late = (now - record.body.start_at).total_seconds()
        self._log.info(
            "play %s: playing %s (%.1f s of audio, %.3f s after its start time)",
            record.play_id, record.describe(), record.duration_s, late,
        )
        self._emit("playing", record, None)
        self._commit()  # on disk before the first sound: a crash now cannot replay it
        items = [self._cache.path(item.sha256) for item in record.body.items]
        work = (record, items, self._stop_event, self._volume(record))
        if self._file is not None:  # the sound starts once the save is committed
            self._file.after_commit(lambda: self._to_play.put(work))
        else:
            self._to_play.put(work)

    def _outputs(self) -> None:
        """The output thread: one play at a time, as `_start` hands them over."""
        while True:
            work = self._to_play.get()
            if work is None:
                return
            self._run_output(*work)

    def _volume(self, record: PlayRecord) -> int:
        return record.body.volume if record.body.volume is not None else self.default_volume

    def _run_output(
        self, record: PlayRecord, items: list[Path], stop: threading.Event, volume: int
    ) -> None:
        label = f"{record.body.bulletin} ({record.body.level}) {record.play_id}"
        amplifier = self._amplifier
        note: str | None = None
        try:
            powered = amplifier.power_on_for_play(stop) if amplifier is not None else True
            fault = amplifier.fault if amplifier is not None else None
            if not powered:
                note = (
                    f"not played: the amplifier relay failed ({fault}) and the config says "
                    "not to play without it (relay.play_without_relay: false)"
                )
                outcome = PlayOutcome(completed=False, played_s=0.0, error=note)
            elif stop.is_set():  # stopped or preempted during the warm-up
                outcome = PlayOutcome(completed=False, played_s=0.0)
            else:
                if fault is not None:
                    note = f"played without the amplifier relay, which failed: {fault}"
                outcome = self._output.play(items, record.duration_s, label, stop, volume)
        except Exception as exc:
            self._log.exception("output %s failed on play %s", self._output.name, record.play_id)
            outcome = PlayOutcome(completed=False, played_s=0.0, error=f"{exc}")
        finally:
            if amplifier is not None:
                amplifier.play_finished()

        def finish() -> None:
            with self._lock:
                self._output_done(record, outcome, stop, note)
                self._tick()

        if self._on_worker is not None:
            self._on_worker(finish)
        else:
            finish()

    def _output_done(
        self, record: PlayRecord, outcome: PlayOutcome, stop: threading.Event,
        note: str | None = None,
    ) -> None:
        self._current = None
        self._stop_event = None
        if outcome.error and outcome.error == note:
            self._end(record, "failed", note)
        elif outcome.error:
            self._end(
                record, "failed",
                f"output {self._output.name} failed after {outcome.played_s:.1f} s: "
                f"{outcome.error}",
            )
        elif outcome.completed:
            self._end(record, "finished", note)
        elif stop.is_set():
            self._interrupted(record, self._stop_reason or "stopped", self._stop_cause)
        else:
            self._end(
                record, "failed",
                f"output {self._output.name} ended after {outcome.played_s:.1f} s of "
                f"{record.duration_s:.1f} s without being stopped",
            )
        self._commit()

    def _interrupted(self, record: PlayRecord, reason: str, cause: StopCause) -> None:
        """Report the interruption; put the play back if it is to be replayed."""
        replay = (
            cause == "preempted"
            and record.body.replay_if_interrupted
            and record.replays < MAX_REPLAYS
            and not self._closing
        )
        if not replay:
            self._end(record, "interrupted", reason)
            return
        until = max(record.body.latest_start, self._clock.now() + REPLAY_WITHIN)
        self._end(
            record, "interrupted",
            f"{reason}; it plays again from the start once the output is free "
            f"(until {clock_time(until)} at the latest)",
        )
        record.state = "scheduled"
        record.replays += 1
        record.replay_until = until
        record.started_at = None
        record.ended_at = None
        record.warmed = False

    def _end(self, record: PlayRecord, state: EndState, reason: str | None) -> None:
        record.state = state
        record.ended_at = self._clock.now()
        level = logging.WARNING if state in ("missed", "failed") else logging.INFO
        self._log.log(
            level, "play %s: %s %s%s", record.play_id, record.describe(), state,
            f": {reason}" if reason else "",
        )
        self._emit(state, record, reason)

    def _missed_reason(self, record: PlayRecord) -> str:
        if record.replay_until is not None:
            busy = f" with {self._current.describe()}" if self._current else ""
            return (
                f"not played again after its interruption: the output was busy{busy} until "
                f"past {clock_time(record.replay_until)}"
            )
        if self.up_since > record.body.latest_start:
            return (
                f"agent was not running (powered off or restarting) until "
                f"{clock_time(self.up_since)}, after its latest start "
                f"{clock_time(record.body.latest_start)}"
            )
        total = sum(item.chunks for item in record.body.items)
        missing = sum(len(self._cache.missing(item)) for item in record.body.items)
        if missing:
            return f"audio incomplete: {missing} of {total} chunks missing"
        if self._current is not None:
            return (
                f"output busy with {self._current.describe()} past its latest start "
                f"{clock_time(record.body.latest_start)}"
            )
        return f"could not start by its latest start {clock_time(record.body.latest_start)}"

    def _all_held(self, record: PlayRecord) -> bool:
        if not record.held:
            record.held = all(self._cache.has(item.sha256) for item in record.body.items)
        return record.held

    def _request_due(self, record: PlayRecord, now: datetime) -> bool:
        missing = sum(len(self._cache.missing(item)) for item in record.body.items)
        if record.seen_missing is None or record.progress_at is None:
            record.progress_at = record.received_at
        elif missing < record.seen_missing:
            record.progress_at = now
        arrived = self._content_activity()
        if arrived is not None and record.progress_at is not None and arrived > record.progress_at:
            record.progress_at = arrived
        record.seen_missing = missing
        return now >= self._next_request_at(record)

    def _next_request_at(self, record: PlayRecord) -> datetime:
        times = [(record.progress_at or record.received_at) + self._stall]
        if record.last_request_at is not None:
            times.append(record.last_request_at + self._request_interval)
        return max(times)

    def _request_missing(self, record: PlayRecord, now: datetime) -> None:
        record.last_request_at = now
        for item in record.body.items:
            missing = self._cache.missing(item)
            if missing:
                self._log.info(
                    "play %s: content %s lacks %d of %d chunks; asking the controller",
                    record.play_id, item.sha256[:12], len(missing), item.chunks,
                )
                self._request_chunks(item, missing)

    def _forget(self, now: datetime) -> None:
        old = [pid for pid, r in self._plays.items() if r.state in TERMINAL and r.keep_until < now]
        for pid in old:
            del self._plays[pid]
        self._dirty = self._dirty or bool(old)

    def _view(self, record: PlayRecord) -> PlayView:
        return PlayView(
            play_id=record.play_id,
            bulletin=record.body.bulletin,
            level=record.body.level,
            state=record.state,
            start_at=record.body.start_at,
            latest_start=record.body.latest_start,
            delivered=record.delivered,
            started_at=record.started_at,
            volume=self._volume(record),
        )

    def _emit(self, kind: EventKind, record: PlayRecord, reason: str | None) -> None:
        """Queue a report; it goes out in `_commit`, after the schedule is on disk."""
        self._dirty = True
        self._pending.append((kind, record, reason))

    def _commit(self) -> None:
        """Save the plays that changed if any did, then send the reports queued meanwhile."""
        if self._dirty and self._file is not None:
            written = self._written
            changed: dict[str, str] = {}
            for pid, record in self._plays.items():
                text = record.saved_text()  # encoded again only if the record changed
                if text is not written.get(pid):
                    changed[pid] = text
            removed = [pid for pid in written if pid not in self._plays]
            if changed or removed:
                self._file.save(changed, removed)
                written.update(changed)
                for pid in removed:
                    del written[pid]
        self._dirty = False
        pending, self._pending = self._pending, []
        for kind, record, reason in pending:
            try:
                self._report(kind, record, reason)
            except Exception:
                self._log.exception(
                    "could not record the %s event of play %s", kind, record.play_id
                )

    def _load(self) -> None:
        if self._file is None:
            return
        rows = self._file.load()
        legacy = None if rows else self._file.legacy_document()
        if isinstance(legacy, dict):  # saved by a version that kept one document
            texts = [json.dumps(obj) for obj in legacy.get("plays", [])]
        else:
            texts = [body for _key, body in rows]
        loaded: list[PlayRecord] = []
        for text in texts:
            try:
                loaded.append(PlayRecord.from_json(json.loads(text)))
            except (KeyError, TypeError, ValueError, ValidationError) as exc:
                self._log.error("skipped a damaged play in %s: %s", self._file, exc)
        for record in sorted(loaded, key=lambda r: r.order):  # the order they came in
            self._plays[record.play_id] = record
            self._order = max(self._order, record.order)
        if isinstance(legacy, dict):
            self._file.replace_legacy({p: r.saved_text() for p, r in self._plays.items()})
        self._written = {pid: r.saved_text() for pid, r in self._plays.items()}
        damaged = [key for key, _body in rows if key not in self._plays]
        if damaged:  # dropped from the table too, at the next save
            self._written.update((key, "") for key in damaged)
            self._dirty = True
        with self._lock:
            cut = [r for r in self._plays.values() if r.state == "playing"]
            for record in cut:
                self._end(
                    record, "interrupted",
                    "the agent stopped (power loss, crash or restart) during the play; "
                    "not played again",
                )
            self._commit()
