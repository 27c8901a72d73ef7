"""Who is really asking: X-Forwarded-For and X-Forwarded-Proto, believed only from the
reverse proxies the config names (`web.trusted_proxies`; none by default).

A request from any other peer is taken as it came: its own address is the client's,
whatever headers it carries, so a client cannot choose the address the sign-in limit
counts. From a trusted proxy, the client is the right-most address of X-Forwarded-For
that is not itself a trusted proxy (each proxy appends the address it saw; what the
client wrote is to the left of it), and the scheme is the right-most X-Forwarded-Proto
value (`http` or `https`). A value that is not an address stops the walk: the proxy
before it is kept as the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """ASGI middleware: the client address and scheme as the trusted proxies saw them."""

    def __init__(self, app: ASGIApp, proxies: Sequence[Network]) -> None:
        self.app = app
        self.proxies = tuple(proxies)

    def trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        if scope["type"] != "http" or not peer or not self.proxies:
            await self.app(scope, receive, send)
            return
        if not self.trusted(peer[0]):
            await self.app(scope, receive, send)
            return
        forwarded: list[str] = []
        proto: list[str] = []
        for key, value in scope["headers"]:
            if key == b"x-forwarded-for":
                forwarded += [v.strip() for v in value.decode("latin-1").split(",")]
            elif key == b"x-forwarded-proto":
                proto += [v.strip().lower() for v in value.decode("latin-1").split(",")]
        scope = dict(scope)
        client = peer[0]
        for hop in reversed(forwarded):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break
            client = hop
            if not self.trusted(hop):
                break
        scope["client"] = (client, 0 if client != peer[0] else peer[1])
        if proto and proto[-1] in ("http", "https"):
            scope["scheme"] = proto[-1]
        await self.app(scope, receive, send)
