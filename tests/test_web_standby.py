"""The web app on a standby controller (controller/web/standby.py): sends forwarded to the
leader's web app (a real HTTP server here), reads and sign-in served where they are,
and a clear 503, in the reader's language, when no leader answers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import free_port
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from controller.leadership import LeaderView
from controller.web.standby import StandbyForward

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
SINCE = datetime(2026, 12, 6, 1, 30, tzinfo=UTC)  # 08:30 in Hà Nội


class FakeLeadership:
    def __init__(self, *, leading: bool, leader: str | None, url: str) -> None:
        self.is_leader = leading
        self._view = LeaderView("standby:2:b", "leader" if leading else "standby", leader,
                                url, SINCE if leader else None, 3 if leader else 2)

    def view(self) -> LeaderView:
        return self._view


class Leader:
    """The leader's web app: a real HTTP server that records what it was sent."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, dict[str, str], bytes]] = []
        seen = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                seen.append(("POST", self.path, dict(self.headers), body))
                answer = json.dumps({"done": True}).encode()
                self.send_response(201)
                self.send_header("content-type", "application/json")
                self.send_header("set-cookie", "loa_lang=vi; Path=/")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def leader() -> Iterator[Leader]:
    made = Leader()
    yield made
    made.close()


def app_with(leadership: FakeLeadership | None) -> TestClient:
    app = FastAPI()

    @app.post("/api/v1/approvals/{programme}")
    async def approve(programme: str) -> dict[str, str]:
        return {"served": "here", "programme": programme}

    @app.post("/api/v1/login")
    async def login() -> dict[str, str]:
        return {"served": "here"}

    @app.get("/api/v1/approvals")
    async def approvals() -> dict[str, str]:
        return {"served": "here"}

    @app.post("/send")
    async def send(request: Request) -> dict[str, str]:
        return {"served": "here"}

    app.add_middleware(StandbyForward, ctx=SimpleNamespace(leadership=leadership, tz=TZ))
    return TestClient(app)


def test_the_leader_and_a_lone_controller_serve_everything_themselves() -> None:
    for leadership in (None, FakeLeadership(leading=True, leader="standby:2:b", url="")):
        answer = app_with(leadership).post("/api/v1/approvals/tin")
        assert answer.json() == {"served": "here", "programme": "tin"}


def test_a_standby_forwards_sends_and_serves_reads_and_sign_in(leader: Leader) -> None:
    client = app_with(FakeLeadership(leading=False, leader="ubnd-1:41:a", url=leader.url))
    answer = client.post("/api/v1/approvals/tin?lang=vi", content=b'{"note": "ok"}',
                         headers={"authorization": "Bearer T0K3N",
                                  "content-type": "application/json"})
    assert answer.status_code == 201
    assert answer.json() == {"done": True}
    assert answer.headers["x-loa-forwarded-to"] == "ubnd-1:41:a"
    assert answer.headers["set-cookie"] == "loa_lang=vi; Path=/"
    [(method, path, headers, body)] = leader.got
    assert (method, path, body) == ("POST", "/api/v1/approvals/tin?lang=vi", b'{"note": "ok"}')
    assert headers["Authorization"] == "Bearer T0K3N"
    # Like a reverse proxy: the client the standby saw, for the leader's audit log.
    named = {k.lower(): v for k, v in headers.items()}
    assert named["x-forwarded-for"] == "testclient"
    assert named["x-forwarded-proto"] == "http"
    assert client.get("/api/v1/approvals").json() == {"served": "here"}
    assert client.post("/api/v1/login").json() == {"served": "here"}
    assert len(leader.got) == 1


def test_a_standby_adds_its_client_to_the_forwarded_for_chain(leader: Leader) -> None:
    client = app_with(FakeLeadership(leading=False, leader="ubnd-1:41:a", url=leader.url))
    client.post("/api/v1/approvals/tin", headers={"x-forwarded-for": "10.0.0.9",
                                                  "x-forwarded-proto": "https"})
    [(_m, _p, headers, _b)] = leader.got
    named = {k.lower(): v for k, v in headers.items()}
    assert named["x-forwarded-for"] == "10.0.0.9, testclient"
    assert named["x-forwarded-proto"] == "http"  # the scheme this standby was asked in


def test_a_standby_whose_leader_does_not_answer_says_who_leads_and_what_to_do() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = app_with(FakeLeadership(leading=False, leader="ubnd-1:41:a", url=dead))
    answer = client.post("/api/v1/approvals/tin")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    error = answer.json()["error"]
    assert error.startswith("not sent: this controller (standby:2:b) stands by; the leader "
                            "is ubnd-1:41:a (leading since 2026-12-06 08:30), and its web "
                            f"app at {dead} did not answer ([Errno 111] Connection refused)")
    assert "Try again in a moment" in error
    vi = client.post("/api/v1/approvals/tin", headers={"accept-language": "vi"})
    assert "đang dự phòng" in vi.json()["error"]
    page = client.post("/send")
    assert page.status_code == 503
    assert page.headers["content-type"].startswith("text/plain")
    assert "stands by" in page.text


def test_a_standby_with_no_leader_refuses_sends() -> None:
    client = app_with(FakeLeadership(leading=False, leader=None, url=""))
    answer = client.post("/api/v1/approvals/tin")
    assert answer.status_code == 503
    assert "no controller leads right now" in answer.json()["error"]
