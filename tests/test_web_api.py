"""The JSON API over real HTTP, on a running controller with real agents and broker.

Sign-in and its rate limit, CSRF on cookie sessions, scope (403 with a clear message),
sending text and uploaded audio, following per-cluster progress, stop, the audit log
(JSON and CSV), the OpenAPI schema, and a disabled user losing access at once.
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import BrokerUnderTest, require
from web_rig import PASSWORD, WebRig, same_tick

from controller.samples import tone
from controller.users import set_disabled


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[WebRig]:
    r = WebRig(tmp_path, broker.address)
    r.start()
    try:
        yield r
    finally:
        r.stop()


def sign_in(rig: WebRig, name: str) -> dict[str, str]:
    with rig.client() as c:
        r = c.post("/api/v1/login", json={"name": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def follow(c: httpx.Client, auth: dict[str, str], aid: str, until: set[str],
           timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data: dict[str, Any] = c.get(f"/api/v1/announcements/{aid}", headers=auth).json()
        if all(x["status"] in until for x in data["clusters"]):
            return data
        assert time.monotonic() < deadline, data
        time.sleep(0.2)


def test_sign_in_is_rate_limited(rig: WebRig) -> None:
    with rig.client() as c:
        assert c.get("/api/v1/me").status_code == 401
        for _ in range(3):  # a name's free tries (controller.web.limiter.Backoff)
            r = c.post("/api/v1/login", json={"name": "can-bo-a", "password": "wrong-one"})
            assert r.status_code == 401
            assert r.json()["error"] == "wrong user name or password"
        r = c.post("/api/v1/login", json={"name": "can-bo-a", "password": PASSWORD})
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) > 0
        assert "too many failed sign-ins" in r.json()["error"]
        # No password is kept in clear in the users file.
        assert PASSWORD not in rig.users_file.read_text(encoding="utf-8")
        assert "$argon2id$" in rig.users_file.read_text(encoding="utf-8")


def test_a_commune_officer_targeting_another_commune_is_refused(rig: WebRig) -> None:
    auth = sign_in(rig, "can-bo-a")
    with rig.client() as c:
        me = c.get("/api/v1/me", headers=auth).json()
        assert me["scope"] == ["xa-a"]
        ids = [t["id"] for t in c.get("/api/v1/targets", headers=auth).json()]
        assert ids == ["xa-a", "ap-a1", "a-01", "a-02", "ap-a2", "a-03"]
        for targets in (["xa-b"], ["ap-a1", "b-01"], ["all"]):
            r = c.post("/api/v1/announcements", headers=auth,
                       json={"targets": targets, "text": "Thử loa"})
            assert r.status_code == 403, r.text
            message = r.json()["error"]
            assert "outside what can-bo-a may reach (Xã An)" in message
            assert "nothing was sent" in message
        assert c.get("/api/v1/announcements", headers=auth).json() == []
    assert rig.controller.store.events.count() == 0


def test_cookie_sessions_need_the_csrf_token(rig: WebRig) -> None:
    with rig.client() as c:
        login = c.post("/api/v1/login", json={"name": "can-bo-a", "password": PASSWORD}).json()
        c.cookies.set("loa_session", login["token"])
        body = {"targets": ["a-01"], "text": "Thử"}
        r = c.post("/api/v1/announcements", json=body)
        assert r.status_code == 403
        assert "X-CSRF-Token" in r.json()["error"]
        r = c.post("/api/v1/announcements", json=body, headers={"X-CSRF-Token": "forged"})
        assert r.status_code == 403
        # Reading needs no token.
        assert c.get("/api/v1/me").status_code == 200


def test_send_text_follow_it_and_read_the_audit_log(rig: WebRig) -> None:
    require("espeak-ng", shutil.which("espeak-ng") is not None, "apt-get install espeak-ng")
    auth = sign_in(rig, "can-bo-a")
    with rig.client() as c:
        r = c.post("/api/v1/announcements", headers=auth, json={
            "targets": ["ap-a1"], "text": "Nước lên nhanh, bà con di chuyển lên chỗ cao.",
            "level": "emergency", "title": "Lũ",
        })
        assert r.status_code == 201, r.text
        sent = r.json()
        assert [x["cluster"] for x in sent["clusters"]] == ["a-01", "a-02"]
        assert sent["level"] == "emergency"
        done = follow(c, auth, sent["id"], {"finished"})
        assert done["all_played"] is True
        assert done["counts"] == {"finished": 2}

        manager = sign_in(rig, "quan-ly")
        assert c.get("/api/v1/audit", headers=auth).status_code == 403
        entries = c.get("/api/v1/audit", headers=manager).json()
        entry = next(e for e in entries if e["subject"] == sent["id"])
        assert entry["user"] == "can-bo-a"
        assert entry["action"] == "send"
        assert entry["text"].startswith("Nước lên nhanh")
        assert entry["audio_sha256"] == sent["audio_sha256"]
        assert entry["targets"] == ["ap-a1"]
        assert entry["outcome"] == "finished=2"
        r = c.get("/api/v1/audit.csv", headers=manager)
        assert r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert any(row["subject"] == sent["id"] and row["outcome"] == "finished=2" for row in rows)
        # Another commune's officer does not see it.
        other = sign_in(rig, "can-bo-b")
        r = c.get(f"/api/v1/announcements/{sent['id']}", headers=other)
        assert r.status_code == 404


def test_upload_audio_send_it_and_stop_it(rig: WebRig) -> None:
    auth = sign_in(rig, "quan-ly")
    wav = tone(rig.tmp / "canh-bao.wav", 20.0)
    with rig.client() as c:
        with wav.open("rb") as f:
            r = c.post("/api/v1/audio", headers=auth, files={"audio": ("canh-bao.wav", f)})
        assert r.status_code == 201, r.text
        audio_id = r.json()["audio_id"]
        # An upload belongs to the user who made it.
        r = c.post("/api/v1/announcements", headers=sign_in(rig, "can-bo-a"),
                   json={"targets": ["a-01"], "audio_id": audio_id})
        assert r.status_code == 400
        r = c.post("/api/v1/announcements", headers=auth,
                   json={"targets": ["xa-a", "b-01"], "audio_id": audio_id, "level": "priority"})
        assert r.status_code == 201, r.text
        sent = r.json()
        follow(c, auth, sent["id"], {"playing"})
        r = c.post(f"/api/v1/announcements/{sent['id']}/stop", headers=auth)
        assert r.status_code == 200
        assert r.json()["stopped_by"] == "quan-ly"
        done = follow(c, auth, sent["id"], {"interrupted"})
        assert done["done"] is True
        assert done["all_played"] is False


def test_the_api_is_documented_and_errors_say_why(rig: WebRig) -> None:
    with rig.client() as c:
        schema = c.get("/api/v1/openapi.json").json()
        assert schema["info"]["title"] == "Loa controller API"
        for path in ("/api/v1/login", "/api/v1/announcements",
                     "/api/v1/announcements/{announcement_id}",
                     "/api/v1/announcements/{announcement_id}/stop", "/api/v1/audit",
                     "/api/v1/cap"):
            assert path in schema["paths"], path
        auth = sign_in(rig, "can-bo-a")
        r = c.post("/api/v1/announcements", headers=auth,
                   json={"targets": ["ap-aa1"], "text": "x"})
        assert r.status_code == 400
        assert "did you mean 'ap-a1'" in r.json()["error"]
        r = c.post("/api/v1/announcements", headers=auth, json={"targets": ["a-01"]})
        assert r.status_code == 400
        assert "either a text" in r.json()["error"]


def test_a_disabled_user_loses_access_at_once(rig: WebRig) -> None:
    auth = sign_in(rig, "can-bo-a")
    with rig.client() as c:
        assert c.get("/api/v1/me", headers=auth).status_code == 200
        before = rig.users_file.stat()
        set_disabled(rig.users_file, "can-bo-a")
        same_tick(rig.users_file, before)
        assert c.get("/api/v1/me", headers=auth).status_code == 401
        r = c.post("/api/v1/login", json={"name": "can-bo-a", "password": PASSWORD})
        assert r.status_code == 401


class NoEngine:
    name = "none"

    def available(self, voice: str | None = None) -> str | None:
        return "no text-to-speech engine is installed on the controller (apt-get install espeak-ng)"

    def speak(self, text: str, out: Path, voice: str | None = None) -> Path:
        from controller.tts import TtsUnavailableError

        raise TtsUnavailableError(self.available() or "")


def test_without_a_speech_engine_the_user_is_told_plainly(rig: WebRig) -> None:
    rig.ctx.service.tts = NoEngine()
    auth = sign_in(rig, "can-bo-a")
    with rig.client() as c:
        assert "no text-to-speech engine" in c.get("/api/v1/me", headers=auth).json()["tts"]
        r = c.post("/api/v1/announcements", headers=auth,
                   json={"targets": ["a-01"], "text": "Thử"})
        assert r.status_code == 400
        assert "apt-get install espeak-ng" in r.json()["error"]
        # The send page says so, in Vietnamese, instead of offering a text box.
        page = c.get("/login")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        c.post("/login", data={"name": "can-bo-a", "password": PASSWORD, "csrf_token": token})
        send_page = c.get("/send").text
        assert 'id="no-tts"' in send_page
        assert "Máy chủ chưa có bộ chuyển văn bản thành giọng nói" in send_page
        assert 'name="text"' not in send_page


def test_approvals_through_the_api_and_the_page_are_audited(rig: WebRig) -> None:
    """One service approves, whoever asks: each approval is a row of the audit log,
    saying where it came from (loa-controller approve: tests/test_schedule_cli.py)."""
    manager = sign_in(rig, "quan-ly")
    officer = sign_in(rig, "can-bo-a")
    with rig.client() as c:
        [row] = c.get("/api/v1/approvals", headers=manager).json()
        assert (row["programme"], row["approved"], row["clusters"]) == ("luat-tuan", False, 3)
        assert row["describe"] == "pending: never approved"
        assert c.post("/api/v1/approvals/luat-tuan", headers=officer).status_code == 403
        assert c.get("/api/v1/approvals", headers=officer).status_code == 403
        r = c.post("/api/v1/approvals/nothing-such", headers=manager)
        assert r.status_code == 404
        assert "no programme 'nothing-such' needing approval" in r.json()["error"]
        r = c.post("/api/v1/approvals/luat-tuan", headers=manager)
        assert r.status_code == 200, r.text
        assert r.json()["approved"] is True
        assert r.json()["describe"].startswith("approved by quan-ly at ")
        # Then through the page, as a manager's browser does.
        page = c.get("/login")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        c.post("/login", data={"name": "quan-ly", "password": PASSWORD, "csrf_token": token})
        csrf = c.get("/approvals").text.split('name="csrf_token" value="')[1].split('"')[0]
        assert c.post("/approvals/luat-tuan", data={"csrf_token": "forged"}).status_code == 403
        r = c.post("/approvals/luat-tuan", data={"csrf_token": csrf})
        assert r.status_code == 303
        entries = [e for e in c.get("/api/v1/audit", headers=manager).json()
                   if e["action"] == "approve"]
    assert [(e["user"], e["subject"], e["detail"]) for e in entries] == [
        ("quan-ly", "luat-tuan", "source=web"), ("quan-ly", "luat-tuan", "source=api"),
    ]
    assert entries[0]["clusters"] == ["a-01", "a-02", "a-03"]


def test_listening_first_through_the_api_sends_nothing(rig: WebRig) -> None:
    require("espeak-ng", shutil.which("espeak-ng") is not None, "apt-get install espeak-ng")
    auth = sign_in(rig, "can-bo-b")
    with rig.client() as c:
        r = c.post("/api/v1/preview", headers=auth,
                   json={"text": "Cúp điện lúc 7h30.", "targets": ["Xã Bình"]})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("audio/ogg")
        assert r.content[:4] == b"OggS"
        forbidden = c.post("/api/v1/preview", headers=auth,
                           json={"text": "Thử", "targets": ["xa-a"]})
        assert forbidden.status_code == 403
        assert c.post("/api/v1/preview", headers=auth, json={"text": ""}).status_code == 422
        # A cookie session needs the CSRF header, as for sending.
        login = c.post("/api/v1/login", json={"name": "can-bo-b", "password": PASSWORD})
        c.cookies.set("loa_session", login.json()["token"])
        assert c.post("/api/v1/preview", json={"text": "Thử"}).status_code == 403
        ok = c.post("/api/v1/preview", json={"text": "Thử"},
                    headers={"X-CSRF-Token": login.json()["csrf_token"]})
        assert ok.status_code == 200
    assert rig.controller.store.events.count() == 0
    assert rig.service.recent(rig.user("quan-ly")) == []
