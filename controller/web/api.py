"""The JSON API, /api/v1: the same actions as the pages, for integration and the CLI.

Errors are `{"error": "<what is wrong and what to do>", "status": <code>}`: 400 for a
request that cannot be done as written, 401 when not signed in, 403 for a target outside
the user's scope (or a manager-only call), 404, 413, 429 for too many failed sign-ins.
The OpenAPI schema is at /api/v1/openapi.json and browsable at /api/docs.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Request, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from controller.approval import ContentUnreadableError
from controller.audit import to_csv
from controller.cap import CapError
from controller.reasons import shown
from controller.urgent import (
    MAX_GAP_S,
    MAX_REPEAT,
    Announcement,
    AnnouncementRequest,
    UrgentError,
)
from controller.users import User
from controller.web.approvals import ApprovalRow, approval_rows
from controller.web.approvals import approve as approve_programme
from controller.web.auth import by_bearer, client_address, session_of
from controller.web.context import WebContext, context
from controller.web.errors import SERVICE_ERRORS, ApiError, api_lang, service_error
from controller.web.security import Session, csrf_ok
from controller.web.signin import Refused, sign_in
from controller.web.uploads import save_upload
from protocol.l10n import Text

router = APIRouter(prefix="/api/v1", tags=["urgent announcements"])


# --- models (the OpenAPI schema) ------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(_Model):
    name: str = Field(max_length=200)
    password: str = Field(max_length=1024)


class LoginOut(_Model):
    token: str = Field(description="send as `Authorization: Bearer <token>`")
    csrf_token: str = Field(description="X-CSRF-Token for calls made with the session cookie")
    name: str
    role: str
    scope: list[str]


class TargetOut(_Model):
    id: str
    name: str
    kind: str
    depth: int
    clusters: int


class MeOut(_Model):
    name: str
    display_name: str
    role: str
    scope: list[str]
    tts: str | None = Field(description="null when text can be spoken, else why not")


class AnnouncementIn(_Model):
    targets: list[str] = Field(min_length=1, description="node ids, cluster ids, tag:<tag>")
    level: Literal["priority", "emergency"] = "emergency"
    text: str | None = Field(None, description="spoken by the text-to-speech engine")
    audio_id: str | None = Field(None, description="from POST /api/v1/audio")
    repeat: int = Field(1, ge=1, le=MAX_REPEAT)
    gap_s: float = Field(3.0, ge=0, le=MAX_GAP_S)
    title: str | None = Field(None, max_length=200)


class AudioOut(_Model):
    audio_id: str
    size: int


class ClusterOut(_Model):
    cluster: str
    name: str
    commune: str
    status: str = Field(
        description="sent, offline, received, delivered, playing, finished, interrupted, "
        "missed or failed"
    )
    reason: str | None
    reason_text: str | None = Field(
        None, description="the reason as the pages show it, when asked for with ?lang=vi|en"
    )
    at: datetime | None


class PreparedAudioOut(_Model):
    profile: str = Field(description="the audio profile of the clusters it went to: horn "
                         "(outdoor horns) or full-range (indoor speakers)")
    sha256: str = Field(description="the prepared Ogg/Opus those clusters were sent")


class AnnouncementOut(_Model):
    id: str
    created_at: datetime
    created_by: str
    source: str
    title: str
    text: str | None
    level: str
    audio_sha256: str
    audio: list[PreparedAudioOut] = Field(
        description="what each audio profile's clusters were sent (docs/audio.md)"
    )
    duration_s: float
    repeat: int
    gap_s: float
    targets: list[str]
    latest_start: datetime
    stopped_at: datetime | None
    stopped_by: str | None
    ref: str | None
    done: bool = Field(description="every cluster finished, failed, or is offline")
    all_played: bool = Field(description="every reachable cluster played it to the end")
    counts: dict[str, int]
    clusters: list[ClusterOut]


class AuditOut(_Model):
    at: datetime
    user: str
    action: str
    subject: str | None
    level: str | None
    title: str | None
    text: str | None
    audio_sha256: str | None
    targets: list[str]
    clusters: list[str]
    outcome: str
    detail: str | None


class ApprovalOut(_Model):
    programme: str
    name: str
    approved: bool
    describe: str = Field(description="approved by whom and when, or why it is pending")
    clusters: int


class CapOut(_Model):
    identifier: str
    msg_type: str
    action: str
    announcements: list[str]
    detail: str


# --- dependencies -------------------------------------------------------------------------


Ctx = Annotated[WebContext, Depends(context)]


def signed_in(request: Request, ctx: Ctx) -> tuple[Session, User]:
    found = session_of(ctx, request)
    if found is None:
        raise ApiError(401, Text("not signed in: POST /api/v1/login, then send the token"))
    return found


SignedIn = Annotated[tuple[Session, User], Depends(signed_in)]


def acting(request: Request, found: SignedIn) -> User:
    """The user, for a state-changing call: cookie sessions must carry the CSRF token."""
    session, user = found
    if not by_bearer(request) and not csrf_ok(session, request.headers.get("x-csrf-token")):
        raise ApiError(403, Text("missing or wrong X-CSRF-Token header"))
    return user


def reader(found: SignedIn) -> User:
    return found[1]


Acting = Annotated[User, Depends(acting)]
Reader = Annotated[User, Depends(reader)]


def managing(user: Acting) -> User:
    """A manager, for a state-changing call."""
    if user.role != "manager":
        raise ApiError(403, Text("only a manager may do this"))
    return user


def reading_manager(user: Reader) -> User:
    if user.role != "manager":
        raise ApiError(403, Text("only a manager may do this"))
    return user


Managing = Annotated[User, Depends(managing)]
ManagerReader = Annotated[User, Depends(reading_manager)]


# --- routes ---------------------------------------------------------------------------------


@router.post("/login", response_model=LoginOut, tags=["session"])
def login(body: LoginIn, request: Request, ctx: Ctx) -> LoginOut:
    """Sign in; the token is a session (8 hours without use ends it). Failed sign-ins
    make further ones wait (429 with Retry-After; docs/web.md, Sign-in limit)."""
    found = sign_in(
        ctx.users, ctx.limiter, ctx.sessions, name=body.name, password=body.password,
        address=client_address(request), refusals=ctx.refusals,
    )
    if isinstance(found, Refused):
        if found.status == 429:
            raise ApiError(
                429, Text("too many failed sign-ins; try again in {s} s", s=found.retry_after),
                {"Retry-After": str(found.retry_after)},
            )
        raise ApiError(401, Text("wrong user name or password"))
    return LoginOut(
        token=found.session.id, csrf_token=found.session.csrf, name=found.user.name,
        role=found.user.role, scope=found.user.scope,
    )


@router.post("/logout", status_code=204, tags=["session"])
def logout(request: Request, ctx: Ctx, found: SignedIn) -> Response:
    acting(request, found)
    ctx.sessions.drop(found[0].id)
    return Response(status_code=204)


@router.get("/me", response_model=MeOut, tags=["session"])
def me(user: Reader, ctx: Ctx) -> MeOut:
    return MeOut(
        name=user.name, display_name=user.display_name, role=user.role, scope=user.scope,
        tts=ctx.service.tts.available(),
    )


@router.get("/targets", response_model=list[TargetOut])
def targets(user: Reader, ctx: Ctx) -> list[TargetOut]:
    """The part of the fleet tree this user may target."""
    return [TargetOut(**e.__dict__) for e in ctx.service.tree(user)]


@router.post("/audio", response_model=AudioOut, status_code=201)
async def upload_audio(
    user: Acting, ctx: Ctx, audio: Annotated[UploadFile, File(description="any audio ffmpeg reads")]
) -> AudioOut:
    """Upload a recording to send with POST /api/v1/announcements (as audio_id)."""
    upload_id, path = ctx.uploads.new_path(user.name, audio.filename or "audio")
    size = await save_upload(audio, path)
    return AudioOut(audio_id=upload_id, size=size)


def _out(found: Announcement) -> AnnouncementOut:
    return AnnouncementOut.model_validate(found.to_json())


@router.post("/announcements", response_model=AnnouncementOut, status_code=201)
async def send(body: AnnouncementIn, user: Acting, ctx: Ctx) -> AnnouncementOut:
    """Send an urgent announcement now to the targets (all within the user's scope)."""
    audio = None
    if body.audio_id:
        audio = ctx.uploads.path_of(user.name, body.audio_id)
        if audio is None:
            raise ApiError(400, Text("no uploaded audio {id!r} of yours", id=body.audio_id))
    req = AnnouncementRequest(
        targets=body.targets, level=body.level, text=body.text, audio=audio,
        repeat=body.repeat, gap_s=body.gap_s, title=body.title,
    )
    try:
        found = await asyncio.to_thread(ctx.service.send, user, req, source="api")
    except SERVICE_ERRORS as exc:
        raise service_error(exc) from None
    if body.audio_id:
        ctx.uploads.discard(body.audio_id)
    return _out(found)


@router.get("/announcements", response_model=list[AnnouncementOut])
def recent(user: Reader, ctx: Ctx, limit: int = 20) -> list[AnnouncementOut]:
    return [_out(a) for a in ctx.service.recent(user, min(max(limit, 1), 200))]


@router.get("/announcements/{announcement_id}", response_model=AnnouncementOut)
def status(
    announcement_id: str, user: Reader, ctx: Ctx, lang: Literal["vi", "en"] | None = None
) -> AnnouncementOut:
    """The announcement and where it stands on every targeted cluster (poll it); with
    ?lang=, each cluster's reason also as the page shows it (reason_text)."""
    try:
        out = _out(ctx.service.get(user, announcement_id))
    except UrgentError as exc:
        raise service_error(exc) from None
    if lang is not None:
        for cluster in out.clusters:
            cluster.reason_text = shown(cluster.reason, lang, ctx.tz).text
    return out


@router.post("/announcements/{announcement_id}/stop", response_model=AnnouncementOut)
def stop(announcement_id: str, user: Acting, ctx: Ctx) -> AnnouncementOut:
    """Stop it now on every cluster it was sent to."""
    try:
        return _out(ctx.service.stop(user, announcement_id))
    except UrgentError as exc:
        raise service_error(exc) from None


@router.get("/audit", response_model=list[AuditOut], tags=["audit"])
def audit(user: ManagerReader, ctx: Ctx, limit: int = 200) -> list[AuditOut]:
    """The audit log, newest first (managers; entries within their subtree)."""
    entries = ctx.service.audit_entries(user, min(max(limit, 1), 5000))
    return [
        AuditOut(
            at=e.at, user=e.user, action=e.action, subject=e.subject, level=e.level,
            title=e.title, text=e.text, audio_sha256=e.audio_sha256, targets=e.targets,
            clusters=e.clusters, outcome=ctx.outcome_of(e.subject), detail=e.detail,
        )
        for e in entries
    ]


@router.get("/audit.csv", tags=["audit"], response_class=Response)
def audit_csv(user: ManagerReader, ctx: Ctx) -> Response:
    entries = ctx.service.audit_entries(user, 5000)
    text = to_csv(entries, lambda e: ctx.outcome_of(e.subject))
    return Response(
        text, media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="loa-audit.csv"'},
    )


def _approval_out(row: ApprovalRow) -> ApprovalOut:
    return ApprovalOut(programme=row.programme.id, name=row.programme.name,
                       approved=row.approved, describe=row.describe.in_("en"),
                       clusters=row.clusters)


@router.get("/approvals", response_model=list[ApprovalOut], tags=["approvals"])
def approvals(user: ManagerReader, ctx: Ctx) -> list[ApprovalOut]:
    """Programmes that need approval within the manager's subtree, pending or approved."""
    return [_approval_out(r) for r in approval_rows(ctx, user)]


@router.post("/approvals/{programme_id}", response_model=ApprovalOut, tags=["approvals"])
def approve(programme_id: str, user: Managing, ctx: Ctx) -> ApprovalOut:
    """Approve the programme's current bulletins so it may air (written to the audit log)."""
    try:
        row = approve_programme(ctx, user, programme_id, "api")
    except ContentUnreadableError as exc:
        raise ApiError(400, exc.args[0]) from None
    if row is None:
        raise ApiError(404, Text("no programme {id!r} needing approval within your scope",
                                 id=programme_id))
    return _approval_out(row)


@router.post("/cap", response_model=CapOut, tags=["CAP"])
async def cap(request: Request, user: Managing, ctx: Ctx) -> CapOut:
    """Take in a CAP 1.2 alert (XML body, at most 512 KiB); see docs/web.md for the policy."""
    if ctx.cap is None:
        raise ApiError(404, Text("CAP intake is not enabled in the controller config (web.cap)"))
    raw = await request.body()  # bounded by controller.web.limits (CAP_BYTES)
    try:
        result = await asyncio.to_thread(ctx.cap.take, raw, user)
    except CapError as exc:
        raise ApiError(400, exc.args[0]) from None
    except SERVICE_ERRORS as exc:
        raise service_error(exc) from None
    lang = api_lang(request.headers.get("accept-language"))
    return CapOut(**{**result.__dict__, "detail": result.detail.in_(lang)})
