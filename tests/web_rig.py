"""A real controller with its web app, real agents (null output) on a real broker, and users.

Shared by the urgent-service, API, CLI, CAP and browser tests. The fleet: province
tinh-t with commune xa-a (villages ap-a1: a-01, a-02; ap-a2: a-03) and commune xa-b
(b-01); the province speaks with the Southern voice, xa-b with the Central one. Users:
can-bo-a (operator of xa-a), can-bo-b (operator of xa-b), quan-ly (manager of the
province); every password is PASSWORD.
"""

from __future__ import annotations

import os
import shutil
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from conftest import free_port, require, wait_until
from fastapi import FastAPI
from identity_support import registered_identity

from controller.config import CapConfig
from controller.main import Controller, Settings
from controller.samples import tone
from controller.users import User, hash_password, save_users
from controller.web.app import create_app
from controller.web.context import WebContext
from controller.web.proxies import Network
from controller.web.server import WebServer, build_context
from device_agent.agent import Agent
from device_agent.output import NullBackend, OutputBackend
from protocol.clock import SystemClock
from protocol.mqtt import BrokerAddress, MqttLink
from protocol.signing import Verifier, generate_keypair, load_public_key

PASSWORD = "mat-khau-thu-123"


def same_tick(path: Path, before: os.stat_result) -> None:
    """Give a file just rewritten the mtime it had before, as a coarse file-system clock
    (a second on some, a few milliseconds on others) would: its change must be seen all
    the same."""
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
TZ = ZoneInfo("Asia/Ho_Chi_Minh")

FLEET = """\
province:
  id: tinh-t
  name: Tỉnh Thử
  code: "93"
  voice: mien-nam
  communes:
    - id: xa-a
      name: Xã An
      code: "31399"
      villages:
        - id: ap-a1
          name: Ấp Một
          clusters:
            - {id: a-01, name: Chợ An, lat: 9.80, lon: 105.80}
            - {id: a-02, name: Trường An, lat: 9.81, lon: 105.81}
        - id: ap-a2
          name: Ấp Hai
          clusters:
            - {id: a-03, name: Bến đò An, lat: 9.70, lon: 105.70}
    - id: xa-b
      name: Xã Bình
      code: "31400"
      voice: mien-trung
      clusters:
        - {id: b-01, name: Trụ sở Bình, lat: 9.50, lon: 105.50}
"""

PLAYLIST = """\
programmes:
  - id: luat-tuan
    name: Pháp luật hằng tuần
    requires_approval: true
    bulletins:
      - files: [tone.wav]
    schedule:
      times: ["06:00"]
    targets: [xa-a]
"""

USERS = [
    ("can-bo-a", "operator", ["xa-a"], "Nguyễn Văn An"),
    ("can-bo-b", "operator", ["xa-b"], "Trần Thị Bình"),
    ("quan-ly", "manager", ["tinh-t"], "Lê Quản Lý"),
]


class WebRig:
    def __init__(
        self,
        tmp: Path,
        broker: BrokerAddress,
        cap: CapConfig | None = None,
        *,
        fleet: str = FLEET,
        tls: tuple[Path, Path] | None = None,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        """`tls`: (certificate, key) to serve HTTPS with; `trusted_proxies`: the app's
        web.trusted_proxies; `fleet`: the fleet file's text."""
        require("ffmpeg", shutil.which("ffmpeg") is not None, "apt-get install ffmpeg")
        self.tmp = tmp
        generate_keypair(tmp / "controller.key", tmp / "controller.pub")
        (tmp / "fleet.yaml").write_text(fleet, encoding="utf-8")
        (tmp / "playlists").mkdir()
        (tmp / "playlists" / "luat.yaml").write_text(PLAYLIST, encoding="utf-8")
        tone(tmp / "playlists" / "tone.wav", 1.0)
        self.users_file = tmp / "users.yaml"
        save_users(self.users_file, [
            User(name=n, role=r, scope=s, display_name=d,
                 password=hash_password(PASSWORD))
            for n, r, s, d in USERS
        ])
        self.settings = Settings(
            broker=broker, fleet_path=tmp / "fleet.yaml", playlist_paths=[tmp / "playlists"],
            store_url=f"sqlite:///{tmp / 'controller.db'}", private_key=tmp / "controller.key",
            content_dir=tmp / "content", timezone=TZ, reload_interval_s=0,
        )
        self.controller = Controller(self.settings)
        self.broker = broker
        self.agents: dict[str, Agent] = {}
        #: The output of an agent started after this is set (null if not named here).
        self.outputs: dict[str, OutputBackend] = {}
        self.cap = cap
        self.tls = tls
        self.trusted_proxies = trusted_proxies
        #: Seconds added to the wall clock the web sessions are measured on.
        self.clock_skew = 0.0
        self.ctx, self.app = self._web()
        self.server: WebServer | None = None

    def _web(self) -> tuple[WebContext, FastAPI]:
        ctx = build_context(
            self.controller, self.users_file, self.tmp / "web", tz=TZ,
            session_clock=lambda: time.time() + self.clock_skew,
            trusted_proxies=self.trusted_proxies,
        )
        if self.cap is not None:
            from controller.cap import CapIntake

            ctx.cap = CapIntake(ctx.service, self.cap)
        return ctx, create_app(ctx)

    @property
    def service(self) -> Any:
        return self.ctx.service

    def start(self, agents: list[str] | None = None, web: bool = True) -> None:
        self.controller.start()
        for cid in agents if agents is not None else sorted(self.controller.fleet.clusters):
            self.start_agent(cid)
        if web:
            self.server = WebServer(self.app, "127.0.0.1", free_port(), tls=self.tls)
            self.server.start()

    def restart(self) -> None:
        """Stop the web app and the controller, and start new ones on the same store, users
        file and port, as a restart of `loa-controller run` would (the agents stay up)."""
        port = self.server.port if self.server is not None else free_port()
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.controller.stop()
        self.controller = Controller(self.settings)
        self.ctx, self.app = self._web()
        self.controller.start()
        self.server = WebServer(self.app, "127.0.0.1", port, tls=self.tls)
        self.server.start()

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def client(self) -> httpx.Client:
        """An HTTP client of the running web app (a generous timeout: CI is slow); over
        HTTPS it trusts the rig's certificate only."""
        if self.tls is None:
            return httpx.Client(base_url=self.url, timeout=60)
        return httpx.Client(base_url=self.url, timeout=60,
                            verify=ssl.create_default_context(cafile=str(self.tls[0])))

    def start_agent(self, cid: str) -> Agent:
        fleet = self.controller.fleet
        data_dir = self.tmp / "agents" / cid
        identity = registered_identity(self.controller, cid, data_dir)
        clock = SystemClock()
        started = clock.now()
        agent = Agent(
            cluster_id=cid,
            link=MqttLink(self.broker, f"loa-agent-{cid}", will=identity.will(cid, started),
                          clean_session=True),
            verifier=Verifier(load_public_key(self.tmp / "controller.pub")),
            output=self.outputs.get(cid) or NullBackend(), clock=clock, data_dir=data_dir,
            groups=fleet.groups_of(cid), durable=False, identity=identity,
        )
        agent.start()
        self.agents[cid] = agent
        wait_until(agent.ready, 20, f"agent {cid} to connect")
        wait_until(lambda: self.state(cid) == "online", 20, f"the controller to see {cid} online")
        return agent

    def state(self, cid: str) -> str:
        return {r.id: r.state for r in self.controller.store.clusters.fleet_rows()}.get(cid, "?")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        for agent in self.agents.values():
            agent.stop()
        self.controller.stop()

    def user(self, name: str) -> User:
        found = self.ctx.users.get(name)
        assert found is not None
        return found

    def wait_states(
        self, play_id: str, wanted: dict[str, set[str]], timeout: float = 30
    ) -> dict[str, str]:
        """Wait until each cluster's state of the play is one of the wanted ones."""
        store = self.controller.store

        def reached() -> bool:
            states = store.events.play_states(play_id)
            return all(states.get(c) in kinds for c, kinds in wanted.items())

        wait_until(reached, timeout, f"{play_id} to reach {wanted}")
        return store.events.play_states(play_id)
