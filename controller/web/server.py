"""Running the web app inside the controller process: uvicorn on its own thread.

`start_web(controller, config)` builds the urgent service on the running controller's
parts (fleet, store, content store, distributor, clock), the user directory and the app,
and serves it; `WebServer.stop()` ends it. Signals stay with the controller's main
thread (uvicorn installs no handlers off the main thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import uvicorn
from fastapi import FastAPI

from controller.tts import EspeakNg
from controller.urgent import UrgentService, service_for
from controller.users import UserDirectory
from controller.web.app import WebContext, create_app
from controller.web.security import StoredSessions

if TYPE_CHECKING:
    from controller.cap import CapFolder

log = logging.getLogger(__name__)


class WebServer:
    def __init__(
        self, app: FastAPI, host: str, port: int, *, cap_folder: CapFolder | None = None
    ) -> None:
        self.app = app
        self._cap_folder = cap_folder
        self._server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                           lifespan="off")
        )
        self._thread: threading.Thread | None = None
        self.host, self.port = host, port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
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
        if self._cap_folder is not None:
            self._cap_folder.start()

    def stop(self) -> None:
        if self._cap_folder is not None:
            self._cap_folder.stop()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


def build_context(
    controller: Any,
    users_file: Path,
    work_dir: Path,
    *,
    tz: ZoneInfo,
    voice: str = "vi",
    secure_cookies: bool = False,
    session_clock: Callable[[], float] = time.time,
) -> WebContext:
    """The web app's context on a controller.main.Controller; its sessions are kept in the
    controller's store (wall-clock `session_clock`)."""
    service: UrgentService = service_for(controller, EspeakNg(voice), work_dir / "announcements")
    return WebContext(
        service=service,
        users=UserDirectory(users_file),
        tz=tz,
        work_dir=work_dir,
        approvals=getattr(controller, "approvals", None),
        playlists=lambda: controller.playlists,
        secure_cookies=secure_cookies,
        sessions=StoredSessions(controller.store, clock=session_clock),
    )


def start_web(controller: Any, config: Any) -> WebServer:
    """Serve the web app for a running controller, as configured (controller.config.WebConfig)."""
    ctx = build_context(
        controller, config.users_file, config.work_dir, tz=controller.settings.timezone,
        voice=config.tts_voice, secure_cookies=config.secure_cookies,
    )
    folder = None
    if config.cap is not None:
        from controller.cap import CapFolder, CapIntake

        ctx.cap = CapIntake(ctx.service, config.cap)
        if config.cap.watch_dir is not None:
            folder = CapFolder(ctx.cap, config.cap.watch_dir, controller.fleet.province.id)
    server = WebServer(create_app(ctx), config.listen, config.port, cap_folder=folder)
    server.start()
    return server
