"""Nghe thử: hear what the speakers would say, before it is sent or approved.

- ``POST /send/preview`` (the send page's "Nghe thử" button: the form's own fields and
  CSRF token, behind the same `Acting` prologue as sending) and ``POST /api/v1/preview``
  (JSON, behind the API's `Acting`): the text spoken with the targets' voice and
  prepared as the clusters would get it (Ogg/Opus, once), through
  controller.urgent.UrgentService.preview: the same scope rules as sending, and nothing
  is sent, recorded or kept.
- ``GET /approvals/{programme}/audio/{n}?profile=P`` (a `Manager`): the n-th bulletin
  (1 for the first) of a programme the manager may approve, as its clusters of audio
  profile P (horn, the default, or full-range; docs/audio.md) will get it, for the
  approval page's players. Preparing it is what the dispatch does anyway; it is kept in
  the audio library like any bulletin.

A refusal the service gives comes back as plain text (the page shows it beside the
button) with the status sending would have; the prologues answer as for any page.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from controller.audio import AudioError
from controller.audio_chain import DEFAULT_PROFILE
from controller.tts import MAX_TEXT_CHARS
from controller.urgent import AnnouncementRequest
from controller.users import User
from controller.web import api as json_api
from controller.web import pages
from controller.web.approvals import approval_rows
from controller.web.auth import lang_of
from controller.web.context import WebContext
from controller.web.errors import SERVICE_ERRORS, ApiError, service_error
from controller.web.i18n import t

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api/v1", tags=["urgent announcements"])
OPUS = "audio/ogg; codecs=opus"


def _audio(data: bytes) -> Response:
    return Response(data, media_type=OPUS, headers={"Cache-Control": "no-store"})


async def _preview(ctx: WebContext, user: User, targets: list[str], text: str) -> bytes:
    req = AnnouncementRequest(targets=targets, text=text)
    return await asyncio.to_thread(ctx.service.preview, user, req)


@router.post("/send/preview")
async def send_page_preview(
    request: Request,
    ctx: pages.Ctx,
    found: pages.Acting,
    targets: Annotated[list[str] | None, Form()] = None,
    text: Annotated[str, Form(max_length=MAX_TEXT_CHARS)] = "",
) -> Response:
    """The send page's "Nghe thử": the form's text and targets, nothing sent."""
    try:
        return _audio(await _preview(ctx, found[1], list(targets or []), text))
    except (*SERVICE_ERRORS, ValueError) as exc:
        message, status = pages.explain(lang_of(request), exc)
        return PlainTextResponse(message, status_code=status)


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    targets: list[str] = Field(
        default_factory=list,
        description="node ids, cluster ids, names; their voice speaks (the user's area's if none)",
    )


@api.post(
    "/preview", response_class=Response,
    responses={200: {"content": {"audio/ogg": {}}, "description": "Ogg/Opus, once"}},
)
async def api_preview(body: PreviewIn, user: json_api.Acting, ctx: json_api.Ctx) -> Response:
    """The text as the targets' clusters would hear it (Ogg/Opus); nothing is sent."""
    try:
        return _audio(await _preview(ctx, user, body.targets, body.text))
    except SERVICE_ERRORS as exc:
        raise service_error(exc) from None
    except ValueError as exc:  # a voice the fleet names but the config lost, an empty text
        raise ApiError(400, str(exc)) from None


@router.get("/approvals/{programme_id}/audio/{number}")
async def approval_audio(
    request: Request, ctx: pages.Ctx, found: pages.Manager, programme_id: str, number: int,
    profile: str = DEFAULT_PROFILE,
) -> Response:
    """A bulletin of a programme the manager may approve, as its clusters of this audio
    profile will get it."""
    rows = {r.programme.id: r for r in approval_rows(ctx, found[1])}
    row = rows.get(programme_id)
    if (
        row is None or not 1 <= number <= len(row.programme.bulletins)
        or profile not in row.profiles
    ):
        return PlainTextResponse(t(lang_of(request), "not_found"), status_code=404)
    bulletin = row.programme.bulletins[number - 1]
    library = ctx.service.library
    try:
        prepared = await asyncio.to_thread(
            library.prepare, list(bulletin.files), bulletin.intro, bulletin.outro, profile
        )
        data = await asyncio.to_thread(library.read, prepared.sha256)
    except AudioError as exc:
        return PlainTextResponse(pages.explain(lang_of(request), exc)[0], status_code=422)
    except KeyError as exc:  # the library lost what it just prepared
        log.warning("approval audio of %s: %s", programme_id, exc)
        return PlainTextResponse(t(lang_of(request), "server_error"), status_code=422)
    return _audio(data)
