"""The web app: the pages commune staff and managers use, and the JSON API (FastAPI).

`create_app(context)` builds the app; `controller.web.server.WebServer` runs it under
uvicorn inside `loa-controller run`. Everything that changes the speakers goes through
controller.urgent.UrgentService, which enforces each user's scope; this module only
signs users in, checks CSRF tokens, and turns the service's answers into pages or JSON.
"""

from __future__ import annotations

import secrets
import shutil
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from controller.approval import Approvals
from controller.playlist import Playlists
from controller.urgent import UrgentService
from controller.users import User, UserDirectory
from controller.web.i18n import LANGS, Lang, t
from controller.web.security import (
    SESSION_COOKIE,
    LoginLimiter,
    Session,
    Sessions,
    SessionStore,
    password_fingerprint,
)

HERE = Path(__file__).resolve().parent
#: The largest audio file accepted from the page or the API.
MAX_UPLOAD_BYTES = 50 * 1024 * 1024


@dataclass
class Uploads:
    """Audio uploaded through the API, waiting to be sent once; each belongs to one user."""

    root: Path
    _owners: dict[str, tuple[str, Path]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def new_path(self, user: str, filename: str) -> tuple[str, Path]:
        upload_id = secrets.token_hex(16)
        folder = self.root / upload_id
        folder.mkdir()
        suffix = Path(filename or "audio").suffix[:10]
        path = folder / f"upload{suffix}"
        with self._lock:
            self._owners[upload_id] = (user, path)
        return upload_id, path

    def discard(self, upload_id: str) -> None:
        """Remove an upload once it has been sent (its prepared audio is in the content store)."""
        with self._lock:
            found = self._owners.pop(upload_id, None)
        if found is not None:
            shutil.rmtree(found[1].parent, ignore_errors=True)

    def path_of(self, user: str, upload_id: str) -> Path | None:
        with self._lock:
            found = self._owners.get(upload_id)
        if found is None or found[0] != user:
            return None
        return found[1]


@dataclass
class WebContext:
    """What the pages and the API work with."""

    service: UrgentService
    users: UserDirectory
    tz: ZoneInfo
    work_dir: Path
    sessions: SessionStore = field(default_factory=Sessions)
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    approvals: Approvals | None = None
    playlists: Callable[[], Playlists] | None = None
    cap: Any = None  # controller.cap.CapIntake, when configured
    secure_cookies: bool = False
    uploads: Uploads = field(init=False)

    def __post_init__(self) -> None:
        self.uploads = Uploads(self.work_dir / "uploads")
        self.sessions.fingerprint_of = self.fingerprint_of

    def fingerprint_of(self, name: str) -> str:
        """What a new session of this user remembers of its password (see session_of)."""
        user = self.users.get(name)
        return password_fingerprint(user.password) if user is not None else ""


# --- per-request helpers ------------------------------------------------------------------


def lang_of(request: Request) -> Lang:
    wanted = request.query_params.get("lang") or request.cookies.get("lang") or "vi"
    return "en" if wanted == "en" else "vi"


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"


def session_of(ctx: WebContext, request: Request) -> tuple[Session, User] | None:
    """The signed-in session and user (cookie or Bearer token), if still valid: the user
    is still in the users file, not disabled, and has the password it signed in with."""
    token = request.cookies.get(SESSION_COOKIE)
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        token = auth[7:].strip()
    session = ctx.sessions.get(token)
    if session is None:
        return None
    user = ctx.users.get(session.user)
    if (
        user is None
        or user.disabled
        or session.fingerprint != password_fingerprint(user.password)
    ):
        ctx.sessions.drop(session.id)
        return None
    return session, user


def by_bearer(request: Request) -> bool:
    return request.headers.get("authorization", "").lower().startswith("bearer ")


def create_app(ctx: WebContext) -> FastAPI:
    from controller.web import api, pages

    app = FastAPI(
        title="Loa controller API",
        version="1",
        description=(
            "Urgent announcements (thông báo khẩn) to speaker clusters, scoped to each "
            "user's part of the fleet tree. Sign in with POST /api/v1/login and send the "
            "token as `Authorization: Bearer <token>`. See docs/web.md."
        ),
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    app.state.ctx = ctx
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["t"] = t
    app.state.templates = templates

    @app.middleware("http")
    async def headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
            "frame-ancestors 'none'; form-action 'self'"
        )
        wanted = request.query_params.get("lang")
        if wanted in LANGS:
            response.set_cookie("lang", wanted, max_age=365 * 86400, samesite="lax")
        return response

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)

    @app.exception_handler(api.ApiError)
    async def api_error(request: Request, exc: api.ApiError) -> JSONResponse:
        return JSONResponse(
            {"error": exc.message, "status": exc.status}, status_code=exc.status,
            headers=exc.headers,
        )

    return app
