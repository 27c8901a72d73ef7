"""Dispatch: a due occurrence of a programme becomes a play on its clusters, or a recorded miss.

Called by the scheduler `lead_time` before the start. In order:
1. an occurrence already recorded (sent or missed) is left alone: no double plays;
2. past its latest start (start + lateness) → recorded as missed, with the reason;
3. a programme that needs approval and has none → not sent; retried at each re-plan
   until approved or too late (then missed: "not approved in time");
4. targets are resolved against the fleet as it is now (a merged commune's clusters
   answer to the new commune), audio is prepared (cached), the play is sent, and the
   occurrence is recorded as sent. Sending before recording means a crash in between
   sends the same play id again after a restart, which agents drop as a duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from controller.distribution import Distributor, PlaySpec
from controller.schedule import Occurrence
from controller.store import Store
from protocol.clock import Clock

if TYPE_CHECKING:
    from controller.audio import ContentStore, PreparedAudio
    from controller.fleet import Fleet
    from controller.playlist import Playlists, Programme

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        distributor: Distributor,
        content: ContentStore,
        clock: Clock,
        state: Callable[[], tuple[Playlists, Fleet]],
        is_approved: Callable[[str], bool],
    ) -> None:
        self._store = store
        self._distributor = distributor
        self._content = content
        self._clock = clock
        self._state = state
        self._is_approved = is_approved

    def already_dealt_with(self, occ: Occurrence) -> bool:
        return self._store.dispatched(occ.programme, occ.start) is not None

    def _missed(self, occ: Occurrence, reason: str) -> None:
        now = self._clock.now()
        if self._store.claim_dispatch(occ.programme, occ.start, "missed", reason, now):
            log.warning("missed %s: %s", occ.play_id, reason)

    def prepare(self, programme: Programme) -> list[PreparedAudio]:
        return [
            self._content.prepare(list(b.files), intro=b.intro, outro=b.outro)
            for b in programme.bulletins
        ]

    def __call__(self, occ: Occurrence) -> None:
        if self.already_dealt_with(occ):
            return
        now = self._clock.now()
        playlists, fleet = self._state()
        programme = playlists.programmes.get(occ.programme)
        if programme is None:
            log.info("%s was removed from the playlists; not sent", occ.play_id)
            return
        if now > occ.latest_start:
            self._missed(
                occ,
                f"the controller could not send it before its latest start "
                f"{occ.latest_start.isoformat(timespec='seconds')} (it was not running or "
                "not connected)",
            )
            return
        if programme.requires_approval and not self._is_approved(programme.id):
            log.warning("%s needs approval before it can air; waiting", occ.play_id)
            return
        try:
            clusters = fleet.resolve(programme.targets, programme.exclude)
        except (KeyError, ValueError) as exc:
            self._missed(occ, f"targets no longer resolve: {exc}")
            return
        if not clusters:
            self._missed(occ, "its targets contain no cluster")
            return
        try:
            items = self.prepare(programme)
        except ValueError as exc:  # AudioError: the reason names the file
            self._missed(occ, f"audio refused: {exc}")
            return
        volume = next((b.volume for b in programme.bulletins if b.volume is not None), None)
        self._distributor.send_play(
            PlaySpec(
                play_id=occ.play_id,
                bulletin=programme.name,
                level=programme.level,
                start_at=occ.start,
                latest_start=occ.latest_start,
                items=items,
                clusters=clusters,
                programme=programme.id,
                volume=volume,
            )
        )
        self._store.claim_dispatch(occ.programme, occ.start, "sent", None, now)
