"""`/metrics` (Prometheus text format), `/healthz` (alive) and `/readyz` (ready to send),
without signing in: what a monitoring system and a load balancer ask (docs/operations.md,
Monitoring). They tell counts and states, no names of people or texts; a reverse proxy
can keep them to the monitoring network."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from controller.metrics import CONTENT_TYPE, exposition
from controller.web.context import WebContext, context

router = APIRouter(tags=["monitoring"])
Ctx = Annotated[WebContext, Depends(context)]


@router.get("/metrics", response_class=Response)
def metrics(ctx: Ctx) -> Response:
    """The controller's metrics in the Prometheus text format."""
    if ctx.metrics is None:
        return JSONResponse({"error": "no metrics here", "status": 404}, status_code=404)
    return Response(exposition(ctx.metrics), media_type=CONTENT_TYPE)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Alive: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(ctx: Ctx) -> JSONResponse:
    """Ready: the broker connected, the store writable, the schedule loaded (a standby:
    the store writable). 503 with what is wrong otherwise. `role` and `leadership` say
    whether this controller leads, and which one does since when."""
    checks = ctx.ready() if ctx.ready is not None else {}
    failing = {name: why for name, why in checks.items() if why is not None}
    body: dict[str, object] = {
        "status": "ready" if not failing else "not ready",
        "checks": {name: why or "ok" for name, why in checks.items()},
    }
    if ctx.leadership is not None:  # which controller leads, and whether this one does
        view = ctx.leadership.view()
        body["role"] = "leader" if ctx.leadership.is_leader else "standby"
        body["leadership"] = {
            "this": view.me, "leader": view.leader, "leader_url": view.url or None,
            "since": view.since.isoformat() if view.since else None, "term": view.term,
        }
    return JSONResponse(body, status_code=503 if failing else 200)
