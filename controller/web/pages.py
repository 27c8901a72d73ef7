"""The server-rendered pages: sign in, send, follow and stop, history, audit, approvals.

Every page works without JavaScript (plain forms, a refresh link on the status page);
with it, the status page updates itself every second from the JSON API and the send
page can record from the phone's microphone. Every form carries the session's CSRF
token; the sign-in form carries a token of its own (double-submit cookie).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from controller.audio import AudioError
from controller.audit import to_csv
from controller.fleet import UnknownTargetError
from controller.tts import TtsUnavailableError
from controller.urgent import AnnouncementRequest, TargetForbiddenError, UrgentError
from controller.users import User
from controller.web.api import ApiError, outcome_of, save_upload
from controller.web.app import WebContext, client_address, lang_of, session_of
from controller.web.i18n import Lang, t
from controller.web.security import SESSION_COOKIE, Session, csrf_ok

router = APIRouter(include_in_schema=False)
LOGIN_CSRF_COOKIE = "loa_login_csrf"


def _ctx(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


def _render(
    request: Request,
    template: str,
    found: tuple[Session, User] | None,
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    ctx = _ctx(request)
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


def _signed_in(request: Request) -> tuple[Session, User] | None:
    return session_of(_ctx(request), request)


def _to_login() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303)


# --- sign in and out -------------------------------------------------------------------------


@router.get("/")
def home(request: Request) -> Response:
    return RedirectResponse("/send" if _signed_in(request) else "/login", status_code=303)


def _login_page(
    request: Request, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = _render(
        request, "login.html", None, status_code=status_code, login_csrf=token, error=error
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
        secure=_ctx(request).secure_cookies,
    )
    return response


@router.get("/login")
def login_form(request: Request) -> Response:
    if _signed_in(request):
        return RedirectResponse("/send", status_code=303)
    return _login_page(request)


@router.post("/login")
def login(
    request: Request,
    name: Annotated[str, Form()],
    password: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    ctx = _ctx(request)
    lang = lang_of(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, csrf_token):
        return _login_page(request, t(lang, "csrf"), 403)
    address = client_address(request)
    wait = ctx.limiter.retry_after(name, address)
    if wait:
        response = _login_page(request, t(lang, "too_many", s=wait), 429)
        response.headers["Retry-After"] = str(wait)
        return response
    user = ctx.users.authenticate(name.strip(), password)
    if user is None:
        ctx.limiter.failed(name, address)
        return _login_page(request, t(lang, "bad_login"), 401)
    ctx.limiter.succeeded(name)
    session = ctx.sessions.create(user.name)
    redirect = RedirectResponse("/send", status_code=303)
    redirect.set_cookie(
        SESSION_COOKIE, session.id, httponly=True, samesite="lax",
        secure=ctx.secure_cookies,
    )
    redirect.delete_cookie(LOGIN_CSRF_COOKIE)
    return redirect


@router.post("/logout")
def logout(request: Request, csrf_token: Annotated[str, Form()] = "") -> Response:
    found = _signed_in(request)
    if found and csrf_ok(found[0], csrf_token):
        _ctx(request).sessions.drop(found[0].id)
    response = _to_login()
    response.delete_cookie(SESSION_COOKIE)
    return response


# --- send ------------------------------------------------------------------------------------


def _send_page(
    request: Request,
    found: tuple[Session, User],
    *,
    error: str | None = None,
    status_code: int = 200,
    form: dict[str, Any] | None = None,
) -> HTMLResponse:
    ctx = _ctx(request)
    user = found[1]
    return _render(
        request, "send.html", found, status_code=status_code,
        tree=ctx.service.tree(user), scope_names=ctx.service.scope_names(user),
        tts_problem=ctx.service.tts.available(), error=error,
        form=form or {"targets": [], "level": "emergency", "repeat": 1, "gap_s": 3, "text": "",
                      "title": ""},
        recent=ctx.service.recent(user, 10),
    )


@router.get("/send")
def send_form(request: Request) -> Response:
    found = _signed_in(request)
    if found is None:
        return _to_login()
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
    csrf_token: Annotated[str, Form()] = "",
    targets: Annotated[list[str] | None, Form()] = None,
    level: Annotated[str, Form()] = "emergency",
    text: Annotated[str, Form()] = "",
    repeat: Annotated[int, Form()] = 1,
    gap_s: Annotated[float, Form()] = 3.0,
    title: Annotated[str, Form()] = "",
    audio: Annotated[UploadFile | None, File()] = None,
) -> Response:
    found = _signed_in(request)
    if found is None:
        return _to_login()
    session, user = found
    lang = lang_of(request)
    form = {"targets": targets or [], "level": level, "repeat": repeat, "gap_s": gap_s,
            "text": text, "title": title}
    if not csrf_ok(session, csrf_token):
        return _send_page(request, found, error=t(lang, "csrf"), status_code=403, form=form)
    ctx = _ctx(request)
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
        except (UrgentError, UnknownTargetError, TtsUnavailableError, AudioError) as exc:
            message, code = _explain(lang, exc)
            return _send_page(request, found, error=message, status_code=code, form=form)
    return RedirectResponse(f"/announcements/{sent.id}", status_code=303)


# --- follow and stop -------------------------------------------------------------------------


@router.get("/announcements/{announcement_id}")
def announcement(request: Request, announcement_id: str) -> Response:
    found = _signed_in(request)
    if found is None:
        return _to_login()
    try:
        item = _ctx(request).service.get(found[1], announcement_id)
    except UrgentError:
        return _render(request, "error.html", found, 404, message=t(lang_of(request), "not_found"))
    return _render(request, "announcement.html", found, item=item)


@router.post("/announcements/{announcement_id}/stop")
def stop(
    request: Request, announcement_id: str, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    found = _signed_in(request)
    if found is None:
        return _to_login()
    lang = lang_of(request)
    if not csrf_ok(found[0], csrf_token):
        return _render(request, "error.html", found, 403, message=t(lang, "csrf"))
    try:
        _ctx(request).service.stop(found[1], announcement_id)
    except UrgentError:
        return _render(request, "error.html", found, 404, message=t(lang, "not_found"))
    return RedirectResponse(f"/announcements/{announcement_id}", status_code=303)


@router.get("/announcements")
def history(request: Request) -> Response:
    found = _signed_in(request)
    if found is None:
        return _to_login()
    return _render(
        request, "history.html", found, items=_ctx(request).service.recent(found[1], 100)
    )


# --- managers: audit and approvals -------------------------------------------------------------


def _manager(request: Request) -> tuple[Session, User] | Response:
    found = _signed_in(request)
    if found is None:
        return _to_login()
    if found[1].role != "manager":
        return _render(request, "error.html", found, 403,
                       message=t(lang_of(request), "manager_only"))
    return found


@router.get("/audit")
def audit(request: Request) -> Response:
    found = _manager(request)
    if isinstance(found, Response):
        return found
    ctx = _ctx(request)
    entries = ctx.service.audit_entries(found[1], 500)
    return _render(
        request, "audit.html", found,
        entries=[(e, outcome_of(ctx, e.subject)) for e in entries],
    )


@router.get("/audit.csv")
def audit_csv(request: Request) -> Response:
    found = _manager(request)
    if isinstance(found, Response):
        return found
    ctx = _ctx(request)
    text = to_csv(ctx.service.audit_entries(found[1], 5000), lambda e: outcome_of(ctx, e.subject))
    return Response(
        text, media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="loa-audit.csv"'},
    )


@router.get("/approvals")
def approvals(request: Request) -> Response:
    found = _manager(request)
    if isinstance(found, Response):
        return found
    ctx = _ctx(request)
    alerts = ctx.cap.pending() if ctx.cap is not None else []
    reach = ctx.service.reach(found[1])
    alerts = [a for a in alerts if set(json.loads(a["clusters"])) <= reach]
    return _render(request, "approvals.html", found, rows=_approval_rows(ctx, found[1]),
                   enabled=ctx.approvals is not None, alerts=alerts)


def _approval_rows(ctx: WebContext, user: User) -> list[dict[str, Any]]:
    if ctx.approvals is None or ctx.playlists is None:
        return []
    from controller.approval import ContentUnreadableError

    reach = ctx.service.reach(user)
    fleet = ctx.service.fleet()
    rows = []
    for programme in sorted(ctx.playlists().programmes.values(), key=lambda p: p.id):
        if not programme.requires_approval:
            continue
        try:
            clusters = fleet.resolve(programme.targets, programme.exclude)
        except KeyError:
            continue
        if not set(clusters) <= reach:
            continue
        try:
            state = ctx.approvals.state(programme)
            rows.append({"programme": programme, "approved": state.approved,
                         "describe": state.describe(ctx.tz), "clusters": len(clusters)})
        except ContentUnreadableError as exc:
            rows.append({"programme": programme, "approved": False, "describe": str(exc),
                         "clusters": len(clusters)})
    return rows


@router.post("/cap/send")
def send_cap_alert(
    request: Request, ref: Annotated[str, Form()], csrf_token: Annotated[str, Form()] = ""
) -> Response:
    """A manager's go-ahead for a CAP alert kept pending (policy: approve)."""
    found = _manager(request)
    if isinstance(found, Response):
        return found
    ctx = _ctx(request)
    lang = lang_of(request)
    if not csrf_ok(found[0], csrf_token):
        return _render(request, "error.html", found, 403, message=t(lang, "csrf"))
    from controller.cap import CapError

    if ctx.cap is None:
        return _render(request, "error.html", found, 404, message=t(lang, "not_found"))
    try:
        announcement_id = ctx.cap.send(ref, found[1])
    except (CapError, UrgentError) as exc:
        message, code = _explain(lang, exc)
        return _render(request, "error.html", found, code, message=message)
    return RedirectResponse(f"/announcements/{announcement_id}", status_code=303)


@router.post("/approvals/{programme_id}")
def approve(
    request: Request, programme_id: str, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    found = _manager(request)
    if isinstance(found, Response):
        return found
    ctx = _ctx(request)
    lang = lang_of(request)
    if not csrf_ok(found[0], csrf_token):
        return _render(request, "error.html", found, 403, message=t(lang, "csrf"))
    rows = {r["programme"].id: r for r in _approval_rows(ctx, found[1])}
    if programme_id not in rows or ctx.approvals is None:
        return _render(request, "error.html", found, 404, message=t(lang, "not_found"))
    programme = rows[programme_id]["programme"]
    now = ctx.service.now()
    state = ctx.approvals.approve(programme, found[1].name, now)
    fleet = ctx.service.fleet()
    ctx.service.audit.record(
        at=now, user=found[1].name, action="approve", subject=programme.id,
        title=programme.name, text=" ".join(state.content),
        targets=list(programme.targets),
        clusters=fleet.resolve(programme.targets, programme.exclude),
    )
    return RedirectResponse("/approvals", status_code=303)
