"""The benchmarks' private mosquitto: one process on a free loopback port, tuned, removed after.

The tuning (written into docs/benchmarks.md with every result):

- `max_queued_messages 10000`: a subscriber's QoS 1 queue beyond its in-flight window.
  The default (1000) is enough for one bulletin (a 5-minute one is 15 chunks), but a
  slow simulated agent must never have a chunk dropped by the broker during a bench.
- `max_inflight_messages 100`: QoS 1 messages sent to one subscriber before its PUBACKs
  come back (default 20); the broker need not stall a client that is busy writing a chunk.
- `set_tcp_nodelay true`: small packets (commands, acks) leave at once instead of waiting
  for Nagle's algorithm.
- `persistence false`: the benches measure delivery, not the broker's disk.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from protocol.mqtt import BrokerAddress

TUNING: tuple[tuple[str, str], ...] = (
    ("max_queued_messages", "10000"),
    ("max_inflight_messages", "100"),
    ("set_tcp_nodelay", "true"),
    ("persistence", "false"),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_version() -> str:
    try:
        out = subprocess.run(
            ["mosquitto", "-h"], capture_output=True, timeout=10, check=False
        ).stdout.decode(errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.strip().splitlines()[:1]
    return first[0].removeprefix("mosquitto version ").strip() if first else "unknown"


class PrivateMosquitto:
    """mosquitto on 127.0.0.1 and a free port, configured with TUNING."""

    def __init__(
        self, workdir: Path, tuning: tuple[tuple[str, str], ...] = TUNING
    ) -> None:
        """tuning: the configuration lines that differ from mosquitto's defaults."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self._tuning = tuning
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        lines += [f"{key} {value}" for key, value in tuning]
        lines += ["log_dest stderr", "log_type error", "log_type warning"]
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress(host="127.0.0.1", port=self.port)

    @staticmethod
    def tuning() -> dict[str, str]:
        """The benches' tuning (what bench.py writes with its figures)."""
        return dict(TUNING)

    def own_tuning(self) -> dict[str, str]:
        """This broker's tuning."""
        return dict(self._tuning)

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start; see {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within 10 s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
