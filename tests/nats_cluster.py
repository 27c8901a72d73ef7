"""Three nats-server processes on loopback, clustered, with JetStream and MQTT listeners:
a real broker cluster whose nodes share the MQTT sessions (NATS keeps them in JetStream,
replicated), so a client can lose its node and carry on at another with its session."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

from conftest import free_port

from protocol.mqtt import BrokerAddress

NATS = "/usr/sbin/nats-server"


def nats_server() -> str | None:
    return shutil.which("nats-server") or (NATS if Path(NATS).exists() else None)


class NatsNode:
    def __init__(self, binary: str, workdir: Path, name: str, routes: list[int],
                 route_port: int) -> None:  # fmt: skip
        self.name = name
        self.mqtt_port = free_port()
        self.log = workdir / f"{name}.log"
        (workdir / name).mkdir(parents=True)
        self.conf = workdir / f"{name}.conf"
        route_urls = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
        self.conf.write_text(
            f"server_name: {name}\nlisten: 127.0.0.1:{free_port()}\n"
            f'jetstream {{ store_dir: "{workdir / name}", max_mem: 64M, max_file: 256M }}\n'
            f"cluster {{ name: loa, listen: 127.0.0.1:{route_port}, routes: [{route_urls}] }}\n"
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}\n",
            encoding="utf-8",
        )
        self._binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress(host="127.0.0.1", port=self.mqtt_port)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([self._binary, "-c", str(self.conf)], stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def said(self, text: str) -> bool:
        try:
            return text in self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False


class NatsCluster:
    """Three clustered nodes; ready() once JetStream has a leader and MQTT listens."""

    def __init__(self, binary: str, workdir: Path) -> None:
        routes = [free_port() for _ in range(3)]
        self.nodes = [NatsNode(binary, workdir, f"n{i + 1}", routes, routes[i])
                      for i in range(3)]  # fmt: skip

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            node.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(n.said("Listening for MQTT clients") for n in self.nodes) and any(
                n.said("new JetStream cluster metadata leader")
                or n.said("JetStream cluster new metadata leader") for n in self.nodes
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the NATS cluster did not form in {timeout} s; see {self.nodes[0].log}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
