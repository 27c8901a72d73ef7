"""Who is asking: the session of a request (cookie or Bearer token), its address, its
language, and whether it came over TLS. Shared by the pages and the API."""

from __future__ import annotations

from fastapi import Request

from controller.users import User
from controller.web.context import WebContext
from controller.web.i18n import Lang, lang_in
from controller.web.security import SESSION_COOKIE, Session, password_fingerprint


def lang_of(request: Request) -> Lang:
    return lang_in(request.query_params.get("lang"), request.cookies.get("lang"))


def client_address(request: Request) -> str:
    """The client's address: the peer's, or what a trusted proxy says (web.proxies)."""
    return request.client.host if request.client else "?"


def over_tls(request: Request) -> bool:
    """Whether the request came over HTTPS (to this server, or to a trusted proxy)."""
    return request.url.scheme == "https"


def secure_cookies(ctx: WebContext, request: Request) -> bool:
    """Whether cookies set in the answer carry Secure: over TLS always, else as configured."""
    return ctx.secure_cookies or over_tls(request)


def by_bearer(request: Request) -> bool:
    return request.headers.get("authorization", "").lower().startswith("bearer ")


def session_of(ctx: WebContext, request: Request) -> tuple[Session, User] | None:
    """The signed-in session and user (cookie or Bearer token), if still valid: the user
    is still in the users file, not disabled, and has the password it signed in with."""
    token = request.cookies.get(SESSION_COOKIE)
    if by_bearer(request):
        token = request.headers["authorization"][7:].strip()
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
