"""The headers every answer carries, as plain ASGI middleware (it touches no body).

A strict Content-Security-Policy (no inline script), no framing, no sniffing, no
referrer outside the app; over TLS, Strict-Transport-Security (browsers then keep to
HTTPS for a year); and `?lang=vi|en` remembered in a cookie (Secure over TLS).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qs

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.web.i18n import LANGS

#: Strict-Transport-Security over TLS: a year, this host only.
HSTS = "max-age=31536000"
HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
}
LANG_COOKIE_AGE_S = 365 * 86400


class SecurityHeaders:
    """ASGI middleware: the headers above on every HTTP answer."""

    def __init__(
        self, app: ASGIApp, secure_cookies: bool = False, img_sources: Sequence[str] = ()
    ) -> None:
        """img_sources: origins images may also come from (the map's tile server)."""
        self.app = app
        self.secure_cookies = secure_cookies
        self.headers = dict(HEADERS)
        if img_sources:
            self.headers["Content-Security-Policy"] = HEADERS["Content-Security-Policy"].replace(
                "img-src 'self' data:", "img-src 'self' data: " + " ".join(img_sources)
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = scope.get("scheme") == "https"
        asked = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("lang", [])
        lang = asked[-1] if asked and asked[-1] in LANGS else None

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in self.headers.items():
                    headers[key] = value
                if tls:
                    headers["Strict-Transport-Security"] = HSTS
                if lang is not None:
                    secure = "; Secure" if tls or self.secure_cookies else ""
                    headers.append(
                        "Set-Cookie",
                        f"lang={lang}; Max-Age={LANG_COOKIE_AGE_S}; Path=/; SameSite=lax{secure}",
                    )
            await send(message)

        await self.app(scope, receive, with_headers)
