"""Phát trực tiếp: speak live from the browser (controller/microphone.py), and see who
is live where.

- ``GET /live`` (signed in): the page: targets within the user's scope, a level, the
  button; the live sessions reaching into the user's area, with "Ngắt" for those the
  user may cut (their own; any, for a manager of the area).
- ``POST /api/v1/live`` {targets, level, title?}: start; the session id.
- ``POST /api/v1/live/{id}/audio?seq=N`` (the body: the next piece of the recording,
  WebM or Ogg as MediaRecorder makes it): in order by seq; a piece sent twice is taken
  once.
- ``POST /api/v1/live/{id}/stop``: the user's stop, or a manager's cut.
- ``GET /api/v1/live``: who is live where.

The API calls take the same `Acting` prologue as the rest of the API (a bearer token, or
the page's session cookie with its CSRF token in X-CSRF-Token).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from controller.microphone import MicrophoneDesk, view_json
from controller.web import api as json_api
from controller.web import pages
from controller.web.context import WebContext
from controller.web.errors import SERVICE_ERRORS, ApiError, service_error
from protocol.messages import Level

router = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api/v1", tags=["live sessions"])


def _desk(ctx: WebContext) -> MicrophoneDesk:
    if ctx.microphones is None:
        raise ApiError(503, "this controller carries no live sessions")
    desk: MicrophoneDesk = ctx.microphones
    return desk


class LiveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: list[str] = Field(min_length=1, max_length=200)
    level: Level = "priority"
    title: str = Field(default="", max_length=200)


class LiveOut(BaseModel):
    session_id: str
    clusters: list[str]
    max_s: float
    grace_s: float


@api.post("/live", response_model=LiveOut, status_code=201)
async def start(body: LiveIn, user: json_api.Acting, ctx: json_api.Ctx) -> LiveOut:
    """Start speaking live to the targets (all within the user's scope)."""
    desk = _desk(ctx)
    try:
        mic = await asyncio.to_thread(desk.start, user, body.targets, body.level, body.title)
    except SERVICE_ERRORS as exc:
        raise service_error(exc) from None
    return LiveOut(session_id=mic.session_id, clusters=mic.clusters, max_s=desk.max_s,
                   grace_s=desk.grace_s)  # fmt: skip


@api.post("/live/{session_id}/audio", status_code=204)
async def audio(
    session_id: str, request: Request, user: json_api.Acting, ctx: json_api.Ctx,
    seq: Annotated[int, Query(ge=0, le=2**31)],
) -> Response:
    """The next piece of the recording."""
    data = await request.body()
    try:
        await asyncio.to_thread(_desk(ctx).feed, user, session_id, seq, data)
    except SERVICE_ERRORS as exc:
        raise service_error(exc) from None
    return Response(status_code=204)


@api.post("/live/{session_id}/stop", status_code=204)
async def stop(session_id: str, user: json_api.Acting, ctx: json_api.Ctx) -> Response:
    try:
        await asyncio.to_thread(_desk(ctx).stop, user, session_id)
    except SERVICE_ERRORS as exc:
        raise service_error(exc) from None
    return Response(status_code=204)


@api.get("/live")
def on_air(user: json_api.Reader, ctx: json_api.Ctx) -> list[dict[str, Any]]:
    """The live sessions reaching into the user's area."""
    desk = _desk(ctx)
    return [view_json(v, desk.may_cut(user, v)) for v in desk.on_air(user)]


@router.get("/live")
def live_page(request: Request, ctx: pages.Ctx, found: pages.SignedIn) -> Response:
    desk = ctx.microphones
    user = found[1]
    sessions = [view_json(v, desk.may_cut(user, v)) for v in desk.on_air(user)] if desk else []
    return pages.render(
        request, "live.html", found, tree=ctx.service.tree(user),
        scope_names=ctx.service.scope_names(user), sessions=sessions,
        available=desk is not None,
    )
