"""Speaking live from the web app ("Phát trực tiếp"): a signed-in user's microphone
carried to the clusters within their scope, as it is spoken.

The browser records the microphone (MediaRecorder: WebM/Opus, or Ogg) and sends it a
piece at a time (`feed`, numbered; docs/web.md); the pieces go, in order, into one
ffmpeg (controller/ffmpeg.py `LiveEncoding`, FED) that levels and encodes them as any
live source, and the live desk (controller/live_desk.py) carries the session like a
rebroadcast. It ends by the user's stop, a manager's cut, GRACE_S without a piece (the
page was closed or the connection lost), or `max_s`, whichever comes first; the
clusters then end it cleanly (the last frame). Starting and stopping are audited like
an urgent announcement (`live-start`, `live-stop`, with the targets, the clusters and
why it ended).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.ffmpeg import FED, LiveEncoding
from controller.live import LivePlan, chain_for
from controller.live_desk import LiveDesk, LiveView
from controller.urgent import Principal, UrgentError, UrgentService
from protocol.messages import Level

log = logging.getLogger(__name__)

#: Without a piece of audio this long, the page is taken to be gone and the session ends.
GRACE_S = 5.0
#: The longest a piece may be (a quarter of a second of WebM/Opus is a few KB).
MAX_PIECE_BYTES = 256 * 1024
#: Pieces that may wait for one missing before it (out of order over the network).
MAX_WAITING = 16


class LiveNotFoundError(UrgentError):
    status = 404


@dataclass
class Microphone:
    """One user's live session: its encoder fed in order, and when it last heard."""

    session_id: str
    user: str
    targets: list[str]
    clusters: list[str]
    level: Level
    title: str
    encoding: LiveEncoding
    stop: Callable[[], None]
    next_seq: int = 0
    heard_at: float = field(default_factory=time.monotonic)
    waiting: dict[int, bytes] = field(default_factory=dict)
    ended: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class MicrophoneDesk:
    def __init__(
        self,
        service: UrgentService,
        desk: LiveDesk,
        *,
        max_s: float = 1800.0,
        grace_s: float = GRACE_S,
    ) -> None:
        self._service = service
        self._desk = desk
        self.max_s = max_s
        self.grace_s = grace_s
        self._lock = threading.Lock()
        self._open: dict[str, Microphone] = {}
        self._watch = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- a user's session -----------------------------------------------------------------

    def start(self, who: Principal, targets: Sequence[str], level: Level,
              title: str = "") -> Microphone:  # fmt: skip
        """Start speaking to the targets (all within the user's scope); audited."""
        clusters = self._service.authorize(who, targets)
        settings = self._desk.settings
        encoding = LiveEncoding(
            FED, chain_for(settings), bitrate_kbps=settings.bitrate_kbps,
            application="voip", what=f"the microphone of {who.name}",
        )  # fmt: skip
        title = title.strip() or f"Phát trực tiếp: {who.name}"
        plan = LivePlan(
            bulletin=title[:200], inputs=[FED], clusters=clusters, source="microphone",
            level=level, duration_s=self.max_s,
        )  # fmt: skip
        broadcast = self._desk.start(plan, by=who.name, open_source=lambda _source: encoding)
        mic = Microphone(
            session_id=broadcast.session_id, user=who.name, targets=list(targets),
            clusters=clusters, level=level, title=title, encoding=encoding,
            stop=broadcast.stop,
        )  # fmt: skip
        with self._lock:
            self._open[mic.session_id] = mic
        self._service.audit.record(
            at=self._service.now(), user=who.name, action="live-start", subject=mic.session_id,
            level=level, title=title, targets=list(targets), clusters=clusters,
            detail=f"source=web max_s={self.max_s:g}",
        )  # fmt: skip
        self._ensure_watcher()
        log.info("live session %s: %s speaks to %d clusters (%s)", mic.session_id, who.name,
                 len(clusters), level)  # fmt: skip
        return mic

    def feed(self, who: Principal, session_id: str, seq: int, data: bytes) -> None:
        """Piece seq (from 0) of the user's recording; pieces are put in order."""
        mic = self._mine(who, session_id)
        if len(data) > MAX_PIECE_BYTES:
            raise UrgentError(f"a piece of {len(data)} bytes; at most {MAX_PIECE_BYTES}")
        with mic.lock:
            if mic.ended is not None:
                raise LiveNotFoundError(f"the live session has ended: {mic.ended}")
            mic.heard_at = time.monotonic()
            if seq < mic.next_seq or seq in mic.waiting:
                return  # sent again: already taken
            if seq - mic.next_seq > MAX_WAITING:
                raise UrgentError(f"piece {seq} is too far ahead of {mic.next_seq}")
            mic.waiting[seq] = data
            try:
                while mic.next_seq in mic.waiting:
                    mic.encoding.feed(mic.waiting.pop(mic.next_seq))
                    mic.next_seq += 1
            except OSError as exc:
                self._end(mic, who.name, f"the encoder stopped: {exc}")
                raise UrgentError("the live session's encoder stopped") from None

    def stop(self, who: Principal, session_id: str) -> None:
        """The user's own stop, or a manager's cut (any live session in their reach)."""
        with self._lock:
            mic = self._open.get(session_id)
        if mic is not None and mic.user == who.name:
            self._end(mic, who.name, "stopped")
            return
        if mic is not None and self._may_cut(who, mic.clusters):
            self._end(mic, who.name, f"cut by {who.name}", cut=True)
            return
        views = {v.session_id: v for v in self._desk.sessions()}
        view = views.get(session_id)
        if view is None or not self._may_cut(who, view.clusters):
            raise LiveNotFoundError(f"no live session {session_id} you may stop")
        self._desk.cut(session_id)
        self._service.audit.record(
            at=self._service.now(), user=who.name, action="live-stop", subject=session_id,
            level=view.level, title=view.bulletin, clusters=list(view.clusters),
            detail=f"cut by {who.name}",
        )  # fmt: skip

    def on_air(self, who: Principal) -> list[LiveView]:
        """The live sessions that reach into this user's area (who is live where)."""
        reach = self._service.reach(who)
        return [v for v in self._desk.sessions() if reach.intersection(v.clusters)]

    def may_cut(self, who: Principal, view: LiveView) -> bool:
        return view.by == who.name or self._may_cut(who, view.clusters)

    def close(self) -> None:
        self._watch.set()
        with self._lock:
            mics = list(self._open.values())
        for mic in mics:
            self._end(mic, "controller", "the controller stopped", cut=True)

    # --- inside ---------------------------------------------------------------------------

    def _may_cut(self, who: Principal, clusters: Sequence[str]) -> bool:
        return who.role == "manager" and self._service.may_see(who, clusters)

    def _mine(self, who: Principal, session_id: str) -> Microphone:
        with self._lock:
            mic = self._open.get(session_id)
        if mic is None or mic.user != who.name:
            raise LiveNotFoundError(f"no live session {session_id} of yours")
        return mic

    def _end(self, mic: Microphone, by: str, why: str, *, cut: bool = False) -> None:
        """End a microphone: what the encoder holds is encoded and sent, then the last
        frame (cut: at once)."""
        with mic.lock:
            if mic.ended is not None:
                return
            mic.ended = why
        mic.encoding.end_input()
        if cut:
            mic.stop()
        with self._lock:
            self._open.pop(mic.session_id, None)
        self._service.audit.record(
            at=self._service.now(), user=by, action="live-stop", subject=mic.session_id,
            level=mic.level, title=mic.title, targets=mic.targets, clusters=mic.clusters,
            detail=why,
        )  # fmt: skip
        log.info("live session %s of %s ended: %s", mic.session_id, mic.user, why)

    def _ensure_watcher(self) -> None:
        with self._lock:
            if self._watcher is not None and self._watcher.is_alive():
                return
            self._watcher = threading.Thread(target=self._watching, name="microphones",
                                             daemon=True)  # fmt: skip
            self._watcher.start()

    def _watching(self) -> None:
        while not self._watch.wait(0.5):
            with self._lock:
                mics = list(self._open.values())
                if not mics:
                    self._watcher = None
                    return
            now = time.monotonic()
            for mic in mics:
                if now - mic.heard_at > self.grace_s:
                    self._end(mic, mic.user, f"no audio from the page for {self.grace_s:g} s "
                              "(closed, or the connection was lost)")  # fmt: skip


def view_json(view: LiveView, may_cut: bool) -> dict[str, Any]:
    return {
        "session_id": view.session_id, "bulletin": view.bulletin, "source": view.source,
        "level": view.level, "clusters": list(view.clusters), "by": view.by,
        "started_at": view.started_at.isoformat(), "ends_by": view.ends_by.isoformat(),
        "may_cut": may_cut,
    }
