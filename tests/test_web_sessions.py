"""Web sessions kept in the controller's store: they survive a restart of the controller.

Through the real app (tests/web_rig.py, real HTTP): a signed-in officer's cookie and
CSRF token, and an API client's Bearer token, still work after a restart; a signed-out
session, one unused for 8 hours, and those of a disabled user or of a user whose password
changed do not; the store holds only the SHA-256 of a session id, never the id.

Directly on controller.web.security.StoredSessions with an injected clock, on SQLite and
on PostgreSQL: the idle rule is exactly the in-memory one, each use is one statement, and
expired rows are purged when looked up, at sign-in, and every `purge_every_s`.
PostgreSQL: conftest.postgres_database (LOA_TEST_POSTGRES_URL), in a database made for
the test and dropped after it; skipped where there is no server or driver, except under CI.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import BrokerUnderTest, postgres_database
from sqlalchemy import event, func, select
from web_rig import PASSWORD, WebRig, same_tick

from controller.store import Store
from controller.store.schema import web_sessions
from controller.users import set_disabled, set_password
from controller.web.security import IDLE_S, Session, Sessions, StoredSessions

# --- through the real app, across a restart -----------------------------------------------


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[WebRig]:
    r = WebRig(tmp_path, broker.address)
    r.start(agents=[])
    try:
        yield r
    finally:
        r.stop()


def hidden_csrf(html: str) -> str:
    return html.split('name="csrf_token" value="')[1].split('"', maxsplit=1)[0]


def page_sign_in(c: httpx.Client, name: str) -> str:
    """Sign in through the sign-in page, as a browser does; the session cookie's value."""
    token = hidden_csrf(c.get("/login").text)
    r = c.post("/login", data={"name": name, "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/send"
    cookie = c.cookies.get("loa_session")
    assert cookie
    return cookie


def api_sign_in(c: httpx.Client, name: str) -> dict[str, str]:
    r = c.post("/api/v1/login", json={"name": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def signed_in_page(c: httpx.Client) -> str | None:
    """The send page's CSRF token if the cookie still signs in; None if sent to /login."""
    r = c.get("/send")
    if r.status_code == 303:
        assert r.headers["location"] == "/login"
        return None
    assert r.status_code == 200, r.text
    return hidden_csrf(r.text)


def rows(rig: WebRig) -> list[dict[str, Any]]:
    with rig.controller.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(web_sessions)).mappings()]


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_a_signed_in_officer_stays_signed_in_across_a_restart(rig: WebRig) -> None:
    with rig.client() as c, rig.client() as api:
        cookie = page_sign_in(c, "can-bo-a")
        csrf = signed_in_page(c)
        assert csrf
        bearer = api_sign_in(api, "quan-ly")

        rig.restart()

        # The same cookie signs in, to the same session: the same CSRF token in the forms.
        assert c.cookies.get("loa_session") == cookie
        assert signed_in_page(c) == csrf
        assert c.get("/api/v1/me").json()["name"] == "can-bo-a"
        # The CSRF token is still checked, and the stored one is accepted: the call gets
        # past it to the request's own validation (no text, no audio: nothing is sent).
        body = {"targets": ["a-01"]}
        r = c.post("/api/v1/announcements", json=body)
        assert r.status_code == 403
        assert "X-CSRF-Token" in r.json()["error"]
        r = c.post("/api/v1/announcements", json=body, headers={"X-CSRF-Token": "forged"})
        assert r.status_code == 403
        r = c.post("/api/v1/announcements", json=body, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 400, r.text
        assert "either a text" in r.json()["error"]
        # The API client's Bearer token too.
        me = api.get("/api/v1/me", headers=bearer)
        assert me.status_code == 200
        assert me.json()["name"] == "quan-ly"
        # And signing out with the cookie needs the same CSRF token.
        assert c.post("/api/v1/logout", headers={"X-CSRF-Token": "forged"}).status_code == 403
        assert c.post("/api/v1/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        assert c.get("/api/v1/me").status_code == 401


def test_signed_out_before_a_restart_stays_signed_out(rig: WebRig) -> None:
    with rig.client() as c, rig.client() as api:
        cookie = page_sign_in(c, "can-bo-a")
        csrf = signed_in_page(c)
        bearer = api_sign_in(api, "can-bo-b")
        assert len(rows(rig)) == 2
        # Sign out with the page's form, and through the API.
        r = c.post("/logout", data={"csrf_token": csrf or ""})
        assert r.status_code == 303
        assert api.post("/api/v1/logout", headers=bearer).status_code == 204
        assert rows(rig) == []

        rig.restart()

        # The old cookie (as a browser that kept it would send it) no longer signs in.
        c.cookies.set("loa_session", cookie)
        assert signed_in_page(c) is None
        assert c.get("/api/v1/me").status_code == 401
        assert api.get("/api/v1/me", headers=bearer).status_code == 401


def test_a_session_unused_for_eight_hours_ends_also_across_a_restart(rig: WebRig) -> None:
    with rig.client() as c:
        cookie = page_sign_in(c, "can-bo-a")
        # Used again shortly before 8 hours: 8 hours from this last use, not from sign-in.
        rig.clock_skew = IDLE_S - 60
        assert signed_in_page(c)
        rig.restart()
        rig.clock_skew += IDLE_S - 60
        assert signed_in_page(c)
        [row] = rows(rig)
        assert row["user_name"] == "can-bo-a"
        # Then 8 hours and a second without use: signed out, and the row is gone.
        rig.clock_skew += IDLE_S + 1
        rig.restart()
        assert c.cookies.get("loa_session") == cookie
        assert c.get("/api/v1/me").status_code == 401
        assert rows(rig) == []
        assert signed_in_page(c) is None


def test_a_disabled_user_or_a_new_password_ends_sessions_across_a_restart(
    rig: WebRig,
) -> None:
    with rig.client() as a, rig.client() as b, rig.client() as manager:
        page_sign_in(a, "can-bo-a")
        bearer = api_sign_in(b, "can-bo-b")
        page_sign_in(manager, "quan-ly")
        assert len(rows(rig)) == 3
        rig.stop()  # the controller is stopped (no request can drop a session meanwhile)
        set_disabled(rig.users_file, "can-bo-a")  # loa-controller user disable can-bo-a
        set_password(rig.users_file, "can-bo-b", "mat-khau-moi-456")  # ... user passwd
        rig.restart()

        assert a.get("/api/v1/me").status_code == 401
        assert signed_in_page(a) is None
        assert b.get("/api/v1/me", headers=bearer).status_code == 401
        # Those rows are deleted on sight; the untouched user stays signed in.
        assert [r["user_name"] for r in rows(rig)] == ["quan-ly"]
        assert manager.get("/api/v1/me").json()["name"] == "quan-ly"
        # The new password signs in.
        r = b.post("/api/v1/login", json={"name": "can-bo-b", "password": "mat-khau-moi-456"})
        assert r.status_code == 200


def test_a_new_password_ends_the_sessions_of_a_running_controller(rig: WebRig) -> None:
    with rig.client() as c:
        bearer = api_sign_in(c, "can-bo-a")
        assert c.get("/api/v1/me", headers=bearer).status_code == 200
        before = rig.users_file.stat()
        set_password(rig.users_file, "can-bo-a", "mat-khau-moi-456")
        same_tick(rig.users_file, before)
        assert c.get("/api/v1/me", headers=bearer).status_code == 401
        assert rows(rig) == []


def test_the_store_holds_a_hash_of_the_session_id_never_the_id(rig: WebRig) -> None:
    with rig.client() as c, rig.client() as api:
        cookie = page_sign_in(c, "can-bo-a")
        token = api_sign_in(api, "quan-ly")["Authorization"].removeprefix("Bearer ")
        csrf = signed_in_page(c)
        found = {r["user_name"]: r for r in rows(rig)}
        assert found["can-bo-a"]["id_sha256"] == sha256(cookie)
        assert found["quan-ly"]["id_sha256"] == sha256(token)
        assert found["can-bo-a"]["csrf"] == csrf
        for row in found.values():
            for value in row.values():
                assert cookie not in str(value)
                assert token not in str(value)
        # Nor anywhere in the database's files (SQLite: the file and its write-ahead log).
        db = rig.tmp / "controller.db"
        for path in (db, db.with_name(db.name + "-wal")):
            if path.exists():
                data = path.read_bytes()
                assert cookie.encode() not in data
                assert token.encode() not in data


# --- StoredSessions with an injected clock, on SQLite and PostgreSQL ----------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'controller.db'}"
    else:
        yield from postgres_database("loa_test_sessions")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Controllers:
    """Stores and session stores on one database URL, as successive controller runs."""

    def __init__(self, url: str, clock: Clock, purge_every_s: float = 600.0) -> None:
        self.url, self.clock, self.purge_every_s = url, clock, purge_every_s
        self.stores: list[Store] = []
        self.sessions = self.restart()

    def restart(self) -> StoredSessions:
        if self.stores:
            self.stores[-1].close()
        self.stores.append(Store(self.url))
        self.sessions = StoredSessions(
            self.stores[-1], clock=self.clock, purge_every_s=self.purge_every_s
        )
        self.sessions.fingerprint_of = lambda user: f"fp-{user}"
        return self.sessions

    @property
    def store(self) -> Store:
        return self.stores[-1]

    def count(self) -> int:
        with self.store.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(web_sessions)).scalar_one())

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def runs(store_url: str, clock: Clock) -> Iterator[Controllers]:
    c = Controllers(store_url, clock)
    try:
        yield c
    finally:
        c.close()


def test_a_session_survives_a_restart_as_it_was(runs: Controllers, clock: Clock) -> None:
    made = runs.sessions.create("can-bo-a")
    assert made.fingerprint == "fp-can-bo-a"
    clock.now += 30
    runs.restart()
    found = runs.sessions.get(made.id)
    assert found is not None
    assert (found.id, found.user, found.csrf, found.fingerprint) == (
        made.id, "can-bo-a", made.csrf, "fp-can-bo-a"
    )
    assert found.created == pytest.approx(made.created, abs=1e-5)
    assert found.last_used == clock.now
    assert runs.sessions.get(made.id + "x") is None
    assert runs.sessions.get(None) is None
    runs.sessions.drop(made.id)
    runs.restart()
    assert runs.sessions.get(made.id) is None
    assert runs.count() == 0


def test_the_idle_rule_is_the_in_memory_one(runs: Controllers, clock: Clock) -> None:
    """Used at exactly `idle` after the last use it holds; a moment later it is over. The
    in-memory store, on the same clock, answers the same at every step."""
    memory = Sessions(clock=clock)
    stored, kept = runs.sessions.create("can-bo-a"), memory.create("can-bo-a")
    answers: list[tuple[bool, bool]] = []

    def use(after: float, restart: bool = False) -> None:
        clock.now += after
        sessions = runs.restart() if restart else runs.sessions
        answers.append((sessions.get(stored.id) is not None, memory.get(kept.id) is not None))

    use(IDLE_S)
    use(IDLE_S, restart=True)
    use(IDLE_S - 1)
    use(IDLE_S + 0.5, restart=True)
    assert answers == [(True, True), (True, True), (True, True), (False, False)]
    assert runs.count() == 0  # the expired row went when it was looked up


class Statements:
    """The first word of each SQL statement a store's engine runs."""

    def __init__(self, store: Store) -> None:
        self.seen: list[str] = []
        event.listen(store.engine, "before_cursor_execute", self._seen)
        dialect = store.engine.dialect
        #: What one use of a live session costs.
        self.one_use = ["UPDATE"] if dialect.update_returning else ["SELECT", "UPDATE"]

    def _seen(self, *args: Any) -> None:
        self.seen.append(str(args[2]).split()[0].upper())

    def take(self) -> list[str]:
        seen, self.seen = self.seen, []
        return seen


def test_each_use_is_one_statement(runs: Controllers, clock: Clock) -> None:
    made = runs.sessions.create("can-bo-a")
    statements = Statements(runs.store)
    for _ in range(5):
        clock.now += 60
        assert runs.sessions.get(made.id) is not None
    assert statements.take() == statements.one_use * 5


def test_an_expired_row_goes_when_looked_up_and_at_a_sign_in(
    store_url: str, clock: Clock
) -> None:
    runs = Controllers(store_url, clock, purge_every_s=100 * IDLE_S)  # no periodic purge
    try:
        first, second = runs.sessions.create("can-bo-a"), runs.sessions.create("can-bo-b")
        clock.now += IDLE_S + 1
        assert runs.count() == 2
        assert runs.sessions.get(first.id) is None
        assert runs.count() == 1
        runs.sessions.create("quan-ly")
        assert runs.count() == 1  # `second` went at that sign-in
        assert runs.sessions.get(second.id) is None
    finally:
        runs.close()


def test_expired_rows_nobody_looks_up_go_at_start_and_every_ten_minutes(
    store_url: str, clock: Clock
) -> None:
    runs = Controllers(store_url, clock, purge_every_s=600)
    try:
        lost = runs.sessions.create("can-bo-b")
        live = runs.sessions.create("can-bo-a")
        clock.now += IDLE_S - 10
        assert runs.sessions.get(live.id) is not None  # purges: nothing expired yet
        statements = Statements(runs.store)
        clock.now += 20  # `lost` expired 10 s ago; `live` was used 20 s ago
        assert runs.sessions.get(live.id) is not None
        assert statements.take() == statements.one_use  # no purge yet
        assert runs.count() == 2
        clock.now += 600
        statements.take()
        assert runs.sessions.get(live.id) is not None
        assert statements.take() == [*statements.one_use, "DELETE"]
        assert runs.count() == 1
        # After a restart, the first use purges.
        lost = runs.sessions.create("can-bo-b")
        clock.now += IDLE_S - 10
        assert runs.sessions.get(live.id) is not None
        clock.now += 20
        runs.restart()
        statements = Statements(runs.store)
        assert runs.sessions.get(live.id) is not None
        assert statements.take() == [*statements.one_use, "DELETE"]
        assert runs.count() == 1
        assert runs.sessions.get(lost.id) is None
    finally:
        runs.close()


def test_where_the_database_has_no_update_returning(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite before 3.35: a use is a SELECT and an UPDATE, with the same rules."""
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    runs = Controllers(url, clock, purge_every_s=100 * IDLE_S)  # no periodic purge here
    try:
        monkeypatch.setattr(runs.store.engine.dialect, "update_returning", False)
        made = runs.sessions.create("can-bo-a")
        statements = Statements(runs.store)
        clock.now += IDLE_S
        found = runs.sessions.get(made.id)
        assert found is not None
        assert (found.user, found.csrf, found.last_used) == ("can-bo-a", made.csrf, clock.now)
        assert statements.take() == ["SELECT", "UPDATE"]
        clock.now += IDLE_S
        assert runs.sessions.get(made.id) is not None  # 8 h from the last use, not sign-in
        clock.now += IDLE_S + 0.5
        statements.take()
        assert runs.sessions.get(made.id) is None
        assert statements.take() == ["SELECT", "DELETE"]
        assert runs.count() == 0
    finally:
        runs.close()


def test_drop_user_ends_every_session_of_that_user(runs: Controllers) -> None:
    a1, a2 = runs.sessions.create("can-bo-a"), runs.sessions.create("can-bo-a")
    b = runs.sessions.create("can-bo-b")
    runs.sessions.drop_user("can-bo-a")
    runs.restart()
    found: list[Session | None] = [runs.sessions.get(s.id) for s in (a1, a2, b)]
    assert [s.user if s else None for s in found] == [None, None, "can-bo-b"]
