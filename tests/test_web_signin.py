"""Sign-in through the page and through the API: one function, one limit, one name.

Through the app (FastAPI's TestClient, with the client address chosen per request, on a
real controller and broker): every spelling of a name ("name ", "name\\t", "Name") is one
name for the limit as for the sign-in, on the page as on the API; a guesser's failures do
not keep the rightful user out from another address, nor other users at the guesser's;
a held-back answer says how long to wait.

On controller.web.limiter.SignInLimiter with a clock the test moves: the waits double
from 1 s to a cap of 60 s and are forgotten after 15 minutes; a user who mistyped while
guessers elsewhere keep failing waits five minutes at most; one address trying many
names waits after ten; a success forgets the name, not the address; IPv6 counts per /64;
100,000 random names leave the limiter within its bounds.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import BrokerUnderTest
from fastapi.testclient import TestClient
from web_rig import PASSWORD, WebRig

from controller.users import normal_name
from controller.web.limiter import Backoff, SignInLimiter, address_key

#: A clock that does not move: a refusal cannot be waited out while the test runs.
FROZEN = 1000.0


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[WebRig]:
    r = WebRig(tmp_path, broker.address)
    r.ctx.limiter = SignInLimiter(clock=lambda: FROZEN)
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


def test_the_right_password_from_another_address_is_not_held_back(rig: WebRig) -> None:
    """Someone else's failures (30 tries from one address, most of them held back) do not
    keep the rightful user out on their own phone, nor a colleague at the same office."""
    answers = [api_login(rig, "198.51.100.7", "can-bo-a", f"guess-{i}") for i in range(30)]
    assert answers[:3] == [401, 401, 401]
    assert set(answers[3:]) == {429}
    assert api_login(rig, "203.0.113.9", "can-bo-a", PASSWORD) == 200
    assert page_login(rig, "203.0.113.10", "can-bo-a", PASSWORD) == 303
    # Another user behind the guesser's address: the address has had only 3 failures.
    assert api_login(rig, "198.51.100.7", "can-bo-b", PASSWORD) == 200


def test_a_held_back_answer_says_how_long_in_the_page_and_the_api(rig: WebRig) -> None:
    for _ in range(3):
        assert api_login(rig, "198.51.100.8", "can-bo-a", "wrong-password") == 401
    with TestClient(rig.app, client=("198.51.100.8", 40000)) as c:
        r = c.post("/api/v1/login", json={"name": "can-bo-a", "password": PASSWORD})
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"
        assert r.json()["error"] == "too many failed sign-ins; try again in 1 s"
        c.get("/login")
        r = c.post("/login", data={"name": "can-bo-a", "password": PASSWORD,
                                   "csrf_token": c.cookies.get("loa_login_csrf") or ""})
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"
        assert "Thử lại sau 1 giây" in r.text


# --- the limiter itself, on a clock the test moves ------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def test_normal_name_is_the_users_file_form() -> None:
    assert {normal_name(s) for s in SPELLINGS} == {"can-bo-a"}
    assert normal_name("\u00a0can-bo-a\u2003") == "can-bo-a"  # no-break and em spaces
    # NFC: "e" + combining circumflex and "ê" are one name.
    assert normal_name("le\u0302") == normal_name("l\u00ea")


def test_a_guessed_name_waits_longer_each_time_up_to_a_minute() -> None:
    clock = Clock()
    limiter = SignInLimiter(clock=clock)
    waits = []
    for _ in range(12):
        assert limiter.retry_after("can-bo-a", "198.51.100.1") == 0
        limiter.failed("can-bo-a", "198.51.100.1")
        wait = limiter.retry_after("can-bo-a", "198.51.100.1")
        waits.append(wait)
        clock.now += wait
    assert waits == [0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    # Forgotten 15 minutes after the last failure.
    limiter.failed("can-bo-a", "198.51.100.1")
    clock.now += 899
    assert limiter.retry_after("can-bo-a", "198.51.100.1") == 0
    clock.now += 2
    limiter.failed("can-bo-a", "198.51.100.1")
    assert limiter.retry_after("can-bo-a", "198.51.100.1") == 0


def test_a_user_who_mistyped_during_an_attack_waits_five_minutes_at_most() -> None:
    """Guessers at ever new addresses fail on the user's name every 30 s, so the name's
    wait never runs out; the user, who mistyped once, is held back only until their own
    failure is five minutes old."""
    clock = Clock()
    limiter = SignInLimiter(clock=clock)
    for i in range(5):
        limiter.failed("can-bo-a", f"198.51.100.{i + 1}")
    limiter.failed("can-bo-a", "203.0.113.9")  # the user mistypes
    mistyped = clock.now
    held = []
    for i in range(20):
        clock.now += 30
        limiter.failed("can-bo-a", f"192.0.2.{i + 1}")  # a guesser's first try is free
        held.append(limiter.retry_after("can-bo-a", "203.0.113.9") > 0)
    assert held == [True] * 10 + [False] * 10  # 30 s each: released once past 300 s
    assert clock.now - mistyped > 300


def test_one_address_trying_many_names_waits_after_ten() -> None:
    clock = Clock()
    limiter = SignInLimiter(clock=clock)
    for i in range(10):
        assert limiter.retry_after(f"user-{i}", "198.51.100.1") == 0
        limiter.failed(f"user-{i}", "198.51.100.1")
    assert limiter.retry_after("user-10", "198.51.100.1") == 1
    assert limiter.retry_after("user-10", "198.51.100.2") == 0  # another address
    # Signing in with one account the guesser holds does not clear its address.
    limiter.succeeded("own-account", "198.51.100.1")
    assert limiter.retry_after("user-10", "198.51.100.1") == 1


def test_a_success_forgets_the_name_not_the_address() -> None:
    clock = Clock()
    limiter = SignInLimiter(clock=clock)
    for _ in range(3):
        limiter.failed("can-bo-a", "198.51.100.1")
    assert limiter.retry_after("can-bo-a", "198.51.100.1") == 1
    limiter.succeeded("can-bo-a", "198.51.100.2")
    assert limiter.retry_after("can-bo-a", "198.51.100.1") == 0
    limiter.failed("can-bo-a", "198.51.100.1")  # one failure after: free again
    assert limiter.retry_after("can-bo-a", "198.51.100.1") == 0


def test_an_ipv6_subscriber_is_one_address_for_its_whole_prefix() -> None:
    clock = Clock()
    limiter = SignInLimiter(clock=clock)
    for i in range(10):
        limiter.failed(f"user-{i}", f"2001:db8:1:2::{i + 1:x}")
    assert limiter.retry_after("other", "2001:db8:1:2:ffff::1") == 1
    assert limiter.retry_after("other", "2001:db8:1:3::1") == 0
    assert address_key("::ffff:198.51.100.1") == "198.51.100.1"


def guesses(count: int, seed: int = 13) -> Iterator[tuple[str, str]]:
    """(name, address): random names of 1 to 4096 characters, each from its own address."""
    rng = random.Random(seed)
    for i in range(count):
        length = rng.randint(1, 4096)
        address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        yield rng.randbytes(length // 2 + 1).hex()[:length], address


def test_a_hundred_thousand_random_names_keep_the_tables_at_their_capacity() -> None:
    clock = Clock()
    limiter = SignInLimiter(clock=clock)
    for name, address in guesses(100_000):
        limiter.retry_after(name, address)
        limiter.failed(name, address)
        clock.now += 0.001
    assert len(limiter) == 3 * limiter.backoff.capacity


def test_once_full_the_limiter_grows_no_more() -> None:
    """Memory as Python counts it (tracemalloc, slow: a small capacity): after the tables
    are full, 10,000 more random names add nothing."""
    clock = Clock()
    rng = random.Random(14)
    tracemalloc.start()
    try:
        limiter = SignInLimiter(Backoff(capacity=1_000), clock=clock)
        full = 0
        for i, (name, address) in enumerate(guesses(12_000, seed=rng.randint(0, 99))):
            limiter.retry_after(name, address)
            limiter.failed(name, address)
            clock.now += 0.001
            if i == 2_000:  # every table is full from here on
                full = tracemalloc.get_traced_memory()[0]
        grown = tracemalloc.get_traced_memory()[0] - full
    finally:
        tracemalloc.stop()
    assert len(limiter) == 3 * 1_000
    assert grown < 64 * 1024, f"the full limiter grew by {grown / 1e3:.0f} kB"
