"""Shared fixtures: a real MQTT broker per test, on a free port.

`broker` is a private mosquitto process. Where mosquitto is not installed (and we are
not under CI, which must install it), it falls back to the embedded amqtt broker with
the same interface, so the suite still runs on a machine with only Python.
`mosquitto_broker` and `embedded_broker` pin one or the other.

Persistence is real: mosquitto 2.0 started as root (as CI runs the suite) drops to the
`mosquitto` user, which cannot write its persistence file into a 0700 test folder, so
the config names the user running the tests (`user`; ignored when not root). Fixtures
whose tests kill the broker check that it saves (`check_persistence`: the file is there
after a clean stop) before the test relies on it. `mosquitto_broker` autosaves every
second; `mosquitto_default_autosave` keeps mosquitto's default (30 minutes), as a
field broker configured with `persistence true` alone: killed -9, it has saved nothing
since it started.
"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

from controller.broker import EmbeddedBroker
from protocol import l10n
from protocol.mqtt import BrokerAddress

if TYPE_CHECKING:  # web_rig imports this module: at run time it is imported where used
    from web_rig import WebRig

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(component: str, found: bool, hint: str) -> None:
    """Skip when a component is missing, except under CI where that is a failure."""
    if found:
        return
    message = f"{component} is not installed here ({hint})"
    if IN_CI:
        pytest.fail(f"CI must install every component: {message}")
    pytest.skip(message)


POSTGRES_URL = os.environ.get(
    "LOA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def postgres_database(prefix: str) -> Iterator[str]:
    """The URL of a PostgreSQL database made for one test and dropped after it, on the
    server at LOA_TEST_POSTGRES_URL (default: 127.0.0.1:5432, user postgres). Skipped where
    no server answers or the driver (psycopg, the `test` extra) is missing; under CI
    either fails the test. Use with `yield from` in a fixture."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    base = make_url(POSTGRES_URL)
    try:
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
    except ImportError as exc:
        require(f"the PostgreSQL driver for {base.drivername}", False,
                f"{exc}; pip install psycopg")
        raise
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        admin.dispose()
        require(f"a PostgreSQL server at {base.render_as_string()}", False,
                f"none answers: {exc.orig}; set LOA_TEST_POSTGRES_URL")
        raise
    name = f"{prefix}_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    condition: Callable[[], object], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll condition until it is truthy; fail the test with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class BrokerUnderTest(Protocol):
    """What a test may do to its broker."""

    @property
    def port(self) -> int: ...
    @property
    def address(self) -> BrokerAddress: ...
    @property
    def url(self) -> str: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...
    def restart(self) -> None: ...


class MosquittoBroker:
    """A private mosquitto on a free loopback port that a test may stop, kill and restart."""

    def __init__(self, workdir: Path, *, autosave_interval: int | None = 1) -> None:
        """autosave_interval: seconds between saves of the in-memory state (None:
        mosquitto's default, 1800)."""
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # As root, mosquitto drops to this user: the one who can write workdir.
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            + (f"autosave_interval {autosave_interval}\n" if autosave_interval else "")
            + "max_queued_messages 100000\n"
            "max_inflight_messages 1000\n"
            "log_dest stderr\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def persistence_file(self) -> Path:
        return self.workdir / "mosquitto.db"

    def check_persistence(self) -> None:
        """Stop cleanly (mosquitto saves then), check that it wrote its persistence file,
        and start again: a test may then rely on what the broker saves."""
        self.stop()
        if not self.persistence_file.is_file() or self.persistence_file.stat().st_size == 0:
            log = (self.workdir / "mosquitto.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"mosquitto saved nothing to {self.persistence_file} on a clean stop: its "
                f"persistence does not work here (user, folder rights?). Its log:\n{log}"
            )
        self.start()

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress(host="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited; see {self.workdir}/mosquitto.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class EmbeddedTestBroker:
    """The embedded amqtt broker behind the test-broker interface; it keeps its port.

    amqtt runs in this process, so there is no process to kill: kill is stop. Unlike the
    mosquitto fixture it has no persistence: retained messages do not survive a restart.
    """

    def __init__(self) -> None:
        self._broker = EmbeddedBroker("127.0.0.1", 0)

    @property
    def address(self) -> BrokerAddress:
        return self._broker.address

    @property
    def url(self) -> str:
        return self._broker.url

    @property
    def port(self) -> int:
        return self._broker.port

    def start(self) -> None:
        self._broker.start()

    def stop(self) -> None:
        self._broker.stop()

    def kill(self) -> None:
        self._broker.stop()

    def restart(self) -> None:
        self._broker.stop()
        self._broker.start()


def have_mosquitto() -> bool:
    return shutil.which("mosquitto") is not None


def _mosquitto(
    tmp_path: Path, *, autosave_interval: int | None = 1, persistence_checked: bool = False
) -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(tmp_path / "broker", autosave_interval=autosave_interval)
    b.start()
    try:
        if persistence_checked:
            b.check_persistence()
        yield b
    finally:
        b.kill()


def _embedded() -> Iterator[EmbeddedTestBroker]:
    b = EmbeddedTestBroker()
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerUnderTest]:
    """mosquitto; the embedded broker where mosquitto is missing (never under CI)."""
    if have_mosquitto() or IN_CI:
        require("mosquitto", have_mosquitto(), "apt-get install mosquitto")
        yield from _mosquitto(tmp_path)
    else:
        yield from _embedded()


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """mosquitto saving its state every second, its persistence checked."""
    require("mosquitto", have_mosquitto(), "apt-get install mosquitto")
    yield from _mosquitto(tmp_path, persistence_checked=True)


@pytest.fixture
def mosquitto_default_autosave(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """mosquitto as docs/operations.md configures it (`persistence true`, the default
    autosave of 30 minutes), its persistence checked: what it saves on a clean stop
    comes back, what it took since its last start is lost when killed -9."""
    require("mosquitto", have_mosquitto(), "apt-get install mosquitto")
    yield from _mosquitto(tmp_path, autosave_interval=None, persistence_checked=True)


@pytest.fixture
def embedded_broker() -> Iterator[EmbeddedTestBroker]:
    yield from _embedded()


# --- CAP 1.2 (tests/test_cap.py, tests/test_cap_feed.py) -------------------------------------

VILLAGE_A = "<geocode><valueName>MA_XA</valueName><value>31399</value></geocode>"


def cap_xml(
    identifier: str = "VN-KTTV-2026-001",
    msg_type: str = "Alert",
    status: str = "Actual",
    area: str = VILLAGE_A,
    references: str = "",
    sent: str = "2026-10-20T06:00:00+07:00",
) -> bytes:
    """A CAP 1.2 alert from kttv@example.vn; by default a flood warning for commune xa-a
    (statistics code 31399) of tests/web_rig.py's fleet."""
    refs = f"<references>{references}</references>" if references else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier>
  <sender>kttv@example.vn</sender>
  <sent>{sent}</sent>
  <status>{status}</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>
  {refs}
  <info>
    <language>en-US</language>
    <category>Met</category><event>Flood</event>
    <urgency>Immediate</urgency><severity>Severe</severity><certainty>Likely</certainty>
    <headline>Flood warning</headline>
  </info>
  <info>
    <language>vi-VN</language>
    <category>Met</category><event>Lũ</event>
    <urgency>Immediate</urgency><severity>Severe</severity><certainty>Likely</certainty>
    <headline>Cảnh báo lũ trên sông Cái Côn</headline>
    <instruction>Bà con ven sông di chuyển lên chỗ cao</instruction>
    <area><areaDesc>Xã An</areaDesc>{area}</area>
  </info>
</alert>""".encode()


@pytest.fixture
def cap_rig(
    tmp_path: Path, broker: BrokerUnderTest, request: pytest.FixtureRequest
) -> Iterator[WebRig]:
    """A controller with its web app, agents and CAP intake (tests/web_rig.py).

    The CAP policy is "send" unless the test parametrizes cap_rig indirectly with another.
    """
    from web_rig import WebRig

    from controller.config import CapConfig

    require("espeak-ng", shutil.which("espeak-ng") is not None, "apt-get install espeak-ng")
    policy = getattr(request, "param", "send")
    # The test fleet is four clusters: a commune is 75 % of it, over the wide-area share.
    r = WebRig(tmp_path, broker.address, cap=CapConfig(policy=policy, repeat=1, max_share=1.0))
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(autouse=True)
def english_first() -> Iterator[None]:
    """Every test starts and ends with the process in English: a command line's main()
    run in the test's process sets the language for what follows (protocol.l10n)."""
    l10n.use("en")
    yield
    l10n.use("en")
