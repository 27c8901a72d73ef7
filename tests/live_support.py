"""A running controller and real agents on a real broker, for the live scheduling tests.

`LiveRig` writes a controller config into a test folder (fleet, playlists, key, SQLite
store, content folder), builds the `Controller` from it exactly as `loa-controller run`
does, and starts agents from device_agent.agent with the null output on the same broker:
each on its own threads, or (shared=True) all on one NetworkLoop and one WorkerPool, as
a simulated fleet runs them (scripts/sim_network.py, scripts/sim_workers.py).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path

from conftest import BrokerUnderTest, wait_until
from identity_support import registered_identity
from sim_network import FleetLink, NetworkLoop
from sim_workers import WorkerPool

from controller.config import load_controller_config
from controller.main import Controller, Settings
from device_agent.agent import Agent
from device_agent.output import NullBackend
from protocol.clock import Clock, SystemClock
from protocol.mqtt import MqttLink
from protocol.signing import Verifier, generate_keypair, load_public_key

ROOT = Path(__file__).resolve().parent.parent


class LiveRig:
    def __init__(
        self,
        folder: Path,
        broker: BrokerUnderTest,
        *,
        fleet: Path | str,
        playlists: Path | None = None,
        clock: Clock | None = None,
        reload_interval_s: float = 0.2,
        shared: bool = False,
    ) -> None:
        self.folder = folder
        self.loop = NetworkLoop() if shared else None
        self.pool = WorkerPool(2) if shared else None
        if self.loop is not None and self.pool is not None:
            self.loop.start()
            self.pool.start()
        self.broker = broker
        self.clock = clock or SystemClock()
        self.fleet_path = folder / "fleet.yaml"
        if isinstance(fleet, Path):
            shutil.copy(fleet, self.fleet_path)
        else:
            self.fleet_path.write_text(fleet, encoding="utf-8")
        self.playlists = playlists or folder / "playlists"
        self.playlists.mkdir(parents=True, exist_ok=True)
        generate_keypair(folder / "keys" / "controller.key", folder / "keys" / "controller.pub")
        self.verifier = Verifier(load_public_key(folder / "keys" / "controller.pub"))
        self.config = folder / "controller.yaml"
        self.config.write_text(
            f"broker_url: {broker.url}\n"
            f"client_id: loa-controller-{folder.name[:40]}\n"
            f"fleet: {self.fleet_path}\n"
            f"playlists: [{self.playlists}]\n"
            "store_url: sqlite:///controller.db\n"
            "private_key: keys/controller.key\n"
            "content_dir: content\n",
            encoding="utf-8",
        )
        settings = Settings.from_config(load_controller_config(self.config))
        self.settings = dataclasses.replace(settings, reload_interval_s=reload_interval_s)
        self.controller = Controller(self.settings, clock=self.clock)
        self.agents: list[Agent] = []

    def start(self) -> Controller:
        self.controller.start()
        return self.controller

    def agent(self, cluster: str, groups: Sequence[str] = ()) -> Agent:
        data_dir = self.folder / "agents" / cluster
        identity = registered_identity(self.controller, cluster, data_dir)
        started = self.clock.now()
        will = identity.will(cluster, started)
        client_id = f"loa-agent-{cluster}"
        link = (
            MqttLink(self.broker.address, client_id, will=will)
            if self.loop is None
            else FleetLink(self.broker.address, client_id, will=will, loop=self.loop)
        )
        agent = Agent(
            cluster_id=cluster, link=link, verifier=self.verifier, output=NullBackend(),
            clock=self.clock, data_dir=data_dir, groups=groups,
            durable=False, pool=self.pool, identity=identity,
        )
        agent.start()
        self.agents.append(agent)
        wait_until(agent.ready, 10, f"agent {cluster} to connect")
        return agent

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.controller.stop()
        if self.loop is not None and self.pool is not None:
            self.pool.stop()
            self.loop.stop()
