"""Running the web app inside the controller process: uvicorn on its own thread.

`start_web(controller, config)` builds the urgent service on the running controller's
parts (fleet, store, content store, distributor, clock), the user directory and the app,
and serves it, over HTTPS when the config gives a certificate and key; `WebServer.stop()`
ends it. Signals stay with the controller's main thread (uvicorn installs no handlers off
the main thread). uvicorn's own reading of X-Forwarded-* is off: the app believes them
only from `web.trusted_proxies` (controller.web.proxies).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import uvicorn
from fastapi import FastAPI

from controller.cap import CapFolder, CapIntake
from controller.content import audio_folder
from controller.metrics import SignIns, readiness, registry_for
from controller.tts import TextToSpeech, speech_for
from controller.urgent import UrgentService, service_for
from controller.users import UserDirectory
from controller.web.app import create_app
from controller.web.context import WebContext
from controller.web.proxies import Network
from controller.web.security import StoredSessions

log = logging.getLogger(__name__)


class TlsFilesError(OSError):
    """The configured certificate or key cannot be used; the message says which and why."""


def check_tls(cert: Path, key: Path) -> None:
    """Load the certificate and key as the server will, to refuse a bad pair at start with
    a message naming the files (uvicorn would fail on its thread, less clearly)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise TlsFilesError(
            f"web.tls_cert_file/tls_key_file: {exc.filename or cert} does not exist"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsFilesError(
            f"web.tls_cert_file {cert} with web.tls_key_file {key}: cannot be used ({exc}); "
            "they must be PEM files, the key the certificate's own (docs/operations.md, HTTPS)"
        ) from None


class WebServer:
    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        *,
        cap_folder: CapFolder | None = None,
        cap: CapIntake | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.app = app
        self._cap_folder = cap_folder
        self._cap = cap  # airs held CAP alerts and repeats when due
        cert, key = tls if tls is not None else (None, None)
        self._server = uvicorn.Server(
            # log_config None: uvicorn's lines go through the controller's own handler
            # (protocol/logs.py: text or JSON, the time with its zone).
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                           log_config=None,
                           lifespan="off", proxy_headers=False,
                           ssl_certfile=cert, ssl_keyfile=key)
        )
        self._thread: threading.Thread | None = None
        self._leading = False
        self.host, self.port = host, port
        self.scheme = "https" if tls is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0, *, lead: bool = True) -> None:
        """Serve; lead: also start the leader's part (lead() later, on a standby)."""
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise OSError(f"the web app could not listen on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                raise OSError(f"the web app did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        log.info("web app and API on %s", self.url)
        if lead:
            self.lead()

    def lead(self) -> None:
        """Start what only the leading controller does here: CAP alerts held or repeated
        aired when due, the CAP folder watched (controller/leadership.py)."""
        if self._leading:
            return
        self._leading = True
        if self._cap is not None:
            self._cap.start()
        if self._cap_folder is not None:
            self._cap_folder.start()

    def stop(self) -> None:
        if self._leading and self._cap_folder is not None:
            self._cap_folder.stop()
        if self._leading and self._cap is not None:
            self._cap.stop()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


def build_context(
    controller: Any,
    users_file: Path,
    work_dir: Path,
    *,
    tz: ZoneInfo,
    tts: TextToSpeech | None = None,
    secure_cookies: bool = False,
    trusted_proxies: Sequence[Network] = (),
    session_clock: Callable[[], float] = time.time,
) -> WebContext:
    """The web app's context on a controller.main.Controller; its sessions are kept in the
    controller's store (wall-clock `session_clock`). tts: the controller's speech
    settings (controller.tts.speech_for) if not given."""
    if tts is None:
        tts = speech_for(controller.settings.speech)
    service: UrgentService = service_for(controller, tts, work_dir / "announcements")
    ctx = WebContext(
        service=service,
        users=UserDirectory(users_file),
        tz=tz,
        work_dir=work_dir,
        approvals=getattr(controller, "approvals", None),
        playlists=lambda: controller.playlists,
        secure_cookies=secure_cookies,
        trusted_proxies=trusted_proxies,
        sessions=StoredSessions(controller.store, clock=session_clock),
        enrolment=getattr(controller, "enrolment", None),
        broker_down=_broker_down(controller),
        microphones=_microphones(controller, service),
        audio_dir=audio_folder(controller.settings.playlist_paths),
        library=getattr(controller, "library", None),
        target_lufs=controller.settings.audio.target_lufs,
        leadership=getattr(controller, "leadership", None),
    )
    if hasattr(controller, "broker_state"):  # a running controller.main.Controller
        refusals = ctx.refusals
        ctx.metrics = registry_for(controller, lambda: SignIns(
            refusals.signed_in, refusals.wrong, refusals.limited
        ))
        ctx.ready = lambda: readiness(controller)
    return ctx


def _broker_down(controller: Any) -> Callable[[], datetime | None]:
    """Since when the controller's broker is unreachable, for the pages' banner; a
    standby does not connect (the leader does), so it has nothing to say."""
    state = getattr(controller, "broker_state", _Connected())
    leadership = getattr(controller, "leadership", None)
    if leadership is None:
        return state.down_since
    return lambda: state.down_since() if leadership.is_leader else None


class _Connected:
    """A controller without a broker state (a test's): always connected."""

    def down_since(self) -> datetime | None:
        return None


def _microphones(controller: Any, service: UrgentService) -> Any:
    """The web app's live sessions, over the controller's live desk (if it has one)."""
    desk = getattr(controller, "live", None)
    if desk is None:
        return None
    from controller.microphone import MicrophoneDesk

    return MicrophoneDesk(service, desk)


def start_web(
    controller: Any, config: Any, *, tts: TextToSpeech | None = None, lead: bool = True
) -> WebServer:
    """Serve the web app for a controller, as configured (controller.config.WebConfig);
    lead False on a standby (WebServer.lead() when it takes the leadership)."""
    if config.tls is not None:
        check_tls(*config.tls)
    ctx = build_context(
        controller, config.users_file, config.work_dir, tz=controller.settings.timezone,
        tts=tts, secure_cookies=config.secure_cookies,
        trusted_proxies=config.proxy_networks,
    )
    ctx.map_tiles, ctx.map_attribution = config.map_tiles, config.map_attribution
    folder = None
    if config.cap is not None:
        ctx.cap = CapIntake(ctx.service, config.cap)
        if config.cap.watch_dir is not None:
            folder = CapFolder(ctx.cap, config.cap.watch_dir, controller.fleet.province.id)
    server = WebServer(create_app(ctx), config.listen, config.port, cap_folder=folder,
                       cap=ctx.cap, tls=config.tls)
    server.start(lead=lead)
    return server
