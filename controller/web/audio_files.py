"""The content page (nội dung): a programme's audio uploaded into the playlists' audio
folder, checked and normalised (controller.content), so that a playlist can name it.

Managers only. The page lists the folder's audio with the SHA-256 of each file and a
player; an upload shows the name to write in the playlist (`audio/ten-tep.wav`), the
file's SHA-256 and the SHA-256 of the Opus each audio profile's clusters will get. The
running controller sees a playlist naming it at its next reload, like any edit.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, Response

from controller.audio import AudioError
from controller.content import AddedAudio, ContentError, add_audio, listing
from controller.web.auth import lang_of
from controller.web.context import WebContext
from controller.web.errors import ApiError
from controller.web.pages import Ctx, Found, Manager, Managing, _error, _render, say_in
from controller.web.uploads import save_upload

router = APIRouter(include_in_schema=False)


def _page(request: Request, ctx: WebContext, found: Found, status_code: int = 200,
          added: AddedAudio | None = None, error: str | None = None) -> Response:
    files = listing(ctx.audio_dir) if ctx.audio_dir is not None else []
    return _render(request, "content.html", found, status_code, files=files, added=added,
                   error=error, enabled=ctx.audio_dir is not None and ctx.library is not None)


@router.get("/content")
def content_page(request: Request, ctx: Ctx, found: Manager) -> Response:
    return _page(request, ctx, found)


@router.post("/content")
async def upload_content(
    request: Request,
    ctx: Ctx,
    found: Managing,
    audio: Annotated[UploadFile, File()],
    name: Annotated[str, Form()] = "",
    replace: Annotated[str, Form()] = "",
) -> Response:
    if ctx.audio_dir is None or ctx.library is None:
        return _page(request, ctx, found, 409)
    folder = ctx.audio_dir
    profiles = ctx.service.fleet().by_profile(list(ctx.service.fleet().clusters))
    with tempfile.TemporaryDirectory(dir=ctx.work_dir, prefix="content-") as tmp:
        upload = Path(tmp) / ("upload" + Path(audio.filename or "").suffix[:10])
        try:
            await save_upload(audio, upload)
            added = await asyncio.to_thread(
                add_audio, upload, folder, name.strip() or audio.filename or "", ctx.library,
                list(profiles), replace=bool(replace), target_lufs=ctx.target_lufs,
            )
        except ApiError as exc:
            return _page(request, ctx, found, exc.status,
                         error=say_in(lang_of(request), exc.message))
        except (AudioError, ContentError) as exc:
            text = str(exc).replace(str(upload), audio.filename or "upload")
            return _page(request, ctx, found, 400, error=text)
    return _page(request, ctx, found, added=added)


@router.get("/content/audio/{name}")
def content_audio(request: Request, ctx: Ctx, found: Manager, name: str) -> Response:
    """One file of the audio folder, for its player."""
    files = {f.path.name: f for f in listing(ctx.audio_dir)} if ctx.audio_dir else {}
    if name not in files:
        return _error(request, found, 404, "not_found")
    return FileResponse(files[name].path, media_type="audio/wav")
