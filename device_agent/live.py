"""Live sessions on one cluster: signed frames into a jitter buffer, out on the clock.

A live session (a rebroadcast, or a microphone) starts with a signed `live` command
that went through the guard (device_agent/guard.py) like any command. It fixes the
session's timeline: slot s (one 20 ms Opus packet) was captured at origin + s x 20 ms
and is handed to the output at that time plus the session's delay, on every cluster
alike, so neighbouring villages never echo each other. Its audio comes in frames on the
`live` topics (protocol/live.py), each checked here before anything in it is believed:

1. it must be a well-formed frame of a session this cluster was started for (frames of
   no session here are dropped unread: forged, replayed after the session, or meant for
   other clusters);
2. it must carry the controller's signature (the keys the guard trusts), over the
   session id, the slots and the packets: nobody else can make a speaker speak;
3. its slots must lie within the session (before its end and `ends_by`) and at most
   MAX_AHEAD_S ahead of their time; a slot already handed over, or held, is not taken
   again (a frame replayed within its session plays nothing twice).

The jitter buffer holds the packets until their time. A slot whose packet has not come
by its time is silence (a gap), and the packet is skipped if it comes later: the output
never waits for the network and never drifts from the timeline. The output itself is
arbitrated by the player (device_agent/player.py) exactly as for plays: a higher level
interrupts the session (its slots are then silence on this cluster: a gap "preempted
by ..."), and the session takes the output back live when it is free. The amplifier is
switched on its warm-up ahead of the first slot, as for a play.

Reports (through the outbox, like a play's): `playing` when the first slot goes out,
`gap` for each run of silence (its seconds and why: missing audio, preempted, output busy,
amplifier warming up), and at the end `finished` (the last frame was played, the source
went quiet for the session's idle_end_s, or ends_by was reached) or `interrupted` (a stop
command, or the agent shut down), with the seconds of audio aired and a summary of the
gaps; `missed` if it never aired at all.

Threads: frames are checked on the agent's worker; each session has one thread of its
own that hands the due slots to the output (`pump`, at most every LOOKAHEAD_S), and
hands its reports back to the worker.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device_agent.output import LiveSink, OutputBackend
from protocol import live as frames
from protocol.clock import Clock
from protocol.messages import LEVEL_RANK, Command, EventKind, LiveBody
from protocol.ratelimit import LogLimiter

module_log = logging.getLogger(__name__)

SLOT = timedelta(milliseconds=frames.SLOT_MS)
#: How far ahead of their time the slots are handed to the output: HAND_SLOTS at a
#: time, at the same instants on every cluster (origin + delay + a multiple of
#: HAND_SLOTS slots - LOOKAHEAD_S), so that they hand the same packet at the same time.
LOOKAHEAD_S = 0.06
HAND_SLOTS = 10
#: Frames for slots further ahead than this are refused (the buffer's bound).
MAX_AHEAD_S = 30.0
#: Behind by more than this (the box was busy), the output skips ahead to the timeline.
MAX_BEHIND_S = 0.2
#: The output is claimed this much before the amplifier's warm-up ahead of the first slot:
#: time to open the output before the first hand-over.
OPEN_AHEAD_S = 0.25
#: Gap events per session; gaps beyond are only counted, in the end event.
MAX_GAP_EVENTS = 30
#: Sessions ended are remembered this long, so frames still coming are known as theirs.
REMEMBER_ENDED = timedelta(minutes=10)

GapCause = Literal["missing", "preempted", "busy", "warm-up", "behind"]
EndKind = Literal["finished", "interrupted", "missed", "failed"]


def _slot_of(body: LiveBody, when: datetime) -> float:
    """The slot due at when (not rounded)."""
    return ((when - body.origin).total_seconds() * 1000 - body.delay_ms) / frames.SLOT_MS


@dataclass
class _Gap:
    cause: GapCause
    why: str
    first: int
    slots: int = 0


@dataclass
class SessionReport:
    """What a session reports; `seconds` is the gap's silence, or the audio aired."""

    kind: EventKind
    session: LiveSession
    reason: str | None
    seconds: float | None


ReportFn = Callable[[SessionReport], None]


class PlayerControl:
    """What a session needs from the player (device_agent.player.Player)."""

    def __init__(
        self,
        claim: Callable[[LiveSession], None],
        done: Callable[[LiveSession], None],
        released: Callable[[LiveSession], None],
    ) -> None:
        self.claim = claim
        self.done = done
        self.released = released


class LiveRunner(Protocol):
    """Steps many sessions on one thread (`LiveSession.step`), instead of a thread each."""

    def add(self, session: LiveSession) -> None: ...
    def poke(self, session: LiveSession) -> None: ...


class Amplifier(Protocol):
    """What a session needs from device_agent.amplifier.Amplifier (None: no relay)."""

    @property
    def warm_up_s(self) -> float: ...
    def power_on_for_play(self, stop: threading.Event | None = None) -> bool: ...
    def play_finished(self) -> None: ...


@dataclass
class LiveSession:
    """One live session on this cluster: its buffer, its place on the timeline, its gaps."""

    command_id: str
    body: LiveBody
    output: OutputBackend
    clock: Clock
    report: Callable[[EventKind, LiveSession, str | None, float | None], None]
    player: PlayerControl
    warm_up_s: float = 0.0
    volume: int = 100
    amplifier: Amplifier | None = None
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = module_log
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)
    _buffer: dict[int, bytes] = field(default_factory=dict)
    next_slot: int = 0  # the next slot to hand over (or to pass as silence)
    end_slot: int | None = None  # one past the last slot (the last frame came)
    last_heard: int | None = None  # the highest slot received
    last_frame_at: datetime | None = None
    granted: bool = False
    revoked: str | None = None  # why the output was taken back (None: not)
    ended: tuple[EndKind, str] | None = None
    stop_reason: tuple[EndKind, str] | None = None  # a stop asked for from outside
    aired_slots: int = 0
    silent_slots: int = 0
    started: bool = False
    late_packets: int = 0
    forged_frames: int = 0
    frames_taken: int = 0
    gaps_reported: int = 0
    gap_seconds: dict[str, float] = field(default_factory=dict)
    _gap: _Gap | None = None
    _sink: LiveSink | None = None
    _thread: threading.Thread | None = None
    _runner: LiveRunner | None = None
    _done: threading.Event = field(default_factory=threading.Event)
    handed: list[tuple[int, float]] | None = None  # (slot, when) handed over, if asked
    created: datetime | None = None  # when this cluster took the session's start

    # --- the claim the player arbitrates --------------------------------------------------

    @property
    def session_id(self) -> str:
        return self.body.session_id

    @property
    def rank(self) -> int:
        return LEVEL_RANK[self.body.level]

    @property
    def claim_from(self) -> datetime:
        return self.due(0) - timedelta(seconds=self.warm_up_s + OPEN_AHEAD_S)

    def describe(self) -> str:
        return f"{self.body.bulletin} ({self.body.level}, live)"

    def grant(self) -> None:
        self.granted = True
        self.revoked = None
        self._poke()

    def revoke(self, reason: str) -> None:
        self.revoked = reason
        self._poke()

    # --- the timeline --------------------------------------------------------------------

    def due(self, slot: int) -> datetime:
        return self.body.origin + SLOT * slot + timedelta(milliseconds=self.body.delay_ms)

    @property
    def ends_by_slot(self) -> int:
        return max(0, math.ceil(
            (self.body.ends_by - self.body.origin).total_seconds() * 1000 / frames.SLOT_MS
        ))  # fmt: skip

    def take(self, frame: frames.Frame, now: datetime) -> str | None:
        """Put a verified frame's packets in the buffer; None, or why it was not taken."""
        limit = min(self.end_slot if self.end_slot is not None else 2**40, self.ends_by_slot)
        ahead = _slot_of(self.body, now + timedelta(seconds=MAX_AHEAD_S))
        with self._lock:
            if self.ended is not None:
                return "the session has ended"
            if frame.slot > ahead:
                return (
                    f"slot {frame.slot} is more than {MAX_AHEAD_S:g} s ahead of its time "
                    "(the controller's clock or this cluster's is wrong: check NTP)"
                )
            self.frames_taken += 1
            self.last_frame_at = now
            for index, packet in enumerate(frame.packets):
                slot = frame.slot + index
                if slot >= limit:
                    break
                if slot < self.next_slot:
                    self.late_packets += 1
                    continue
                self._buffer.setdefault(slot, packet)
                if self.last_heard is None or slot > self.last_heard:
                    self.last_heard = slot
            if frame.end:
                end = frame.slot + len(frame.packets)
                self.end_slot = end if self.end_slot is None else min(self.end_slot, end)
        self._poke()
        return None

    def stop(self, kind: EndKind, reason: str) -> None:
        """End the session from outside (a stop command, a shutdown, a newer session)."""
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = (kind, reason)
        self._poke()

    # --- the session's thread --------------------------------------------------------------

    def start(self, runner: LiveRunner | None = None) -> None:
        """Run the session: on a thread of its own, or (runner) on a runner that steps
        many sessions (a simulated fleet's: scripts/sim_live.py)."""
        if runner is not None:
            self._runner = runner
            runner.add(self)
            return
        self._thread = threading.Thread(
            target=self._run, name=f"live-{self.session_id[:8]}", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        elif self._runner is not None:
            self._done.wait(timeout)

    def _poke(self) -> None:
        """Something changed (granted, revoked, stopped, a frame): look again now."""
        self._wake.set()
        if self._runner is not None:
            self._runner.poke(self)

    def step(self) -> float | None:
        """Hand over what is due; seconds until the next look, None once it has ended
        (the player is then told)."""
        try:
            wait = self.pump(self.clock.now())
        except Exception as exc:
            self.log.exception("live session %s failed", self.session_id)
            self._finish(("failed", f"the agent failed while airing it: {exc}"))
            wait = None
        if wait is None:
            self._done.set()
            self.player.done(self)
        return wait

    def _run(self) -> None:
        while (wait := self.step()) is not None:
            self._wake.wait(wait)
            self._wake.clear()

    def pump(self, now: datetime) -> float | None:
        """Hand over what is due by now + LOOKAHEAD_S, open or close the output as the
        player says, end the session when it is over; seconds until the next look (None:
        it has ended)."""
        self._follow_output()
        with self._lock:
            ended = self._ending(now)
            # Whole groups of HAND_SLOTS whose first slot is due within LOOKAHEAD_S.
            due_now = math.floor(_slot_of(self.body, now + timedelta(seconds=LOOKAHEAD_S)))
            horizon = (due_now // HAND_SLOTS + 1) * HAND_SLOTS - 1
            if ended is not None:
                last = ended[2]
                horizon = min(horizon, last - 1)
            airing = self._sink is not None
            behind = _slot_of(self.body, now - timedelta(seconds=MAX_BEHIND_S))
            out: list[bytes] = []
            first_sound = False
            handed_at = now.timestamp()
            while self.next_slot <= horizon:
                slot = self.next_slot
                packet = self._buffer.pop(slot, None)
                if airing and slot >= behind:
                    if packet is not None:
                        first_sound = first_sound or not self.started
                        self._aired(slot)  # closes a silence before it: not yet a gap
                        self.started = True
                        out.append(packet)
                    else:
                        self._silent(slot, "missing", "no audio came in time (link or source)")
                        if self.started:  # the output starts with the first audio
                            out.append(frames.SILENCE_PACKET)
                    if self.handed is not None:
                        self.handed.append((slot, handed_at))
                elif airing:
                    self._silent(slot, "behind", "this cluster was too busy to keep up")
                else:
                    cause, why = self._why_off_air()
                    self._silent(slot, cause, why)
                self.next_slot += 1
        if first_sound:  # the reason says it is live, and what: rebroadcast, microphone
            self.report("playing", self, self.body.source, None)
        if out and self._sink is not None:
            try:
                self._sink.write(out)
            except OSError as exc:
                self._close_sink()
                self._finish(("failed", f"the output {self.output.name} failed: {exc}"))
                return None
        if ended is not None and self.next_slot >= ended[2]:
            self._finish((ended[0], ended[1]))
            return None
        if self._sink is not None or self.granted:  # at the next group's instant
            at = self.due(self.next_slot) - timedelta(seconds=LOOKAHEAD_S)
            return max(0.0, min(0.5, (at - self.clock.now()).total_seconds()))
        return 0.5

    def _ending(self, now: datetime) -> tuple[EndKind, str, int] | None:
        """(how, why, up to which slot) if the session ends; lock held."""
        slot_now = max(0, math.floor(_slot_of(self.body, now)))
        if self.stop_reason is not None:
            return (*self.stop_reason, slot_now)
        if self.end_slot is not None:
            return ("finished", "the last frame of the session was played", self.end_slot)
        if now >= self.body.ends_by:
            return (
                "finished",
                f"its maximum length was reached ({self.body.ends_by.isoformat()})",
                self.ends_by_slot,
            )
        idle = timedelta(seconds=self.body.idle_end_s)
        heard = self.last_heard if self.last_heard is not None else -1
        # Quiet since the next slot's time, or since this cluster took the start (a
        # start that came late, or again to a cluster that joined late).
        quiet_since = max(self.due(heard + 1), self.created or self.due(0))
        if now >= quiet_since + idle:
            said = "no audio at all" if self.last_heard is None else "no more audio"
            return (
                "finished",
                f"{said} for {self.body.idle_end_s:g} s: the source stopped or the link "
                "to the controller was lost",
                heard + 1,
            )
        return None

    def _why_off_air(self) -> tuple[GapCause, str]:
        if self.revoked is not None:
            return "preempted", self.revoked
        if self.granted:
            return self._gap_goes_on("warm-up", "the amplifier was warming up")
        return "busy", "the output was busy with a play of the same or a higher level"

    def _gap_goes_on(self, cause: GapCause, why: str) -> tuple[GapCause, str]:
        """The open gap's cause if there is one (the output coming back after a
        preemption is the end of that gap, not a gap of its own), else this one."""
        gap = self._gap
        return (gap.cause, gap.why) if gap is not None else (cause, why)

    def _aired(self, slot: int) -> None:
        self._close_gap()
        self.aired_slots += 1

    def _silent(self, slot: int, cause: GapCause, why: str) -> None:
        gap = self._gap
        if gap is not None and gap.cause != cause:
            self._close_gap()
            gap = None
        if gap is None:
            gap = self._gap = _Gap(cause, why, slot)
        gap.slots += 1
        self.silent_slots += 1
        self.gap_seconds[cause] = self.gap_seconds.get(cause, 0.0) + frames.SLOT_MS / 1000

    def _close_gap(self) -> None:
        gap, self._gap = self._gap, None
        if gap is None or not self.started:
            return  # before the first sound: only summarised in the end event
        if self.gaps_reported >= MAX_GAP_EVENTS:
            return
        self.gaps_reported += 1
        seconds = gap.slots * frames.SLOT_MS / 1000
        self.report("gap", self, f"{seconds:.2f} s of silence: {gap.why}", seconds)

    def _follow_output(self) -> None:
        """Open the output when granted, close it when revoked (outside the lock)."""
        if self.granted and self.revoked is None and self._sink is None and self.ended is None:
            amplifier = self.amplifier
            if amplifier is not None and not amplifier.power_on_for_play(None):
                self.log.warning(
                    "live session %s: the amplifier relay failed; playing without it",
                    self.session_id,
                )
            label = f"live-{self.session_id}"
            try:
                self._sink = self.output.open_live(label, self.body.pre_skip, self.volume)
            except OSError as exc:
                if amplifier is not None:
                    amplifier.play_finished()
                self.granted = False
                self.player.released(self)
                self.stop("failed", f"the output {self.output.name} could not start: {exc}")
                return
            # Slots already past their time are not played late: airing starts now.
            with self._lock:
                now_slot = math.ceil(_slot_of(self.body, self.clock.now()))
                cause, why = self._gap_goes_on("warm-up", "the output was starting")
                while self.next_slot < now_slot:
                    self._buffer.pop(self.next_slot, None)
                    self._silent(self.next_slot, cause, why)
                    self.next_slot += 1
        elif self.revoked is not None and self.granted:
            self._close_sink()
            self.granted = False
            self.player.released(self)

    def _close_sink(self) -> None:
        sink, self._sink = self._sink, None
        if sink is None:
            return
        problem = sink.close()
        if self.amplifier is not None:
            self.amplifier.play_finished()
        if problem:
            self.log.warning("live session %s: %s", self.session_id, problem)

    def _finish(self, how: tuple[EndKind, str]) -> None:
        with self._lock:
            if self.ended is not None:
                return
            self._close_gap()
            self.ended = how
            self._buffer.clear()
        self._close_sink()
        kind, why = how
        aired = self.aired_slots * frames.SLOT_MS / 1000
        if not self.started and kind == "finished":
            kind = "missed"
            why = f"never aired: {self.describe_gaps() or why}"
        summary = self.describe_gaps()
        reason = f"{why}; aired {aired:.1f} s" + (f", silence: {summary}" if summary else "")
        self.log.info("live session %s %s: %s", self.session_id, kind, reason)
        self.report(kind, self, reason, aired)

    def describe_gaps(self) -> str:
        parts = [f"{seconds:.1f} s {cause}" for cause, seconds in sorted(self.gap_seconds.items())]
        if self.late_packets:
            parts.append(f"{self.late_packets} packets came too late")
        if self.forged_frames:
            parts.append(f"{self.forged_frames} forged frames refused")
        return ", ".join(parts)


class LiveChannel:
    """The live sessions of one agent: started by commands, fed by frames (the worker's
    side), each aired by its own thread."""

    def __init__(
        self,
        output: OutputBackend,
        clock: Clock,
        keys: Callable[[], Sequence[Ed25519PublicKey]],
        player: PlayerControl,
        report: Callable[[EventKind, LiveSession, str | None, float | None], None],
        *,
        amplifier: Amplifier | None = None,
        default_volume: int = 100,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        keep_handed: bool = False,
        runner: LiveRunner | None = None,
    ) -> None:
        self._output = output
        self._clock = clock
        self._keys = keys
        self._player = player
        self._report = report
        self._amplifier = amplifier
        self._default_volume = default_volume
        self._log = log or module_log
        self._refusals = LogLimiter(self._log)
        self._keep_handed = keep_handed
        self._runner = runner
        self.sessions: dict[str, LiveSession] = {}
        self._ended_at: dict[str, datetime] = {}
        self.refused = 0  # frames refused, in all

    def start(self, command: Command) -> LiveSession | None:
        """Start the session of an admitted live command; None if it is known already
        (the controller sends it again to clusters that join late) or has ended."""
        body = command.body
        if not isinstance(body, LiveBody):
            raise TypeError(f"command {command.id} is a {body.kind} command, not live")
        now = self._clock.now()
        self._forget(now)
        if body.session_id in self.sessions or body.session_id in self._ended_at:
            return None
        if now >= body.ends_by:
            self._log.info("live session %s: received after its end; not airing it",
                           body.session_id)  # fmt: skip
            return None
        for other in list(self.sessions.values()):  # one at a time: the newest wins
            other.stop("interrupted", f"replaced by the live session {body.bulletin}")
        session = LiveSession(
            command_id=command.id,
            body=body,
            output=self._output,
            clock=self._clock,
            report=self._report,
            player=self._player,
            warm_up_s=self._amplifier.warm_up_s if self._amplifier is not None else 0.0,
            volume=body.volume if body.volume is not None else self._default_volume,
            amplifier=self._amplifier,
            log=self._log,
            handed=[] if self._keep_handed else None,
            created=now,
        )
        # Slots already past when the command came are not waited for.
        session.next_slot = max(0, math.floor(_slot_of(body, now)))
        self.sessions[body.session_id] = session
        self._log.info(
            "live session %s: %s, first sound %s at a delay of %d ms, until %s at the latest",
            body.session_id, session.describe(), session.due(session.next_slot).isoformat(),
            body.delay_ms, body.ends_by.isoformat(timespec="seconds"),
        )
        self._player.claim(session)
        session.start(self._runner)
        return session

    def ended_before(self, session_id: str) -> bool:
        """Whether this session has aired here and ended (a start for it is a replay)."""
        return session_id in self._ended_at

    def frame(self, topic: str, payload: bytes) -> None:
        """Check a payload from a live topic and buffer its packets (the worker's side)."""
        try:
            frame = frames.decode(payload)
        except frames.FrameError as exc:
            self.refused += 1
            self._refusals.warning(
                "payloads on live topics that are not frames",
                "dropped a payload on %s: %s", topic, exc,
            )
            return
        session = self.sessions.get(frame.session)
        if session is None:
            self.refused += 1
            if frame.session not in self._ended_at:
                self._refusals.warning(
                    "live frames of no session on this cluster",
                    "dropped a live frame on %s: session %s was not started here (forged, "
                    "replayed, or for other clusters)", topic, frame.session,
                )
            return
        if not frame.verify(self._keys()):
            self.refused += 1
            session.forged_frames += 1
            self._refusals.warning(
                "live frames with a bad signature",
                "refused a live frame on %s for session %s: not signed by the controller key "
                "this cluster trusts. Nothing of it was played.", topic, frame.session,
            )
            return
        why = session.take(frame, self._clock.now())
        if why is not None:
            self.refused += 1
            self._refusals.warning(
                "live frames out of their session", "dropped a live frame on %s: %s", topic, why
            )

    def stop(self, session_id: str | None, reason: str) -> int:
        """Stop one session (or all): how many were live."""
        stopped = 0
        for sid, session in list(self.sessions.items()):
            if session_id is None or sid == session_id:
                session.stop("interrupted", reason)
                stopped += 1
        return stopped

    def ended(self, session: LiveSession) -> None:
        """A session's thread has ended (on the worker)."""
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]
            self._ended_at[session.session_id] = self._clock.now()

    def on_air(self) -> LiveSession | None:
        for session in self.sessions.values():
            if session.granted and session.revoked is None:
                return session
        return None

    def close(self, timeout: float = 5.0) -> None:
        sessions = list(self.sessions.values())
        for session in sessions:
            session.stop("interrupted", "the agent was shut down during the live session")
        for session in sessions:
            session.join(timeout)

    def _forget(self, now: datetime) -> None:
        for sid, at in list(self._ended_at.items()):
            if now - at > REMEMBER_ENDED:
                del self._ended_at[sid]
