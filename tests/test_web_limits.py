"""Every request body has a size limit, and a body over it is refused before it is read.

On the real app served by uvicorn (tests/web_rig.py), with requests written on a raw
socket so that the test, not a client library, decides what is sent: a Content-Length
over the route's limit is answered 413 before any of the body is sent; a chunked body
(no length) is answered 413 once it passes the limit, while the client had been able
to send only what the kernel's buffers hold of the 200 MB it offered. The answer is the
API's JSON error or a line in the page's language.

And on a real `loa-controller run` process: a 200 MB sign-in body, with a length or
chunked, leaves its peak memory (VmHWM) where it was. Uploads waiting to be sent are
bounded per user.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import BrokerUnderTest, free_port, wait_until
from web_rig import PASSWORD, WebRig

from controller.config import CapConfig
from controller.users import User, hash_password, save_users
from controller.web.limits import (
    CAP_BYTES,
    FORM_BYTES,
    JSON_BYTES,
    MIB,
    SIGN_IN_BYTES,
    UPLOAD_BYTES,
)
from controller.web.uploads import PENDING_PER_USER, Uploads
from protocol.signing import generate_keypair

OFFERED = 200 * MIB
#: What a client can push into the kernel's buffers (both ends) before the server
#: answers; far below what was offered.
BUFFERED = 32 * MIB

ROUTES = [
    ("/login", "application/x-www-form-urlencoded", SIGN_IN_BYTES),
    ("/api/v1/login", "application/json", SIGN_IN_BYTES),
    ("/api/v1/announcements", "application/json", JSON_BYTES),
    ("/api/v1/cap", "application/xml", CAP_BYTES),
    ("/logout", "application/x-www-form-urlencoded", FORM_BYTES),
    ("/send", "multipart/form-data; boundary=x", UPLOAD_BYTES),
    ("/api/v1/audio", "multipart/form-data; boundary=x", UPLOAD_BYTES),
]


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[WebRig]:
    r = WebRig(tmp_path, broker.address, cap=CapConfig(policy="approve"))
    r.start(agents=[])
    try:
        yield r
    finally:
        r.stop()


def post_raw(
    port: int, path: str, content_type: str, *, length: int | None, offered: int = OFFERED,
    token: str = "",
) -> tuple[bytes, int]:
    """POST `offered` bytes of body to path, declared with Content-Length `length` or
    chunked when None, stopping as soon as the server answers; (the answer's status line
    and headers, bytes of body the client managed to send)."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"{auth}{framing}\r\n\r\n"
    ).encode()
    block = b"a" * 65536
    piece = block if length is not None else b"10000\r\n" + block + b"\r\n"
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        while sent < offered:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                break
            assert writable, "the server neither reads nor answers"
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(block)
        try:
            while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
        except ConnectionResetError:
            pass  # the server closed on a body it never read: its answer came first
    return answer, sent


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize(("path", "ctype", "limit"), ROUTES, ids=[r[0] for r in ROUTES])
def test_a_length_over_the_limit_is_refused_before_the_body_is_sent(
    rig: WebRig, path: str, ctype: str, limit: int
) -> None:
    assert rig.server is not None
    answer, sent = post_raw(rig.server.port, path, ctype, length=limit + 1, offered=0)
    assert status_of(answer) == 413
    assert sent == 0
    assert b"connection: close" in answer.lower()


def manager_token(rig: WebRig) -> str:
    with rig.client() as c:
        r = c.post("/api/v1/login", json={"name": "quan-ly", "password": PASSWORD})
    token: str = r.json()["token"]
    return token


@pytest.mark.parametrize(("path", "ctype", "limit"), ROUTES[:5], ids=[r[0] for r in ROUTES[:5]])
def test_a_chunked_body_is_cut_off_at_its_limit(
    rig: WebRig, path: str, ctype: str, limit: int
) -> None:
    """Signed in (as a manager), so that every route reads its body."""
    assert rig.server is not None
    answer, sent = post_raw(rig.server.port, path, ctype, length=None,
                            token=manager_token(rig))
    assert status_of(answer) == 413
    assert sent < BUFFERED, f"the client sent {sent >> 20} MB before the answer"


def test_the_answer_says_what_the_limit_is_in_the_api_and_the_page(rig: WebRig) -> None:
    with rig.client() as c:
        r = c.post("/api/v1/login", content=b"{" + b" " * SIGN_IN_BYTES + b"}",
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert r.json() == {"error": "the request body is larger than 4 KiB; send less",
                            "status": 413}
        r = c.post("/login?lang=en", content=b"name=" + b"a" * SIGN_IN_BYTES,
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413
        assert r.text == "What was sent is too large (at most 4 KiB)."
        r = c.post("/login?lang=vi", content=b"name=" + b"a" * SIGN_IN_BYTES,
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.text == "Nội dung gửi lên quá lớn (tối đa 4 KiB)."
        # Within the limit the route answers as before.
        r = c.post("/api/v1/login", json={"name": "can-bo-a", "password": PASSWORD})
        assert r.status_code == 200


# --- a real `loa-controller run` ---------------------------------------------------------


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def test_a_200_mb_sign_in_leaves_the_controller_as_it_was(
    tmp_path: Path, broker: BrokerUnderTest
) -> None:
    root = Path(__file__).resolve().parent.parent
    generate_keypair(tmp_path / "controller.key", tmp_path / "controller.pub")
    (tmp_path / "fleet.yaml").write_text(
        "province:\n  id: tinh-t\n  name: Tỉnh Thử\n  communes:\n"
        "    - {id: xa-a, name: Xã An, clusters: [{id: a-01, name: Chợ}]}\n",
        encoding="utf-8",
    )
    (tmp_path / "playlists").mkdir()
    save_users(tmp_path / "users.yaml", [
        User(name="can-bo-a", role="operator", scope=["xa-a"], password=hash_password(PASSWORD))
    ])
    port = free_port()
    config = tmp_path / "controller.yaml"
    config.write_text(
        f"broker_url: {broker.url}\nfleet: fleet.yaml\nplaylists: [playlists]\n"
        "store_url: sqlite:///controller.db\nprivate_key: controller.key\n"
        f"content_dir: content\nweb:\n  port: {port}\n  users_file: users.yaml\n"
        "  work_dir: web\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/login", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, 30, "the web app of `loa-controller run`")
        # Sign in once, so that what a sign-in costs anyway is in the baseline.
        r = httpx.post(f"http://127.0.0.1:{port}/api/v1/login",
                       json={"name": "can-bo-a", "password": PASSWORD})
        assert r.status_code == 200
        before = peak_rss_kb(proc.pid)
        results = [
            (path, length, *post_raw(port, path, ctype, length=length))
            for path, ctype in (("/login", "application/x-www-form-urlencoded"),
                                ("/api/v1/login", "application/json"))
            for length in (OFFERED, None)
        ]
        grown_mb = (peak_rss_kb(proc.pid) - before) / 1024
        assert grown_mb < 20, f"the controller's peak memory grew by {grown_mb:.0f} MB"
        for path, length, answer, sent in results:
            assert status_of(answer) == 413, (path, length)
            assert sent < BUFFERED, (path, length, sent)
        body = json.loads(httpx.post(f"http://127.0.0.1:{port}/api/v1/login", json={
            "name": "can-bo-a", "password": PASSWORD}).text)
        assert body["name"] == "can-bo-a"  # and it still signs people in
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_one_user_keeps_at_most_five_uploads_waiting(tmp_path: Path) -> None:
    """Uploads not sent yet are bounded per user too: the oldest go, on disk as well."""
    uploads = Uploads(tmp_path / "uploads")
    mine = []
    for _ in range(PENDING_PER_USER + 2):
        upload_id, path = uploads.new_path("can-bo-a", "a.wav")
        path.write_bytes(b"RIFF")
        mine.append((upload_id, path))
    theirs, _ = uploads.new_path("can-bo-b", "b.wav")
    assert [uploads.path_of("can-bo-a", uid) is not None for uid, _ in mine] == (
        [False, False] + [True] * PENDING_PER_USER
    )
    assert not mine[0][1].parent.exists()
    assert uploads.path_of("can-bo-b", theirs) is not None
    assert uploads.path_of("can-bo-a", theirs) is None  # nobody else's
