"""The web app: the pages commune staff and managers use, and the JSON API (FastAPI).

`create_app(context)` builds the app; `controller.web.server.WebServer` runs it under
uvicorn inside `loa-controller run`. Everything that changes the speakers goes through
controller.urgent.UrgentService, which enforces each user's scope; the routes only sign
users in, check CSRF tokens, and turn the service's answers into pages or JSON.

Around the routes, outermost first: TrustedProxies (the client's address and scheme,
from X-Forwarded-* only when a configured proxy sends them), SecurityHeaders (CSP and
the like, HSTS when served over TLS, the language cookie), BodyLimits (every body has a
size limit, refused with 413 before it is read whole), StandbyForward (on a standby
controller, sends forwarded to the leader: controller/web/standby.py). All are plain ASGI
middleware: nothing between the server and the routes reads a body or wraps an error.

The package reads top-down: context (what routes work with) and the pieces under it
(security, limiter, signin, uploads, errors, limits, proxies, headers, i18n), then auth
(who is asking), approvals, then the routes (api, listen, pages, health), then this
module, then server.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.web import (
    api,
    audio_files,
    calendar,
    fleet,
    health,
    listen,
    live,
    pages,
    reports,
)
from controller.web.context import WebContext
from controller.web.errors import ApiError, api_lang
from controller.web.headers import SecurityHeaders
from controller.web.i18n import t
from controller.web.limits import BodyLimits, BodyTooLarge, too_large
from controller.web.proxies import TrustedProxies
from controller.web.standby import StandbyForward

HERE = Path(__file__).resolve().parent


def create_app(ctx: WebContext) -> FastAPI:
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

    # Added innermost first: TrustedProxies ends up outermost.
    app.add_middleware(StandbyForward, ctx=ctx)
    app.add_middleware(BodyLimits)
    tiles = urlsplit(ctx.map_tiles.replace("{", "").replace("}", "")) if ctx.map_tiles else None
    app.add_middleware(
        SecurityHeaders, secure_cookies=ctx.secure_cookies,
        img_sources=[f"{tiles.scheme}://{tiles.netloc}"] if tiles else [],
    )
    app.add_middleware(TrustedProxies, proxies=ctx.trusted_proxies)

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(api.router)
    app.include_router(listen.api)
    app.include_router(listen.router)
    app.include_router(live.api)
    app.include_router(live.router)
    app.include_router(pages.router)
    app.include_router(health.router)
    app.include_router(reports.router)
    app.include_router(fleet.router)
    app.include_router(calendar.router)
    app.include_router(audio_files.router)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        lang = api_lang(request.headers.get("accept-language"))
        return JSONResponse(
            {"error": exc.in_(lang), "status": exc.status}, status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, exc: BodyTooLarge) -> Response:
        return too_large(request, exc.limit)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """A status no route answered itself (an unknown address, a wrong method): JSON
        under /api/, else a page in the reader's language."""
        if request.url.path.startswith("/api/"):
            return await http_exception_handler(request, exc)
        if exc.status_code in (404, 405):
            return pages.error_page(request, exc.status_code, "not_found")
        return pages.error_page(request, exc.status_code, "server_error")

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        """A form or query that does not parse: FastAPI's own answer for the API, a page
        in the reader's language for the pages."""
        if request.url.path.startswith("/api/"):
            return await request_validation_exception_handler(request, exc)
        return pages.error_page(request, 422, "bad_form")

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        """An error of the server's own (logged by the server with its traceback): the
        reader gets a page in its language, never the traceback."""
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "internal error; see the controller's log",
                                 "status": 500}, status_code=500)
        return pages.error_page(request, 500, "server_error")

    app.add_exception_handler(pages.PageAnswer, pages.page_answer)
    return app
