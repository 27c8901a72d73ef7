"""Dispatch: a due occurrence of a programme becomes a play on its clusters, or a recorded miss.

Called by the scheduler `lead_time` before the start (at once, if the start is already
closer), and by its sweep for occurrences whose latest start has passed. In order:
1. an occurrence already recorded (sent or missed), or being sent by another thread
   right now, is left alone: no double plays;
2. past its latest start (start + lateness) → recorded as missed, with the reason: not
   approved in time, the controller was not running, or it could not be sent;
3. a programme that needs approval and has none for its current content → not sent;
   the scheduler tries again until it is approved or too late (then missed);
4. targets are resolved against the fleet as it is now (a merged commune's clusters
   answer to the new commune), audio is prepared (cached) for the audio profile of each
   of their clusters, the play is sent (one per profile, when they differ:
   controller.distribution.per_profile), and the occurrence is recorded as sent.
   Sending before recording means a crash in between sends the same play id again
   after a restart, which agents drop as a duplicate. The same holds across controllers
   (controller/leadership.py): the play id is the occurrence's (programme@start), so a
   new leader sending again what the old one sent but had not recorded is a duplicate
   for the agents; nothing is sent by a controller that no longer leads (`may_act`,
   asked before anything goes out).
   A rebroadcast programme is handed to the live desk (controller/live_desk.py), which
   carries the stream live from its start; it is recorded as sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from controller.distribution import PlaySpec, per_profile
from controller.live import LivePlan
from controller.schedule import Occurrence, Outcome
from controller.store import Store
from protocol.clock import Clock

if TYPE_CHECKING:
    from controller.audio import PreparedAudio
    from controller.fleet import Fleet
    from controller.playlist import Playlists, Programme, Rebroadcast

log = logging.getLogger(__name__)


class PlaySender(Protocol):
    """What the dispatcher needs from controller.distribution.Distributor."""

    def send_play(self, spec: PlaySpec) -> object: ...


class AudioPreparer(Protocol):
    """What the dispatcher needs from controller.audio.AudioLibrary."""

    def prepare(
        self,
        sources: list[Path],
        intro: Path | None = None,
        outro: Path | None = None,
        profile: str = ...,
    ) -> PreparedAudio: ...


class LiveStarter(Protocol):
    """What the dispatcher needs from controller.live_desk.LiveDesk."""

    def schedule(self, key: str, plan: LivePlan, start_at: datetime) -> None: ...


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        distributor: PlaySender,
        library: AudioPreparer,
        clock: Clock,
        state: Callable[[], tuple[Playlists, Fleet]],
        is_approved: Callable[[Programme], bool],
        tz: tzinfo = UTC,
        live: LiveStarter | None = None,
        may_act: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        self._distributor = distributor
        self._library = library
        self._clock = clock
        self._state = state
        self._is_approved = is_approved
        self._tz = tz
        self._live = live
        self._may_act = may_act
        self._busy_lock = threading.Lock()
        self._busy: set[str] = set()

    def already_dealt_with(self, occ: Occurrence) -> bool:
        with self._busy_lock:
            if occ.play_id in self._busy:
                return True
        return self._store.dispatches.outcome(occ.programme, occ.start) is not None

    def _when(self, at: datetime) -> str:
        return at.astimezone(self._tz).strftime("%Y-%m-%d %H:%M:%S %Z")

    def _missed(self, occ: Occurrence, reason: str) -> Outcome:
        now = self._clock.now()
        if self._store.dispatches.claim(occ.programme, occ.start, "missed", reason, now):
            log.warning("missed %s: %s", occ.play_id, reason)
            return "missed"
        return "skipped"

    def prepare(self, programme: Programme, profile: str) -> list[PreparedAudio]:
        """The programme's bulletins prepared for clusters of this audio profile."""
        return [
            self._library.prepare(list(b.files), intro=b.intro, outro=b.outro, profile=profile)
            for b in programme.bulletins
            if b.rebroadcast is None
        ]

    def __call__(self, occ: Occurrence, *, down_since: datetime | None = None) -> Outcome:
        with self._busy_lock:
            if occ.play_id in self._busy:
                return "skipped"  # another thread is dealing with it right now
            self._busy.add(occ.play_id)
        try:
            return self._dispatch(occ, down_since)
        finally:
            with self._busy_lock:
                self._busy.discard(occ.play_id)

    def _late_reason(self, occ: Occurrence, programme: Programme, down_since: datetime | None,
                     now: datetime) -> str:
        latest = self._when(occ.latest_start)
        if programme.requires_approval and not self._is_approved(programme):
            return (
                f"not approved in time: it needed approval before its latest start {latest} "
                f"(loa-controller approve {programme.id})"
            )
        if down_since is not None:
            return (
                f"the controller was not running from about {self._when(down_since)} to "
                f"{self._when(now)}, past its latest start {latest}"
            )
        return (
            f"the controller could not send it before its latest start {latest} (it was "
            "not running, not connected, or sending failed: see the controller's log)"
        )

    def _dispatch(self, occ: Occurrence, down_since: datetime | None) -> Outcome:
        if not self._may_act():
            log.info("%s not dispatched: this controller no longer leads; the leader "
                     "dispatches it", occ.play_id)
            return "skipped"
        if self._store.dispatches.outcome(occ.programme, occ.start) is not None:
            return "skipped"
        now = self._clock.now()
        playlists, fleet = self._state()
        programme = playlists.programmes.get(occ.programme)
        if programme is None:
            log.info("%s was removed from the playlists; not sent", occ.play_id)
            return "skipped"
        if now > occ.latest_start:
            return self._missed(occ, self._late_reason(occ, programme, down_since, now))
        if programme.requires_approval and not self._is_approved(programme):
            log.warning(
                "%s needs approval before it can air (loa-controller approve %s); waiting "
                "until %s at the latest", occ.play_id, programme.id, self._when(occ.latest_start),
            )
            return "waiting"
        try:
            clusters = fleet.resolve(programme.targets, programme.exclude)
        except (KeyError, ValueError) as exc:
            return self._missed(occ, f"targets no longer resolve: {exc}")
        if not clusters:
            return self._missed(occ, "its targets contain no cluster")
        rebroadcast = programme.rebroadcast()
        if rebroadcast is not None:
            return self._rebroadcast(occ, programme, rebroadcast, clusters, now)
        by_profile = fleet.by_profile(clusters)
        try:  # every profile's audio before anything is sent: all of the play, or none
            items = {profile: self.prepare(programme, profile) for profile in by_profile}
        except ValueError as exc:  # AudioError: the reason names the file
            return self._missed(occ, f"audio refused: {exc}")
        volume = next((b.volume for b in programme.bulletins if b.volume is not None), None)
        play = PlaySpec(
            play_id=occ.play_id,
            bulletin=programme.name,
            level=programme.level,
            start_at=occ.start,
            latest_start=occ.latest_start,
            items=[],
            clusters=clusters,
            programme=programme.id,
            volume=volume,
            replay_if_interrupted=programme.replay_if_interrupted,
        )
        for spec in per_profile(play, by_profile, items):
            if not self._may_act():  # stepped down while preparing: the next leader sends
                return "skipped"
            self._distributor.send_play(spec)
        self._store.dispatches.claim(occ.programme, occ.start, "sent", None, now)
        return "sent"

    def _rebroadcast(self, occ: Occurrence, programme: Programme, rebroadcast: Rebroadcast,
                     clusters: list[str], now: datetime) -> Outcome:  # fmt: skip
        if self._live is None:
            return self._missed(occ, "this controller carries no live sessions")
        bulletin = programme.bulletins[0]
        self._live.schedule(occ.play_id, LivePlan(
            bulletin=bulletin.title or programme.name,
            inputs=rebroadcast.inputs(),
            clusters=clusters,
            source="rebroadcast",
            level=programme.level,
            programme=programme.id,
            duration_s=rebroadcast.duration.total_seconds(),
            fallback=rebroadcast.fallback,
            volume=bulletin.volume,
        ), occ.start)  # fmt: skip
        log.info("%s: rebroadcast of %s handed to the live desk for %s", occ.play_id,
                 rebroadcast.url, self._when(occ.start))  # fmt: skip
        self._store.dispatches.claim(occ.programme, occ.start, "sent", None, now)
        return "sent"

