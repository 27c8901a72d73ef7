"""How large a request body may be, by route, and the ASGI middleware that holds to it.

Every body has a limit (docs/web.md, "Limits"). A request whose Content-Length is over
it, or is not a number, is answered 413 before a byte of its body is read; a body sent
without a length (chunked) is counted as it arrives and refused with 413 as soon as it
passes the limit, so no more than the limit is ever held, whatever is sent.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.cap import MAX_CAP_BYTES
from controller.web.i18n import lang_in, t

KIB = 1024
MIB = 1024 * KIB
#: The largest audio file accepted from the page or the API.
MAX_UPLOAD_BYTES = 50 * MIB
#: A sign-in: a name and a password (form or JSON).
SIGN_IN_BYTES = 4 * KIB
#: A page's form without a file (sign out, stop, approve, send a CAP alert).
FORM_BYTES = 16 * KIB
#: A JSON body of the API (an announcement's typed text is the largest part).
JSON_BYTES = 64 * KIB
#: An audio upload with the form fields around it (the send page, POST /api/v1/audio, a
#: programme's audio on the content page).
UPLOAD_BYTES = MAX_UPLOAD_BYTES + 64 * KIB
#: A CAP alert posted to the API (controller.cap takes no larger one).
CAP_BYTES = MAX_CAP_BYTES

ROUTES: dict[str, int] = {
    "/login": SIGN_IN_BYTES,
    "/api/v1/login": SIGN_IN_BYTES,
    "/send": UPLOAD_BYTES,
    "/api/v1/audio": UPLOAD_BYTES,
    "/content": UPLOAD_BYTES,
    "/api/v1/cap": CAP_BYTES,
}


def body_limit(path: str) -> int:
    """The most bytes a request to `path` may carry in its body."""
    if path in ROUTES:
        return ROUTES[path]
    return JSON_BYTES if path.startswith("/api/") else FORM_BYTES


def size_text(limit: int) -> str:
    return f"{limit // MIB} MB" if limit >= MIB else f"{limit // KIB} KiB"


class BodyTooLarge(HTTPException):
    """A body passed its route's limit while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {size_text(limit)}")
        self.limit = limit


def too_large(request: Request, limit: int) -> Response:
    """The 413 answer: the API's JSON error, or a line of text in the page's language.
    The connection is closed after it: what is left of the body is never read."""
    headers = {"Connection": "close"}
    if request.url.path.startswith("/api/"):
        message = f"the request body is larger than {size_text(limit)}; send less"
        return JSONResponse(
            {"error": message, "status": 413}, status_code=413, headers=headers
        )
    lang = lang_in(request.query_params.get("lang"), request.cookies.get("lang"))
    return PlainTextResponse(
        t(lang, "too_large", size=size_text(limit)), status_code=413, headers=headers
    )


class BodyLimits:
    """ASGI middleware: refuse a body over its route's limit (`limit_of(path)`)."""

    def __init__(self, app: ASGIApp, limit_of: Callable[[str], int] = body_limit) -> None:
        self.app = app
        self.limit_of = limit_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_of(scope["path"])
        declared = [v for k, v in scope["headers"] if k == b"content-length"]
        if declared and not all(_within(v, limit) for v in declared):
            await too_large(Request(scope), limit)(scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except BodyTooLarge:
            if started:  # an answer is under way: nothing more can be said
                raise
            await too_large(Request(scope), limit)(scope, receive, send)


def _within(declared: bytes, limit: int) -> bool:
    """Whether a Content-Length header is a number no larger than the limit (a number of
    more than 18 digits is larger than any limit, and is not converted)."""
    return declared.isdigit() and len(declared) <= 18 and int(declared) <= limit
