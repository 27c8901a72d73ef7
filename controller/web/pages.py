"""The server-rendered pages: sign in, send, follow and stop, history, audit, approvals.

The listen buttons (nghe thử) on the announcement and approval pages play the prepared
Opus itself: the file the clusters are sent, not the upload or the source.

Every page works without JavaScript (plain forms, a refresh link on the status page);
with it, the status page updates itself every second from the JSON API and the send
page can record from the phone's microphone. Every form carries the session's CSRF
token; the sign-in form carries a token of its own (double-submit cookie).

What every page asks first is a dependency: `SignedIn` (else to the sign-in page),
`Manager` (else 403), and for a form that changes something `Acting` / `Managing`
(the same, with the form's CSRF token checked). A dependency that refuses raises
`PageAnswer` with the page to show instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData
from starlette.templating import Jinja2Templates

from controller.approval import ContentUnreadableError
from controller.audio import AudioError
from controller.audit import CSV_HEADER, to_csv
from controller.cap import CapError
from controller.fleet import UnknownTargetError
from controller.identities import EnrolmentError
from controller.preview import target_label
from controller.reasons import audit_detail, shown
from controller.tts import TtsUnavailableError
from controller.urgent import (
    MAX_TITLE,
    AnnouncementRequest,
    NotSentError,
    TargetForbiddenError,
    UrgentError,
)
from controller.users import User
from controller.web.approvals import approval_rows
from controller.web.approvals import approve as approve_programme
from controller.web.auth import client_address, lang_of, secure_cookies, session_of
from controller.web.context import WebContext, context
from controller.web.errors import SERVICE_ERRORS, ApiError
from controller.web.i18n import Lang, t
from controller.web.limits import MAX_UPLOAD_BYTES, size_text
from controller.web.security import SESSION_COOKIE, Session, csrf_ok
from controller.web.signin import Refused, sign_in
from controller.web.uploads import save_upload
from protocol import l10n
from protocol.l10n import say

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)
LOGIN_CSRF_COOKIE = "loa_login_csrf"

Ctx = Annotated[WebContext, Depends(context)]
Found = tuple[Session, User]


class PageAnswer(Exception):
    """What a page's dependency answers in the page's place: the sign-in page, a refusal."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


async def page_answer(_request: Request, exc: Exception) -> Response:
    """The app's handler of PageAnswer."""
    assert isinstance(exc, PageAnswer)
    return exc.response


def _render(
    request: Request,
    template: str,
    found: Found | None,
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    ctx = context(request)
    lang = lang_of(request)
    templates: Jinja2Templates = request.app.state.templates
    session, user = found if found else (None, None)

    def when(at: datetime | None) -> str:
        return l10n.when(at, lang, ctx.tz) if at else ""

    return templates.TemplateResponse(
        request, template,
        {
            "lang": lang, "tr": lambda key, **kw: t(lang, key, **kw), "user": user,
            "csrf": session.csrf if session else "", "when": when,
            "reason": lambda text: shown(text, lang, ctx.tz),
            "detail": lambda text: audit_detail(text, lang, ctx.tz),
            "places": lambda targets: _places(ctx, targets),
            "say": lambda x: say_in(lang, x),
            "other_lang": "en" if lang == "vi" else "vi", "broker_down": ctx.broker_down_text(),
            "standby": ctx.standby_banner(),
            **values,
        },
        status_code=status_code,
    )


def _places(ctx: WebContext, targets: list[str]) -> str:
    """Targets as people name them (Xã An, Chợ An (a-01)), not as the fleet file keys them."""
    fleet = ctx.service.fleet()
    return ", ".join(target_label(fleet, target) for target in targets)


#: For the route modules beside this one (controller/web/live.py).
render = _render


def _error(request: Request, found: Found | None, status_code: int, key: str) -> HTMLResponse:
    return _render(request, "error.html", found, status_code,
                   message=t(lang_of(request), key))


def _to_login() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303)


# --- what every page asks first --------------------------------------------------------------


def _maybe_signed_in(request: Request, ctx: Ctx) -> Found | None:
    return session_of(ctx, request)


MaybeSignedIn = Annotated[Found | None, Depends(_maybe_signed_in)]


def _signed_in(found: MaybeSignedIn) -> Found:
    if found is None:
        raise PageAnswer(_to_login())
    return found


SignedIn = Annotated[Found, Depends(_signed_in)]


def _manager(request: Request, found: SignedIn) -> Found:
    if found[1].role != "manager":
        raise PageAnswer(_error(request, found, 403, "manager_only"))
    return found


Manager = Annotated[Found, Depends(_manager)]


def _acting(request: Request, found: SignedIn, csrf_token: Annotated[str, Form()] = "") -> Found:
    if not csrf_ok(found[0], csrf_token):
        raise PageAnswer(_error(request, found, 403, "csrf"))
    return found


def _managing(request: Request, found: Manager, csrf_token: Annotated[str, Form()] = "") -> Found:
    return _acting(request, found, csrf_token)


Acting = Annotated[Found, Depends(_acting)]
Managing = Annotated[Found, Depends(_managing)]


# --- sign in and out -------------------------------------------------------------------------


@router.get("/")
def home(found: MaybeSignedIn) -> Response:
    return RedirectResponse("/send" if found else "/login", status_code=303)


def _login_page(
    request: Request, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = _render(
        request, "login.html", None, status_code=status_code, login_csrf=token, error=error
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
        secure=secure_cookies(context(request), request),
    )
    return response


@router.get("/login")
def login_form(request: Request, found: MaybeSignedIn) -> Response:
    if found:
        return RedirectResponse("/send", status_code=303)
    return _login_page(request)


@router.post("/login")
def login(
    request: Request,
    ctx: Ctx,
    name: Annotated[str, Form()],
    password: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    lang = lang_of(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, csrf_token):
        return _login_page(request, t(lang, "csrf"), 403)
    found = sign_in(
        ctx.users, ctx.limiter, ctx.sessions, name=name, password=password,
        address=client_address(request), refusals=ctx.refusals,
    )
    if isinstance(found, Refused):
        if found.status == 429:
            response = _login_page(request, t(lang, "too_many", s=found.retry_after), 429)
            response.headers["Retry-After"] = str(found.retry_after)
            return response
        return _login_page(request, t(lang, "bad_login"), 401)
    redirect = RedirectResponse("/send", status_code=303)
    redirect.set_cookie(
        SESSION_COOKIE, found.session.id, httponly=True, samesite="lax",
        secure=secure_cookies(ctx, request),
    )
    redirect.delete_cookie(LOGIN_CSRF_COOKIE)
    return redirect


@router.post("/logout")
def logout(ctx: Ctx, found: MaybeSignedIn, csrf_token: Annotated[str, Form()] = "") -> Response:
    """Signing out never shows an error: the cookie goes whatever; the session ends when
    the form's token is the session's."""
    if found and csrf_ok(found[0], csrf_token):
        ctx.sessions.drop(found[0].id)
    response = _to_login()
    response.delete_cookie(SESSION_COOKIE)
    return response


# --- send ------------------------------------------------------------------------------------


def _send_page(
    request: Request,
    found: Found,
    *,
    error: str | None = None,
    status_code: int = 200,
    form: dict[str, Any] | None = None,
) -> HTMLResponse:
    ctx = context(request)
    user = found[1]
    return _render(
        request, "send.html", found, status_code=status_code,
        tree=ctx.service.tree(user), scope_names=ctx.service.scope_names(user),
        tts_problem=ctx.service.tts.available(), error=error,
        form=form or {"targets": [], "level": DEFAULT_LEVEL, "repeat": 1, "gap_s": 3,
                      "text": "", "title": "", "audio_id": ""},
        recent=ctx.service.recent(user, 10),
    )


#: The level the send page starts with: emergency must be chosen, never fallen into.
DEFAULT_LEVEL = "priority"


def _kept(form: FormData) -> dict[str, Any]:
    """What the officer filled in, to show the form again as it was."""
    return {
        "targets": form.getlist("targets"), "level": form.get("level", DEFAULT_LEVEL),
        "repeat": form.get("repeat", 1), "gap_s": form.get("gap_s", 3),
        "text": form.get("text", ""), "title": form.get("title", ""),
        "audio_id": form.get("audio_id", ""),
    }


async def _sending(
    request: Request, found: SignedIn, csrf_token: Annotated[str, Form()] = ""
) -> Found:
    """Acting, for the send form: refused, it is shown again as filled in (a warning
    typed on a phone is not lost to an expired form)."""
    if not csrf_ok(found[0], csrf_token):
        form = _kept(await request.form())
        raise PageAnswer(_send_page(request, found, error=t(lang_of(request), "csrf"),
                                    status_code=403, form=form))
    return found


@router.get("/send")
def send_form(request: Request, found: SignedIn) -> Response:
    return _send_page(request, found)


def say_in(lang: Lang, said: object) -> str:
    """What the service said (a Text, or a str the catalog may have), in this language."""
    if isinstance(said, l10n.Text):
        return said.in_(lang)
    return l10n.translate(str(said), lang)


def explain(lang: Lang, exc: Exception) -> tuple[str, int]:
    """What the page says when the service refuses, and the status: in the page's
    language, and never a path on the server or what a tool printed (logged instead)."""
    if isinstance(exc, NotSentError):
        return t(lang, "not_sent"), exc.status
    if isinstance(exc, TargetForbiddenError):
        return t(lang, "forbidden", t=", ".join(exc.outside), s=", ".join(exc.scope_names)), 403
    if isinstance(exc, UrgentError):
        return say(exc, lang), exc.status
    if isinstance(exc, AudioError):
        log.info("audio refused: %s", exc)
        return t(lang, "audio_unusable", reason=say_in(lang, exc.reason),
                 advice=say_in(lang, exc.advice)), 400
    if isinstance(exc, TtsUnavailableError):
        log.warning("text-to-speech failed: %s", exc)
        return t(lang, "tts_failed"), 400
    if isinstance(exc, UnknownTargetError):
        return t(lang, "unknown_target", t=exc.target), 400
    if isinstance(exc, ContentUnreadableError):
        return t(lang, "content_unreadable", file=exc.path.name), 400
    return say(exc, lang), 400


@router.post("/send")
async def send(
    request: Request,
    ctx: Ctx,
    found: Annotated[Found, Depends(_sending)],
    targets: Annotated[list[str] | None, Form()] = None,
    level: Annotated[str, Form()] = DEFAULT_LEVEL,
    text: Annotated[str, Form()] = "",
    repeat: Annotated[int, Form()] = 1,
    gap_s: Annotated[float, Form()] = 3.0,
    title: Annotated[str, Form()] = "",
    audio: Annotated[UploadFile | None, File()] = None,
    audio_id: Annotated[str, Form()] = "",
    confirmed: Annotated[str, Form()] = "",
    back: Annotated[str, Form()] = "",
) -> Response:
    """Sending takes two posts: the form, answered with a confirmation page that names
    the targets (an uploaded recording is kept meanwhile, as audio_id), then that page's
    "confirmed" (or "back", to the form as filled in)."""
    user = found[1]
    lang = lang_of(request)
    form = {"targets": targets or [], "level": level, "repeat": repeat, "gap_s": gap_s,
            "text": text, "title": title, "audio_id": audio_id}
    if back:
        return _send_page(request, found, form=form)
    try:
        if audio is not None and audio.filename:
            audio_id, path = ctx.uploads.new_path(user.name, audio.filename)
            await save_upload(audio, path)
            form["audio_id"] = audio_id
            # Untitled, it is called as the officer's file was (not as it is kept here).
            title = title.strip() or Path(audio.filename).stem[:MAX_TITLE]
            form["title"] = title
        audio_path = ctx.uploads.path_of(user.name, audio_id) if audio_id else None
        if audio_id and audio_path is None:
            form["audio_id"] = ""
            return _send_page(request, found, error=t(lang, "upload_gone"), status_code=400,
                              form=form)
        req = AnnouncementRequest(
            targets=list(targets or []), level=level,  # type: ignore[arg-type]
            text=text if text.strip() else None, audio=audio_path, repeat=repeat,
            gap_s=gap_s, title=title or None,
        )
        if not confirmed:
            clusters = await asyncio.to_thread(ctx.service.checked, user, req)
            picked = {e.id: e for e in ctx.service.tree(user)}
            return _render(
                request, "confirm.html", found, form=form, clusters=len(clusters),
                targets=[picked.get(target, target) for target in req.targets],
            )
        sent = await asyncio.to_thread(ctx.service.send, user, req, source="web")
    except ApiError as exc:  # save_upload: too large, or empty
        message = (t(lang, "too_large", size=size_text(MAX_UPLOAD_BYTES)) if exc.status == 413
                   else t(lang, "upload_empty"))
        return _send_page(request, found, error=message, status_code=exc.status, form=form)
    except SERVICE_ERRORS as exc:
        message, code = explain(lang, exc)
        return _send_page(request, found, error=message, status_code=code, form=form)
    if audio_id:
        ctx.uploads.discard(audio_id)
    return RedirectResponse(f"/announcements/{sent.id}", status_code=303)


# --- follow and stop -------------------------------------------------------------------------


@router.get("/announcements/{announcement_id}")
def announcement(request: Request, ctx: Ctx, found: SignedIn, announcement_id: str) -> Response:
    try:
        item = ctx.service.get(found[1], announcement_id)
    except UrgentError:
        return _error(request, found, 404, "not_found")
    return _render(request, "announcement.html", found, item=item)


@router.get("/announcements/{announcement_id}/audio/{sha256}")
def announcement_audio(
    request: Request, ctx: Ctx, found: SignedIn, announcement_id: str, sha256: str
) -> Response:
    """What the announcement's clusters were sent, for its listen button."""
    try:
        path = ctx.service.audio_file(found[1], announcement_id, sha256)
    except UrgentError:
        return _error(request, found, 404, "not_found")
    return FileResponse(path, media_type="audio/ogg")


@router.post("/announcements/{announcement_id}/stop")
def stop(request: Request, ctx: Ctx, found: Acting, announcement_id: str) -> Response:
    try:
        ctx.service.stop(found[1], announcement_id)
    except UrgentError:
        return _error(request, found, 404, "not_found")
    return RedirectResponse(f"/announcements/{announcement_id}", status_code=303)


@router.get("/announcements")
def history(request: Request, ctx: Ctx, found: SignedIn) -> Response:
    return _render(request, "history.html", found, items=ctx.service.recent(found[1], 100))


# --- managers: audit and approvals -------------------------------------------------------------


@router.get("/audit")
def audit(request: Request, ctx: Ctx, found: Manager) -> Response:
    entries = ctx.service.audit_entries(found[1], 500)
    lang = lang_of(request)
    return _render(
        request, "audit.html", found,
        entries=[(e, ctx.outcome_of(e.subject, lang)) for e in entries],
    )


def _csv_word(lang: Lang, tz: tzinfo, column: str, value: str) -> str:
    """An action's or a level's name, or a row's detail, in the audit log's CSV."""
    if column == "action":
        return t(lang, "act_" + value)
    if column == "detail":
        said = audit_detail(value, lang, tz)
        return said.text if said.original is None else value  # unknown: as recorded
    return t(lang, "level_" + value)


@router.get("/audit.csv")
def audit_csv(request: Request, ctx: Ctx, found: Manager) -> Response:
    """The audit log as the page shows it (in its language, times in the fleet's zone);
    /api/v1/audit.csv gives it to programs, with codes and ISO times."""
    lang = lang_of(request)
    text = to_csv(
        ctx.service.audit_entries(found[1], 5000), lambda e: ctx.outcome_of(e.subject, lang),
        header=[t(lang, "csv_" + column) for column in CSV_HEADER],
        word=lambda column, value: _csv_word(lang, ctx.tz, column, value),
        at=lambda at: l10n.when(at, lang, ctx.tz, seconds=True),
    )
    return Response(
        text, media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="loa-audit.csv"'},
    )


@router.get("/approvals")
def approvals(request: Request, ctx: Ctx, found: Manager) -> Response:
    alerts = ctx.cap.pending() if ctx.cap is not None else []
    reach = ctx.service.reach(found[1])
    alerts = [a for a in alerts if set(json.loads(a["clusters"])) <= reach]
    others = ctx.cap.not_aired() if ctx.cap is not None else []
    others = [a for a in others if set(json.loads(a["clusters"])) <= reach]
    return _render(request, "approvals.html", found, rows=approval_rows(ctx, found[1]),
                   enabled=ctx.approvals is not None, alerts=alerts, not_aired=others)


@router.post("/cap/send")
def send_cap_alert(
    request: Request, ctx: Ctx, found: Managing, ref: Annotated[str, Form()]
) -> Response:
    """A manager's go-ahead for a CAP alert kept pending (policy: approve)."""
    if ctx.cap is None:
        return _error(request, found, 404, "not_found")
    try:
        announcement_id = ctx.cap.send(ref, found[1])
    except (CapError, UrgentError) as exc:
        message, code = explain(lang_of(request), exc)
        return _render(request, "error.html", found, code, message=message)
    return RedirectResponse(f"/announcements/{announcement_id}", status_code=303)


@router.post("/approvals/{programme_id}")
def approve(request: Request, ctx: Ctx, found: Managing, programme_id: str) -> Response:
    try:
        row = approve_programme(ctx, found[1], programme_id, "web")
    except ContentUnreadableError as exc:
        message, code = explain(lang_of(request), exc)
        return _render(request, "error.html", found, code, message=message)
    if row is None:
        return _error(request, found, 404, "not_found")
    return RedirectResponse("/approvals", status_code=303)


# --- managers: device enrolment ---------------------------------------------------------------


@router.get("/enrolments")
def enrolments(request: Request, ctx: Ctx, found: Manager) -> Response:
    """Join requests waiting for a manager, in the manager's area."""
    if ctx.enrolment is None:
        return _error(request, found, 404, "not_found")
    reach = ctx.service.reach(found[1])
    identities = ctx.enrolment.identities
    pending = [r for r in identities.requests(pending_only=True) if r.cluster in reach]
    registered = set(identities.active_keys())
    names = {cid: c.name for cid, c in ctx.service.fleet().clusters.items()}
    return _render(
        request, "enrolments.html", found, pending=pending, names=names,
        registered=len(reach & registered), total=len(reach),
        unregistered=sorted(reach - registered),
    )


@router.post("/enrolments/{cluster}/{decision}")
def decide_enrolment(
    request: Request, ctx: Ctx, found: Managing, cluster: str, decision: str,
    key: Annotated[str, Form()] = "",
) -> Response:
    """A manager approves or rejects one waiting join request of a cluster in its area."""
    desk = ctx.enrolment
    if desk is None or cluster not in ctx.service.reach(found[1]) or decision not in (
        "approve", "reject"
    ):
        return _error(request, found, 404, "not_found")
    try:
        if decision == "approve":
            desk.approve(cluster, found[1].name, key or None)
        else:
            desk.reject(cluster, found[1].name, key or None)
    except EnrolmentError as exc:
        return _render(request, "error.html", found, 409, message=say(exc, lang_of(request)))
    return RedirectResponse("/enrolments", status_code=303)


# --- errors outside the routes -----------------------------------------------------------------


def error_page(request: Request, status_code: int, key: str) -> HTMLResponse:
    """An error page in the page's language, signed in or not (an unknown address, a
    form that does not parse, an error of the server's own)."""
    found = session_of(context(request), request)
    return _render(request, "error.html", found, status_code, message=t(lang_of(request), key))
