"""Live sessions from the controller: a rebroadcast or a microphone carried to the clusters
as it comes (docs/protocol.md, Live audio).

`LiveBroadcast.run` signs a `live` command for the targeted clusters (covered by whole
groups, as a play), then pulls the source through ffmpeg (controller/ffmpeg.py
`LiveEncoding`: the input, a live loudness control, the audio profile's chain as one
streaming pass, Opus in packets of 20 ms), numbers the packets on the session's
timeline and publishes them in signed frames on the same groups' `live` topics.

The timeline follows the wall clock, not the source: a packet takes the next slot unless
the source has fallen more than MAX_LAG_S behind (after a stall, or a switch to a
backup), when the slots in between are left out (silence on the clusters); a source
that runs ahead (an Icecast server's burst on connecting) is held back to MAX_LEAD_S
ahead. So the clusters' delay never grows and never runs dry.

When the source fails (ffmpeg ends with an error, a network stream ends, or no audio
comes for `stall_s`), the next input is tried at once (backup URLs), within a few
seconds; when none works the programme's fallback airs (a file, once) or the session
waits in silence and tries the inputs again, until its end. The start command goes out
again every RESTART_EVERY_S, so that clusters coming online during the session join it
(an agent takes a session it knows once). The end is a last frame flagged as such.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol

from controller import audio_chain
from controller.ffmpeg import FfmpegError, LiveEncoding
from protocol import live as frames
from protocol import topics
from protocol.clock import Clock
from protocol.messages import Address, Level, LiveBody, LiveSource
from protocol.ogg import OggError, OggReader
from protocol.signing import Signer

log = logging.getLogger(__name__)

#: The live loudness control before the profile's chain: dynaudnorm with short frames
#: (about a second of look-ahead, a gain that follows the programme within seconds), so
#: a station that comes in quiet or loud airs at the target.
LEVELLER = "dynaudnorm=f=150:g=15:p=0.7:m=8"
#: An input's first packet takes the slot this far ahead of the wall clock, so that the
#: jitter of its source (a browser's pieces, an encoder's bursts) is absorbed...
PLACE_AHEAD_S = 0.3
#: ... and it may fall this far behind the wall clock before slots are left out.
MAX_LAG_S = 0.5
#: ... and run this far ahead of it before it is held back.
MAX_LEAD_S = 1.0
#: The start command is sent again this often, for clusters joining late.
RESTART_EVERY_S = 30.0
#: After every input failed (and the fallback aired, if any), they are tried again this
#: much later.
RETRY_AFTER_S = 5.0
#: How long a session without a duration may run (a microphone): ends_by on the clusters.
DEFAULT_MAX_S = 3600.0

Outcome = Literal["ended", "failed", "stopped", "over"]


class EncodedStream(Protocol):
    """A source being encoded: controller.ffmpeg.LiveEncoding."""

    def read(self, timeout: float) -> bytes | None: ...
    def failure(self) -> str | None: ...
    def close(self) -> None: ...


OpenSource = Callable[[str], EncodedStream]


class Publisher(Protocol):
    """What a live session needs of the link (protocol.mqtt.Link)."""

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None: ...


def is_stream(source: str) -> bool:
    """A network stream (its end is a failure), as against a file or stdin (its end is
    the end of the programme)."""
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", source))


@dataclass(frozen=True)
class LivePlan:
    """What to carry where: inputs in order (the first, then its backups)."""

    bulletin: str
    inputs: Sequence[str]
    clusters: Sequence[str]
    source: LiveSource = "rebroadcast"
    level: Level = "normal"
    programme: str | None = None
    duration_s: float | None = None  # None: until the input ends, or stop
    fallback: Path | None = None  # aired once when every input failed; None: silence
    volume: int | None = None


@dataclass(frozen=True)
class LiveSettings:
    delay_ms: int = 1500
    frame_packets: int = 40  # 0.8 s a frame: its header and signature cost 7 % at 24 kb/s
    stall_s: float = 3.0  # no audio this long once it came: the input has failed
    first_audio_s: float = 8.0  # ... or this long after opening it (connect, probe, look-ahead)
    idle_end_s: float = 10.0
    lead_s: float = 0.2
    profile: str = "horn"
    bitrate_kbps: int = 24
    target_lufs: float = -16.0
    true_peak_dbtp: float = -1.0
    command_ttl: timedelta = timedelta(minutes=10)


@dataclass
class InputReport:
    source: str
    seconds: float = 0.0
    outcome: str = ""


@dataclass
class LiveReport:
    """What a session sent: per input tried, its seconds and how it ended."""

    session_id: str
    started_at: datetime
    seconds: float = 0.0
    frames: int = 0
    wire_bytes: int = 0  # frame payloads as published (per topic)
    inputs: list[InputReport] = field(default_factory=list)
    fallback: str | None = None


def chain_for(settings: LiveSettings) -> str:
    """The filter graph a live source goes through: the leveller, then the profile."""
    chosen = audio_chain.profile(settings.profile)
    return LEVELLER + "," + audio_chain.stream_graph(
        chosen, sample_rate=48000, target_lufs=settings.target_lufs,
        true_peak_dbtp=settings.true_peak_dbtp,
    )  # fmt: skip


def ffmpeg_sources(settings: LiveSettings) -> OpenSource:
    """Sources opened with ffmpeg (controller/ffmpeg.py), through chain_for(settings)."""
    graph = chain_for(settings)
    application = audio_chain.profile(settings.profile).opus_application

    def open_source(source: str) -> EncodedStream:
        return LiveEncoding(
            source, graph, bitrate_kbps=settings.bitrate_kbps, application=application,
            what=source,
        )  # fmt: skip

    return open_source


class LiveBroadcast:
    """One live session, run from start to end by `run` (blocking)."""

    def __init__(
        self,
        plan: LivePlan,
        *,
        link: Publisher,
        signer: Signer,
        cover: Callable[[list[str]], tuple[list[str], list[str]]],
        clock: Clock,
        settings: LiveSettings | None = None,
        open_source: OpenSource | None = None,
        session_id: str | None = None,
        on_frame: Callable[[int, int, float], None] | None = None,
    ) -> None:
        """cover: the fleet's split of clusters into whole groups and leftovers
        (Fleet.cover); on_frame(seq, first slot, monotonic time) after each frame is
        published (the benchmark's capture times)."""
        if not plan.inputs and plan.fallback is None:
            raise ValueError("a live session needs an input (or at least a fallback file)")
        self.plan = plan
        self.settings = settings or LiveSettings()
        self._link = link
        self._signer = signer
        self._clock = clock
        self._open = open_source or ffmpeg_sources(self.settings)
        self._on_frame = on_frame
        groups, leftovers = cover(list(plan.clusters))
        self.to = Address(groups=groups, clusters=leftovers)
        self._topics = [topics.group_topic(g, "live") for g in groups] + [
            topics.cluster_topic(c, "live") for c in leftovers
        ]
        self._command_topics = [topics.group_topic(g, "command") for g in groups] + [
            topics.cluster_topic(c, "command") for c in leftovers
        ]
        now = clock.now()
        origin = now + timedelta(seconds=self.settings.lead_s)
        length = plan.duration_s if plan.duration_s is not None else DEFAULT_MAX_S
        self.body = LiveBody(
            session_id=session_id or uuid.uuid4().hex,
            source=plan.source,
            bulletin=plan.bulletin[:200],
            programme=plan.programme,
            level=plan.level,
            origin=origin,
            delay_ms=self.settings.delay_ms,
            ends_by=origin + timedelta(seconds=length),
            idle_end_s=self.settings.idle_end_s,
            volume=plan.volume,
        )
        self.report = LiveReport(session_id=self.body.session_id, started_at=now)
        self._end_slot = math.ceil(length * 1000 / frames.SLOT_MS)
        self._next_slot = 0
        self._frame: list[bytes] = []
        self._frame_first = 0
        self._seq = 0
        self._last_start = -math.inf
        self._stop = threading.Event()
        self._first_slot: int | None = None  # of the input being carried

    @property
    def session_id(self) -> str:
        return self.body.session_id

    def stop(self) -> None:
        """End the session now (its last frame goes out; what the clusters hold plays)."""
        self._stop.set()

    # --- the session ---------------------------------------------------------------------

    def run(self) -> LiveReport:
        self._send_start()
        log.info(
            "live session %s: %s (%s) to %d clusters as %s, delay %d ms",
            self.session_id, self.plan.bulletin, self.plan.level, len(self.plan.clusters),
            ", ".join(self._topics) or "nobody", self.settings.delay_ms,
        )
        try:
            self._run_inputs()
        finally:
            self._flush()
            self._publish(frames.encode(
                self._signer.sign_raw, self.session_id, self._seq, self._next_slot, [],
                end=True,
            ))  # fmt: skip
            self.report.seconds = self._next_slot * frames.SLOT_MS / 1000
        log.info(
            "live session %s ended: %s", self.session_id,
            "; ".join(f"{i.source}: {i.seconds:.1f} s, {i.outcome}" for i in self.report.inputs),
        )
        return self.report

    def _over(self) -> bool:
        return self._stop.is_set() or self._next_slot >= self._end_slot or (
            self._clock.now() >= self.body.ends_by
        )

    def _run_inputs(self) -> None:
        while not self._over():
            for source in self.plan.inputs:
                outcome = self._relay(source)
                if outcome in ("stopped", "over"):
                    return
                if outcome == "ended":
                    return  # a file or stdin came to its end: so does the programme
                if self._over():
                    return
            if self.plan.fallback is not None and self.report.fallback is None:
                self.report.fallback = str(self.plan.fallback)
                log.warning(
                    "live session %s: no input works; airing the fallback %s",
                    self.session_id, self.plan.fallback,
                )
                outcome = self._relay(str(self.plan.fallback))
                if outcome in ("stopped", "over"):
                    return
            if not self.plan.inputs:
                return
            log.warning(
                "live session %s: no input works; silence, trying again in %g s",
                self.session_id, RETRY_AFTER_S,
            )
            if self._stop.wait(RETRY_AFTER_S):
                return

    def _relay(self, source: str) -> Outcome:
        """Carry one input until it ends, fails, or the session is over."""
        entry = InputReport(source)
        self.report.inputs.append(entry)
        try:
            stream = self._open(source)
        except FfmpegError as exc:
            entry.outcome = f"failed: {exc}"
            log.warning("live session %s: %s", self.session_id, entry.outcome)
            return "failed"
        self._first_slot = None
        try:
            outcome, entry.outcome, _started = self._carry(stream)
            if outcome == "ended" and is_stream(source):  # a station does not end
                outcome, entry.outcome = "failed", "failed: the stream ended"
        finally:
            stream.close()
            self._flush()  # what this input gave goes out now, not with the next one
        if self._first_slot is not None:
            entry.seconds = (self._next_slot - self._first_slot) * frames.SLOT_MS / 1000
        if outcome == "failed":
            log.warning(
                "live session %s: input %s %s; switching to the next", self.session_id,
                source, entry.outcome,
            )
        return outcome

    def _carry(self, stream: EncodedStream) -> tuple[Outcome, str, bool]:
        """(outcome, what happened, whether any audio came) of one input's stream."""
        reader = OggReader()
        last_audio = time.monotonic()
        started = False
        while not self._over():
            if time.monotonic() - self._last_start >= RESTART_EVERY_S:
                self._send_start()
            data = stream.read(0.2)
            if data is None:
                limit = self.settings.stall_s if started else self.settings.first_audio_s
                if time.monotonic() - last_audio > limit:
                    return "failed", f"failed: no audio for {limit:g} s", started
                continue
            if data == b"":
                why = stream.failure()
                return ("failed", f"failed: {why}", started) if why else (
                    "ended", "ended", started
                )
            try:
                packets = list(reader.feed(data))
            except OggError as exc:
                return "failed", f"failed: {exc}", started
            if packets:
                last_audio = time.monotonic()
            for packet in packets:
                if not started:
                    started = True
                    self._first_slot = self._place()
                self._packet(packet.data)
                if self._over():
                    break
        outcome: Outcome = "stopped" if self._stop.is_set() else "over"
        return outcome, outcome, started

    def _wall_slot(self) -> float:
        return (self._clock.now() - self.body.origin).total_seconds() * 1000 / frames.SLOT_MS

    def _place(self) -> int:
        """The slot a new input's first packet takes: the next one, or just ahead of now."""
        wall = math.floor(self._wall_slot() + PLACE_AHEAD_S * 1000 / frames.SLOT_MS)
        if self._next_slot < wall:
            self._flush()
            self._next_slot = wall
        return self._next_slot

    def _packet(self, packet: bytes) -> None:
        wall = self._wall_slot()
        if self._next_slot < wall - MAX_LAG_S * 1000 / frames.SLOT_MS:
            self._flush()  # the source fell behind: leave the slots between out
            self._next_slot = math.floor(wall)
        ahead_s = (self._next_slot - wall) * frames.SLOT_MS / 1000 - MAX_LEAD_S
        if ahead_s > 0:
            self._stop.wait(ahead_s)  # the source runs ahead: hold it back
        if not self._frame:
            self._frame_first = self._next_slot
        self._frame.append(packet)
        self._next_slot += 1
        if len(self._frame) >= self.settings.frame_packets:
            self._flush()

    def _flush(self) -> None:
        if not self._frame:
            return
        payload = frames.encode(
            self._signer.sign_raw, self.session_id, self._seq, self._frame_first, self._frame
        )
        self._publish(payload)
        if self._on_frame is not None:
            self._on_frame(self._seq, self._frame_first, time.monotonic())
        self._seq += 1
        self._frame = []

    def _publish(self, payload: bytes) -> None:
        for topic in self._topics:
            self._link.publish(topic, payload, qos=0)
            self.report.wire_bytes += len(payload)
        self.report.frames += 1

    def _send_start(self) -> None:
        self._last_start = time.monotonic()
        command = self._signer.command(
            self.body, self.to, self._clock.now(), self.settings.command_ttl
        )
        payload = command.to_json()
        for topic in self._command_topics:
            self._link.publish(topic, payload, qos=1)
