"""What the pages and the API work with (`WebContext`), and how a route gets it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request

from controller.approval import Approvals
from controller.playlist import Playlists
from controller.urgent import UrgentService
from controller.users import UserDirectory
from controller.web.i18n import Lang, t
from controller.web.limiter import SignInLimiter
from controller.web.proxies import Network
from controller.web.security import Sessions, SessionStore, password_fingerprint
from controller.web.signin import RefusalLog
from controller.web.uploads import Uploads


@dataclass
class WebContext:
    """What the pages and the API work with."""

    service: UrgentService
    users: UserDirectory
    tz: ZoneInfo
    work_dir: Path
    sessions: SessionStore = field(default_factory=Sessions)
    limiter: SignInLimiter = field(default_factory=SignInLimiter)
    refusals: RefusalLog = field(default_factory=RefusalLog)
    approvals: Approvals | None = None
    playlists: Callable[[], Playlists] | None = None
    cap: Any = None  # controller.cap.CapIntake, when configured
    enrolment: Any = None  # controller.enrolment.EnrolmentDesk of the running controller
    microphones: Any = None  # controller.microphone.MicrophoneDesk ("Phát trực tiếp")
    #: Cookies marked Secure even on a request that came over plain HTTP (a proxy not in
    #: trusted_proxies ends TLS); over HTTPS they always are.
    secure_cookies: bool = False
    #: Reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are believed.
    trusted_proxies: Sequence[Network] = ()
    #: Since when the controller cannot reach its broker; None while it can
    #: (controller.broker_state.BrokerState.down_since).
    broker_down: Callable[[], datetime | None] = lambda: None
    #: The controller's metrics (controller.metrics.registry_for), for /metrics.
    metrics: Any = None
    #: The readiness checks (controller.metrics.readiness), for /readyz.
    ready: Callable[[], dict[str, str | None]] | None = None
    #: The fleet map's tile server (a URL template with {z}/{x}/{y}) and its credit; None:
    #: the map is drawn from the coordinates alone.
    map_tiles: str | None = None
    map_attribution: str = ""
    #: The playlists' audio folder, where the content page puts uploaded audio (None:
    #: no uploads), the controller's audio library, and the loudness target.
    audio_dir: Path | None = None
    library: Any = None  # controller.audio.AudioLibrary
    target_lufs: float | None = -16.0
    #: Which controller leads (controller.leadership.Leadership); None: this one alone.
    #: On a standby, what would publish is forwarded to the leader (web/standby.py).
    leadership: Any = None
    uploads: Uploads = field(init=False)

    def __post_init__(self) -> None:
        self.uploads = Uploads(self.work_dir / "uploads")
        self.sessions.fingerprint_of = self.fingerprint_of

    def fingerprint_of(self, name: str) -> str:
        """What a new session of this user remembers of its password (see session_of)."""
        user = self.users.get(name)
        return password_fingerprint(user.password) if user is not None else ""

    def broker_down_text(self) -> str | None:
        """Since when the broker is unreachable (HH:MM, local), for the pages' banner."""
        since = self.broker_down()
        if since is None:
            return None
        now = datetime.now(self.tz)
        local = since.astimezone(self.tz)
        return local.strftime("%H:%M" if local.date() == now.date() else "%d/%m/%Y %H:%M")

    def standby_banner(self) -> tuple[str, dict[str, str]] | None:
        """On a standby controller, the pages' note (an i18n key and its values): who
        leads, since when (HH:MM); None on the leader or a controller alone."""
        if self.leadership is None or self.leadership.is_leader:
            return None
        view = self.leadership.view()
        if view.leader is None:
            return "no_leader", {}
        return "standby", {"leader": view.leader,
                           "since": view.since.astimezone(self.tz).strftime("%H:%M")}

    def outcome_of(self, play_id: str | None, lang: Lang | None = None) -> str:
        """An announcement's per-cluster states as counts, for the audit log: in a
        language (`đã phát xong: 3, mất kết nối: 1`), or as codes for programs
        (`finished=3 offline=1`, lang None); empty for anything else."""
        if not play_id or not play_id.startswith("urgent-"):
            return ""
        clusters = self.service.progress(play_id, self.service.clusters_of(play_id))
        counts: dict[str, int] = {}
        for p in clusters:
            counts[p.status] = counts.get(p.status, 0) + 1
        if lang is None:
            return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        return ", ".join(f"{t(lang, 'st_' + k)}: {v}" for k, v in sorted(counts.items()))


def context(request: Request) -> WebContext:
    """The app's WebContext (a dependency of every route)."""
    ctx: WebContext = request.app.state.ctx
    return ctx
