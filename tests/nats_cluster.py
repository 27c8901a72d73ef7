"""Three nats-server processes on loopback, clustered, with JetStream and MQTT listeners:
a real broker cluster whose nodes share the MQTT sessions (NATS keeps them in JetStream,
replicated), so a client can lose its node and carry on at another with its session.

Each node is configured as docs/operations.md says: `mqtt { stream_replicas: 3 }`, so the
streams that hold the MQTT sessions, their messages and the retained messages are
replicated on all three nodes and survive the loss of any one (the consumers, one per
subscription of a session, take the streams' replicas). Without it nats-server picks the
number of `routes` listed in the node's config, at most 3: a node that lists only the two
others gets 2. `ack_wait` is how long a QoS 1 message sent to a client and not
acknowledged waits before it is sent again (30 s by default): a message on its way
through a node that dies is sent again after that long, so it is shortened here (and
documented) to bring that wait within a test's budget. Each node's monitoring port
answers /jsz (the streams, their replicas and consumers) and /connz (which node an MQTT
client is connected to)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from protocol.mqtt import BrokerAddress

NATS = "/usr/sbin/nats-server"
#: Replicas of the MQTT streams (sessions, messages, retained): every node of three.
STREAM_REPLICAS = 3
#: How long a QoS 1 message handed to a client waits for its PUBACK before it is sent
#: again (nats-server's default: 30 s).
ACK_WAIT = "5s"


def free_ports(count: int) -> list[int]:
    """count loopback ports free now and distinct: each held open until all are found (one
    at a time, the kernel may hand a port just released out again: two nodes' listeners
    on one port, and a node that cannot start)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def nats_server() -> str | None:
    return shutil.which("nats-server") or (NATS if Path(NATS).exists() else None)


class NatsNode:
    def __init__(self, binary: str, workdir: Path, name: str, routes: list[int],
                 route_port: int, ports: list[int] | None = None) -> None:  # fmt: skip
        """ports: its client, MQTT and monitoring ports (else free ones)."""
        self.name = name
        client_port, self.mqtt_port, self.monitor_port = ports or free_ports(3)
        self.log = workdir / f"{name}.log"
        (workdir / name).mkdir(parents=True)
        self.conf = workdir / f"{name}.conf"
        route_urls = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
        self.conf.write_text(
            f"server_name: {name}\nlisten: 127.0.0.1:{client_port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            f'jetstream {{ store_dir: "{workdir / name}", max_mem: 64M, max_file: 256M }}\n'
            f"cluster {{ name: loa, listen: 127.0.0.1:{route_port}, routes: [{route_urls}] }}\n"
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}, stream_replicas: {STREAM_REPLICAS},"
            f" ack_wait: {ACK_WAIT} }}\n",
            encoding="utf-8",
        )
        self._binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.mqtt_port

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress(host="127.0.0.1", port=self.mqtt_port)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([self._binary, "-c", str(self.conf)], stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def streams(self, consumers: bool = False) -> dict[str, dict[str, Any]]:
        """The JetStream streams this node knows (their config, cluster and state, and
        their consumers' if asked), by name, from its monitoring port's /jsz."""
        url = (f"http://127.0.0.1:{self.monitor_port}/jsz?accounts=true&streams=true"
               f"&config=true&consumers={'true' if consumers else 'false'}")  # fmt: skip
        with urllib.request.urlopen(url, timeout=5) as answer:
            jsz = json.load(answer)
        return {
            stream["name"]: stream
            for account in jsz.get("account_details") or []
            for stream in account.get("stream_detail") or []
        }

    def clients(self, client_id: str) -> int:
        """How many MQTT connections with this client id the node holds now."""
        url = f"http://127.0.0.1:{self.monitor_port}/connz?mqtt_client={client_id}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return len(json.load(answer).get("connections") or [])

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
        ports = free_ports(12)  # a route, client, MQTT and monitoring port for each
        routes = ports[:3]
        self.nodes = [NatsNode(binary, workdir, f"n{i + 1}", routes, routes[i],
                               ports[3 + 3 * i : 6 + 3 * i]) for i in range(3)]  # fmt: skip

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

    def node_of(self, client_id: str) -> NatsNode | None:
        """The running node the MQTT client is connected to (None: none, or several)."""
        on = [n for n in self.nodes if n.running and n.clients(client_id)]
        return on[0] if len(on) == 1 else None

    def consumer_replicas(self) -> dict[str, int]:
        """The replicas of every consumer of the MQTT messages stream (one per QoS 1
        subscription of a session), as a running node sees them."""
        node = next(n for n in self.nodes if n.running)
        stream = node.streams(consumers=True).get("$MQTT_msgs") or {}
        return {
            c["name"]: 1 + len((c.get("cluster") or {}).get("replicas") or [])
            for c in stream.get("consumer_detail") or []
        }

    def mqtt_streams_whole(self) -> bool:
        """Whether every MQTT stream (sessions, messages, retained) has a leader on a
        running node, STREAM_REPLICAS replicas configured, and every other node a current
        replica of it, as its leader sees them: a restarted node has caught up."""
        running = {n.name: n for n in self.nodes if n.running}
        try:
            views = {name: node.streams() for name, node in running.items()}
            mqtt = [name for name in next(iter(views.values())) if name.startswith("$MQTT_")]
            if len(mqtt) < 3:
                return False
            for stream in mqtt:
                leader = (views[next(iter(views))][stream].get("cluster") or {}).get("leader")
                if leader not in views or stream not in views[leader]:
                    return False
                seen = views[leader][stream]
                replicas = (seen.get("cluster") or {}).get("replicas") or []
                if (seen["config"].get("num_replicas") != STREAM_REPLICAS
                        or {r["name"] for r in replicas if r.get("current")}
                        != set(running) - {leader}):
                    return False
        except (OSError, ValueError, KeyError, StopIteration):
            return False  # a node not answering yet
        return True
