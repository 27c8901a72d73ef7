"""On a standby controller (controller/leadership.py), what would change the speakers goes
to the leader: every POST, PUT, PATCH and DELETE but signing in and out is forwarded to
the leader's web app (its advertised URL in the lease) and the leader's answer handed
back as it is, with `X-Loa-Forwarded-To: <leader>`. Like a reverse proxy, the standby
names the client in X-Forwarded-For and X-Forwarded-Proto (believed by a leader that
lists the standbys in `web.trusted_proxies`). Reading pages are served here,
from the shared store; so are sign-in and sign-out (sessions live in the store: the
leader knows the same cookie or token).

When no leader is known, or its web app does not answer, the answer is 503 with what to
do: which controller led, since when, and that a standby takes over within the lease's
time. Plain ASGI middleware, inside BodyLimits (the body is already bounded); the
request to the leader runs on a worker thread (urllib, no dependency added).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

import anyio

from controller.web.errors import api_lang
from protocol.l10n import Text, When

log = logging.getLogger(__name__)

FORWARDED = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Served here on a standby too: they only touch the store.
LOCAL = frozenset({"/login", "/logout", "/api/v1/login", "/api/v1/logout"})
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})
TIMEOUT_S = 120.0  # an announcement typed in: the leader speaks it before it answers


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The leader's redirects go back to the browser as they are (a relative Location
    then points at this controller, which serves the page from the store)."""

    def redirect_request(self, *_: Any, **__: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class StandbyForward:
    """Forward sends to the leader while `ctx.leadership` says this controller stands by."""

    def __init__(self, app: Any, ctx: Any) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        leadership = self.ctx.leadership
        if (scope["type"] != "http" or leadership is None or scope["method"] not in FORWARDED
                or scope["path"] in LOCAL or leadership.is_leader):
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in HOP_BY_HOP}
        _as_a_proxy(headers, scope)
        view = leadership.view()
        if view.leader is None or not view.url:
            await _refuse(send, scope, headers, view, None, self.ctx.tz)
            return
        target = view.url + scope["path"] + (
            "?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
        try:
            status, answer, content = await anyio.to_thread.run_sync(
                _forward, target, scope["method"], headers, body)
        except OSError as exc:  # refused, timed out, unreachable
            log.warning("could not forward %s %s to the leader %s at %s: %s",
                        scope["method"], scope["path"], view.leader, view.url, exc)
            await _refuse(send, scope, headers, view, str(getattr(exc, "reason", exc)),
                          self.ctx.tz)
            return
        await send({"type": "http.response.start", "status": status, "headers": [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer
            if k.lower() not in HOP_BY_HOP] + [
                (b"content-length", str(len(content)).encode()),
                (b"x-loa-forwarded-to", view.leader.encode("latin-1")),
            ]})
        await send({"type": "http.response.body", "body": content})


def _as_a_proxy(headers: dict[str, str], scope: Any) -> None:
    """Say whom the request came from, as a reverse proxy does: the client this controller
    saw (after its own trusted proxies) as the right-most X-Forwarded-For, its scheme as
    X-Forwarded-Proto. The leader believes them when this controller is among its
    `web.trusted_proxies`; then its audit log and sign-in limits see the real client."""
    client = scope.get("client")
    if client:
        before = headers.pop("x-forwarded-for", "")
        headers["x-forwarded-for"] = f"{before}, {client[0]}" if before else str(client[0])
    headers.pop("x-forwarded-proto", None)
    headers["x-forwarded-proto"] = str(scope.get("scheme", "http"))


def _forward(url: str, method: str, headers: dict[str, str], body: bytes
             ) -> tuple[int, list[tuple[str, str]], bytes]:
    request = urllib.request.Request(url, data=body or None, headers=headers,  # noqa: S310
                                     method=method)  # the leader's URL, http(s) by config
    try:
        with _OPENER.open(request, timeout=TIMEOUT_S) as response:
            return response.status, list(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:  # an answer all the same (4xx, 5xx, 3xx)
        return exc.code, list(exc.headers.items()), exc.read()


async def _refuse(send: Any, scope: Any, headers: dict[str, str], view: Any,
                  error: str | None, tz: Any) -> None:
    lang = api_lang(headers.get("accept-language") or headers.get("Accept-Language"))
    if view.leader is None:
        text = Text(
            "not sent: this controller ({me}) stands by and no controller leads right now; "
            "one takes over within seconds. Try again in a moment.", me=view.me)
    else:
        text = Text(
            "not sent: this controller ({me}) stands by; the leader is {leader} (leading "
            "since {since}), and its web app at {url} did not answer ({error}). Try again "
            "in a moment (a standby takes over when the leader's lease runs out), or send "
            "from the leader's address.",
            me=view.me, leader=view.leader, since=When(view.since, tz) if view.since else "?",
            url=view.url or "?", error=error or "no address")
    message = text.in_(lang)
    if scope["path"].startswith("/api/"):
        content = json.dumps({"error": message, "status": 503}).encode()
        kind = b"application/json"
    else:
        content = message.encode()
        kind = b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", kind), (b"content-length", str(len(content)).encode()),
        (b"retry-after", b"5")]})
    await send({"type": "http.response.body", "body": content})
