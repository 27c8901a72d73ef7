"""Sign-in through the page and through the API: one function, one limit, one name.

Through the app (FastAPI's TestClient, with the client address chosen per request, on a
real controller and broker): every spelling of a name ("name ", "name\\t", "Name") is one
name for the limit as for the sign-in, on the page as on the API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import BrokerUnderTest
from fastapi.testclient import TestClient
from web_rig import PASSWORD, WebRig

from controller.web.security import LoginLimiter

#: A clock that does not move: a refusal cannot be waited out while the test runs.
FROZEN = 1000.0


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[WebRig]:
    r = WebRig(tmp_path, broker.address)
    r.ctx.limiter = LoginLimiter(clock=lambda: FROZEN)
    r.start(agents=[], web=False)
    try:
        yield r
    finally:
        r.stop()


def page_login(rig: WebRig, address: str, name: str, password: str) -> int:
    """One sign-in through the page from `address`, as a browser does; the status."""
    with TestClient(rig.app, client=(address, 40000), follow_redirects=False) as c:
        c.get("/login")
        token = c.cookies.get("loa_login_csrf") or ""
        r = c.post("/login", data={"name": name, "password": password, "csrf_token": token})
    return int(r.status_code)


def api_login(rig: WebRig, address: str, name: str, password: str) -> int:
    with TestClient(rig.app, client=(address, 40000)) as c:
        r = c.post("/api/v1/login", json={"name": name, "password": password})
    return int(r.status_code)


SPELLINGS = ["can-bo-a", "can-bo-a ", "can-bo-a  ", "can-bo-a\t", "Can-Bo-A", " can-bo-a"]


@pytest.mark.parametrize("login", [page_login, api_login], ids=["page", "api"])
def test_a_guesser_padding_the_name_is_refused_like_one_who_does_not(
    rig: WebRig, login: Callable[[WebRig, str, str, str], int]
) -> None:
    """The page counted failures under the raw name and signed in with the stripped one:
    each padding of a name had a budget of its own. Three addresses, four tries each,
    stay under every per-address limit; the name's own limit must still refuse them."""
    answers = []
    for i in range(12):
        address = f"198.51.100.{i // 4 + 1}"
        answers.append(login(rig, address, SPELLINGS[i % len(SPELLINGS)], "wrong-password"))
    assert 429 in answers, answers
    # Each spelling is the user's own name: the right password signs in with any of them
    # (from an address that has not been failing).
    for n, spelling in enumerate(SPELLINGS):
        assert login(rig, f"203.0.113.{n + 1}", spelling, PASSWORD) in (200, 303), spelling
