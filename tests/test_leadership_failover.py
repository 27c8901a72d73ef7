"""Two `loa-controller run` processes on one real PostgreSQL store, a real mosquitto and a
real agent process: the leader is killed with -9 shortly before a scheduled play is due
to be sent; the other takes the leadership, sends it, and it plays once, on time; no
event is lost (the agent's outbox sequence arrives unbroken), the web session made
before the failover still works, and the standby forwarded a send to the leader while
there was one (and refused one, saying who led, while the dead leader still held the
lease).

The play is scheduled at the next whole minute far enough ahead (playlists say HH:MM),
with a lead time that makes it due a few seconds after both controllers are up: the
test lasts that minute at most.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import MosquittoBroker, free_port, postgres_database, require, wait_until
from fleet_rig import ROOT, FleetRig

from controller.samples import tone
from controller.store import Store
from controller.users import User, hash_password, save_users

pytestmark = pytest.mark.slow

ME = "ldr-01"
TZ = ZoneInfo("Asia/Ho_Chi_Minh")
TTL_S = 3
PASSWORD = "mat-khau-dai-du-12"
ON_TIME_S = 1.0


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_database("loa_test_failover")


class Web:
    """The JSON API of one controller process."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, body: Any = None, token: str | None = None
             ) -> tuple[int, dict[str, str], Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if data else {}
        if token:
            headers["authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers,
                                         method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, dict(answer.headers), json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")

    def page(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=30) as answer:
            return answer.read().decode()  # type: ignore[no-any-return] # bytes.decode

    def ready(self) -> dict[str, Any] | None:
        try:
            return self.call("GET", "/readyz")[2]  # type: ignore[no-any-return] # JSON
        except OSError:
            return None

    def role(self) -> str | None:
        found = self.ready()
        return found.get("role") if found else None


def start(rig: FleetRig, name: str) -> subprocess.Popen[bytes]:
    log = (rig.tmp / f"{name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "-v", "run", "--config",
         str(rig.tmp / f"{name}.yaml")],
        cwd=rig.tmp, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
        stderr=subprocess.STDOUT,
    )


class Pair:
    """Two controller processes (a, b) on one PostgreSQL store, an agent process, with a
    programme needing approval that airs at `starts` and is due to be sent at `due`."""

    def __init__(self, tmp_path: Path, broker: MosquittoBroker, pg_url: str) -> None:
        now = datetime.now(UTC)
        # Due (sent) ~14 s from now; airs at the next whole minute at least 22 s away.
        starts = (now + timedelta(seconds=22)).astimezone(TZ)
        if starts.second or starts.microsecond:
            starts = starts.replace(second=0, microsecond=0) + timedelta(minutes=1)
        self.starts = starts.astimezone(UTC)
        lead_s = math.floor((starts - now).total_seconds() - 14)
        self.due = self.starts - timedelta(seconds=lead_s)
        self.play_id = f"tin-chieu@{self.starts:%Y%m%dT%H%M%SZ}"
        self.tmp = tmp_path
        self.rig = rig = FleetRig(
            tmp_path, broker, [ME], store_url=pg_url,
            controller_extra=f"lead_time: {lead_s}s\nleadership:\n  ttl: {TTL_S}s\n",
        )
        (tmp_path / "playlists" / "audio").mkdir()
        tone(tmp_path / "playlists" / "audio" / "tin.wav", 2.0, freq=440)
        (tmp_path / "playlists" / "tin.yaml").write_text(
            "programmes:\n  - id: tin-chieu\n    name: Tin buổi chiều\n    level: normal\n"
            "    bulletins:\n      - title: Tin buổi chiều\n        files: [audio/tin.wav]\n"
            f"    schedule:\n      times: [\"{starts:%H:%M}\"]\n    targets: [all]\n"
            "    lateness: 1m\n    requires_approval: true\n", encoding="utf-8")
        save_users(tmp_path / "users.yaml", [User(
            name="quan-ly", role="manager", scope=["tinh-rig"],
            password=hash_password(PASSWORD))])
        self.webs: dict[str, Web] = {}
        base = rig.controller_config.read_text(encoding="utf-8")
        for name in ("a", "b"):
            self.webs[name] = Web(free_port())
            text = base.replace(f"  ttl: {TTL_S}s\n",
                                f"  ttl: {TTL_S}s\n  advertised_url: {self.webs[name].url}\n")
            text += (f"web:\n  port: {self.webs[name].url.rsplit(':', 1)[1]}\n"
                     f"  users_file: users.yaml\n  work_dir: web-{name}\n")
            (tmp_path / f"{name}.yaml").write_text(text, encoding="utf-8")
        rig.reader = Store(pg_url)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        """a leads, b stands by, the agent is online."""
        self.procs["a"] = start(self.rig, "a")
        wait_until(lambda: self.webs["a"].role() == "leader", 30, "a to lead")
        self.procs["b"] = start(self.rig, "b")
        wait_until(lambda: self.webs["b"].role() == "standby", 30, "b to stand by")
        self.rig.start_agent(ME)
        self.rig.wait_online(ME, 30)

    def holder(self, name: str) -> str:
        """The lease holder id of a controller process (host:pid:)."""
        return f"{os.uname().nodename}:{self.procs[name].pid}:"

    def sent(self) -> dict[datetime, tuple[str, str | None]]:
        return self.rig.store.dispatches.of_programme("tin-chieu")

    def aired_once_on_time(self) -> float:
        """The play aired once, on time, every event arrived once; how late it started."""
        rig = self.rig
        assert rig.wait_final(self.play_id, ME, timeout=90) == "finished"
        late = (rig.at(self.play_id, ME, "playing") - self.starts).total_seconds()
        assert 0 <= late < ON_TIME_S, late
        kinds = rig.kinds(self.play_id, ME)
        assert kinds.count("playing") == 1, kinds
        assert kinds.count("received") == 1, kinds
        # One airing, one WAV (the file output names it with the play id, '@' as '_').
        aired = sorted((self.tmp / f"played-{ME}").glob(
            f"*{self.play_id.replace('@', '_')}.wav"))
        assert len(aired) == 1, aired
        rig.wait_unbroken_outbox(ME)
        return late

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.rig.stop_agents()
        assert self.rig.reader is not None
        self.rig.reader.close()
        for name in ("a", "b"):
            log = self.tmp / f"{name}.log"
            if log.exists():
                print(f"--- {name} ---\n" + log.read_text(encoding="utf-8")[-3000:])


@pytest.fixture
def pair(tmp_path: Path, mosquitto_broker: MosquittoBroker, pg_url: str) -> Iterator[Pair]:
    require("ffmpeg", shutil.which("ffmpeg") is not None, "apt-get install ffmpeg")
    made = Pair(tmp_path, mosquitto_broker, pg_url)
    try:
        made.start()
        yield made
    finally:
        made.close()


def test_the_leader_killed_before_a_scheduled_play_another_sends_it_once_on_time(
    pair: Pair
) -> None:
    rig, webs = pair.rig, pair.webs
    # A session made on the standby (sessions are in the store); a send made on the
    # standby goes to the leader.
    status, _, signed = webs["b"].call(
        "POST", "/api/v1/login", {"name": "quan-ly", "password": PASSWORD})
    assert status == 200, signed
    token = signed["token"]
    status, headers, approved = webs["b"].call("POST", "/api/v1/approvals/tin-chieu",
                                               token=token)
    assert status == 200, approved
    forwarded = {k.lower(): v for k, v in headers.items()}["x-loa-forwarded-to"]
    assert forwarded.startswith(pair.holder("a"))
    assert pair.sent() == {}
    # The standby's pages say so, and who leads.
    note = webs["b"].page("/login")
    assert 'id="standby"' in note
    assert pair.holder("a") in note
    assert 'id="standby"' not in webs["a"].page("/login")

    # kill -9 the leader one second before the play is due to be sent.
    wait_until(lambda: datetime.now(UTC) >= pair.due - timedelta(seconds=1), 60,
               "one second before the play is due")
    assert pair.sent() == {}, "sent before the kill"
    killed = time.monotonic()
    killed_at = datetime.now(UTC)
    pair.procs["a"].send_signal(signal.SIGKILL)
    pair.procs["a"].wait(10)

    # While the dead leader's lease lasts, a send on the standby is refused, saying so.
    status, _, refused = webs["b"].call("POST", "/api/v1/approvals/tin-chieu", token=token)
    if status == 503:  # (b may already lead on a very slow machine: then it is 200)
        assert "stands by" in refused["error"]
        assert "did not answer" in refused["error"]
    wait_until(lambda: webs["b"].role() == "leader", 15, "b to lead")
    ready_s = time.monotonic() - killed
    wait_until(pair.sent, 15, "b to send the play")
    sent_s = time.monotonic() - killed
    assert pair.sent() == {pair.starts: ("sent", None)}

    # The session made before the failover still works on the new leader.
    status, _, me = webs["b"].call("GET", "/api/v1/me", token=token)
    assert (status, me["name"]) == (200, "quan-ly")
    assert 'id="standby"' not in webs["b"].page("/login")

    late = pair.aired_once_on_time()
    lease = rig.store.leases.current()
    assert lease is not None
    assert lease.term == 2
    assert lease.holder.startswith(pair.holder("b"))
    assert lease.acquired_at >= killed_at
    assert "now leads (term 2)" in (pair.tmp / "b.log").read_text(encoding="utf-8")
    # Who leads, as `fleet`, /readyz and /metrics say it.
    fleet = subprocess.run(
        [sys.executable, "-m", "controller.cli", "--lang", "en", "fleet", "--config",
         str(pair.tmp / "b.yaml")],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    first = fleet.stdout.splitlines()[0]
    assert first.startswith(f"leader: {pair.holder('b')}"), fleet.stdout
    assert f"(web {webs['b'].url}), leading since " in first, first
    assert first.endswith(", term 2"), first
    ready = webs["b"].ready()
    assert ready is not None
    assert ready["leadership"]["leader"] == lease.holder
    assert ready["leadership"]["term"] == 2
    with urllib.request.urlopen(webs["b"].url + "/metrics", timeout=10) as answer:
        assert "loa_controller_leader 1.0" in answer.read().decode()
    print(f"failover: kill -9 at {killed_at:%H:%M:%S.%f}; the new leader ready after "
          f"{ready_s:.2f} s, the play sent after {sent_s:.2f} s (TTL {TTL_S} s); it "
          f"started {late:.3f} s after its time")


def test_a_leader_frozen_past_its_lease_steps_down_and_comes_back_standing_by(
    pair: Pair
) -> None:
    """SIGSTOP the leader (its renewals stop, its broker connection goes quiet) past its
    lease: the other takes over and sends the play; SIGCONT: the old leader steps down at
    once (its deadline passed) and starts again as a standby. Never both leading."""
    webs = pair.webs
    status, _, signed = webs["a"].call(
        "POST", "/api/v1/login", {"name": "quan-ly", "password": PASSWORD})
    assert status == 200, signed
    assert webs["a"].call("POST", "/api/v1/approvals/tin-chieu", token=signed["token"])[0] \
        == 200
    wait_until(lambda: datetime.now(UTC) >= pair.due - timedelta(seconds=2), 60,
               "two seconds before the play is due")
    os.kill(pair.procs["a"].pid, signal.SIGSTOP)
    wait_until(lambda: webs["b"].role() == "leader", 15, "b to lead")
    wait_until(pair.sent, 15, "b to send the play")
    os.kill(pair.procs["a"].pid, signal.SIGCONT)
    roles: list[tuple[str | None, str | None]] = []

    def said(line: str) -> bool:
        roles.append((webs["a"].role(), webs["b"].role()))
        return line in (pair.tmp / "a.log").read_text(encoding="utf-8")

    wait_until(lambda: said("steps down from leading (term 1): no renewal of the lease"), 15,
               "a to step down")
    wait_until(lambda: said("starting again as a standby"), 30, "a to start again")
    # The same process (it executes itself again), serving again, standing by.
    wait_until(lambda: said("claiming the leadership") and roles[-1] == ("standby", "leader"),
               30, "a to stand by")
    assert ("leader", "leader") not in roles, roles
    assert pair.procs["a"].poll() is None
    pair.aired_once_on_time()
    assert pair.sent() == {pair.starts: ("sent", None)}
