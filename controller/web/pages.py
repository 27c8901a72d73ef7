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
import secrets
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData
from starlette.templating import Jinja2Templates

from controller.approval import ContentUnreadableError
from controller.audit import to_csv
from controller.cap import CapError
from controller.identities import EnrolmentError
from controller.urgent import AnnouncementRequest, TargetForbiddenError, UrgentError
from controller.users import User
from controller.web.approvals import approval_rows
from controller.web.approvals import approve as approve_programme
from controller.web.auth import client_address, lang_of, secure_cookies, session_of
from controller.web.context import WebContext, context
from controller.web.errors import SERVICE_ERRORS, ApiError
from controller.web.i18n import Lang, t
from controller.web.security import SESSION_COOKIE, Session, csrf_ok
from controller.web.signin import Refused, sign_in
from controller.web.uploads import save_upload

router = APIRouter(include_in_schema=False)
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
        return at.astimezone(ctx.tz).strftime("%d/%m/%Y %H:%M:%S") if at else ""

    return templates.TemplateResponse(
        request, template,
        {
            "lang": lang, "tr": lambda key, **kw: t(lang, key, **kw), "user": user,
            "csrf": session.csrf if session else "", "when": when,
            "other_lang": "en" if lang == "vi" else "vi", **values,
        },
        status_code=status_code,
    )


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
        form=form or {"targets": [], "level": "emergency", "repeat": 1, "gap_s": 3, "text": "",
                      "title": ""},
        recent=ctx.service.recent(user, 10),
    )


def _kept(form: FormData) -> dict[str, Any]:
    """What the officer filled in, to show the form again as it was."""
    return {
        "targets": form.getlist("targets"), "level": form.get("level", "emergency"),
        "repeat": form.get("repeat", 1), "gap_s": form.get("gap_s", 3),
        "text": form.get("text", ""), "title": form.get("title", ""),
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


def _explain(lang: Lang, exc: Exception) -> tuple[str, int]:
    if isinstance(exc, TargetForbiddenError):
        return t(lang, "forbidden", t=", ".join(exc.outside), s=", ".join(exc.scope_names)), 403
    if isinstance(exc, UrgentError):
        return str(exc), exc.status
    return str(exc), 400


@router.post("/send")
async def send(
    request: Request,
    ctx: Ctx,
    found: Annotated[Found, Depends(_sending)],
    targets: Annotated[list[str] | None, Form()] = None,
    level: Annotated[str, Form()] = "emergency",
    text: Annotated[str, Form()] = "",
    repeat: Annotated[int, Form()] = 1,
    gap_s: Annotated[float, Form()] = 3.0,
    title: Annotated[str, Form()] = "",
    audio: Annotated[UploadFile | None, File()] = None,
) -> Response:
    user = found[1]
    form = {"targets": targets or [], "level": level, "repeat": repeat, "gap_s": gap_s,
            "text": text, "title": title}
    with tempfile.TemporaryDirectory(dir=ctx.work_dir, prefix="form-") as tmp:
        audio_path: Path | None = None
        try:
            if audio is not None and audio.filename:
                audio_path = Path(tmp) / ("upload" + Path(audio.filename).suffix[:10])
                await save_upload(audio, audio_path)
            req = AnnouncementRequest(
                targets=list(targets or []), level=level,  # type: ignore[arg-type]
                text=text if text.strip() else None, audio=audio_path, repeat=repeat,
                gap_s=gap_s, title=title or None,
            )
            sent = await asyncio.to_thread(ctx.service.send, user, req, source="web")
        except ApiError as exc:
            return _send_page(request, found, error=exc.message, status_code=exc.status,
                              form=form)
        except SERVICE_ERRORS as exc:
            message, code = _explain(lang_of(request), exc)
            return _send_page(request, found, error=message, status_code=code, form=form)
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
    return _render(
        request, "audit.html", found, entries=[(e, ctx.outcome_of(e.subject)) for e in entries],
    )


@router.get("/audit.csv")
def audit_csv(ctx: Ctx, found: Manager) -> Response:
    text = to_csv(ctx.service.audit_entries(found[1], 5000), lambda e: ctx.outcome_of(e.subject))
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
        message, code = _explain(lang_of(request), exc)
        return _render(request, "error.html", found, code, message=message)
    return RedirectResponse(f"/announcements/{announcement_id}", status_code=303)


@router.post("/approvals/{programme_id}")
def approve(request: Request, ctx: Ctx, found: Managing, programme_id: str) -> Response:
    try:
        row = approve_programme(ctx, found[1], programme_id, "web")
    except ContentUnreadableError as exc:
        return _render(request, "error.html", found, 400, message=str(exc))
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
        return _render(request, "error.html", found, 409, message=str(exc))
    return RedirectResponse("/enrolments", status_code=303)
