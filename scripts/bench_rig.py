"""What the fleet benches share: broker, controller, simulated agents and raw baseline.

`fleet_rig()` sets up, in order: a private mosquitto, the province (fleet file and keys),
the real controller, with `link` an emulated link in front of the broker (link_relay),
the agent workers and the raw workers (the same process layout; with a link, both
connect through it, while the controller and the raw publisher connect directly, as
from a data centre), and the raw publisher; it waits until every agent is connected,
subscribed and known online to the controller, and tears everything down in reverse
order, whatever happens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench_broker import PrivateMosquitto
from bench_fleet import (
    METER_FIELDS,
    RawBaseline,
    Sightings,
    Workers,
    fleet_specs,
    register_fleet_keys,
)
from bench_proc import NO_CPU, CpuTimes, cpu_times, total_cpu
from bench_province import Province, make_province, start_controller
from link_relay import LinkParams, LinkRelay

from controller.audio import AudioSettings, PreparedAudio
from controller.distribution import play_ttl
from controller.main import Controller
from protocol import chunks
from protocol.messages import Address, Event, PlayBody


def say(message: str) -> None:
    """A progress line (stderr: stdout is for the JSON)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Rig:
    work: Path
    broker: PrivateMosquitto
    province: Province
    controller: Controller
    agents: Workers
    raw: Workers
    baseline: RawBaseline
    # agent side: what each agent reported, when it sent it
    sightings: Sightings
    # controller side: when the controller stored each event
    stored: Sightings
    # the emulated link the agents and raw subscribers connect through, if any
    relay: LinkRelay | None = None

    @property
    def size(self) -> int:
        return len(self.province.groups)

    def counters(self) -> dict[str, dict[str, int]]:
        """Per agent: what it has received so far (see bench_fleet.Meter)."""
        merged: dict[str, dict[str, int]] = {}
        for reply in self.agents.ask("counters"):
            for cid, values in reply.items():
                merged[cid] = dict(zip(METER_FIELDS, values, strict=True))
        return merged

    def cpu(self) -> dict[str, CpuTimes]:
        """CPU time used so far by each part: agent workers, raw workers, broker, and this
        process (the controller, the raw publisher and the bench's bookkeeping)."""
        broker = self.broker.proc
        parts = {
            "agents": total_cpu(self.agents.pids()),
            "raw_subscribers": total_cpu(self.raw.pids()),
            "broker": cpu_times(broker.pid) if broker else NO_CPU,
            "controller": cpu_times(os.getpid()),
        }
        if self.relay is not None:
            relay = self.relay.pid
            parts["link_relay"] = cpu_times(relay) if relay is not None else NO_CPU
        return parts

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the controller has stored every event so far, then a quiet second."""
        deadline = time.monotonic() + timeout
        while not self.controller.intake.drained() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)


def cpu_used(before: dict[str, CpuTimes], after: dict[str, CpuTimes]
             ) -> dict[str, dict[str, float]]:  # fmt: skip
    """CPU seconds (user, system) each part used between two readings of Rig.cpu()."""
    return {
        part: {
            "user_s": round(after[part].user_s - before[part].user_s, 2),
            "system_s": round(after[part].system_s - before[part].system_s, 2),
        }
        for part in before
    }


def median_cpu(readings: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per part, the median user and system seconds over trials."""
    return {
        part: {
            kind: round(statistics.median(r[part][kind] for r in readings), 2)
            for kind in ("user_s", "system_s")
        }
        for part in readings[0]
    }


def cpu_rows(loa: dict[str, dict[str, float]], raw: dict[str, dict[str, float]]
             ) -> list[list[str]]:  # fmt: skip
    """Table rows: CPU seconds of each part, Loa beside the raw broker."""
    def cell(part: dict[str, float] | None) -> str:
        if part is None:
            return "–"
        return f"{part['user_s']:.2f} + {part['system_s']:.2f}"

    return [[part, cell(loa.get(part)), cell(raw.get(part))] for part in loa]


def raw_messages(rig: Rig, body: PlayBody, audio: PreparedAudio) -> list[tuple[str, bytes]]:
    """What the distributor publishes for a play to the whole province (the command,
    signed the same way, then the audio chunks), on topics only raw subscribers take."""
    now = datetime.now(UTC)
    ttl = play_ttl(body, now)
    group = rig.province.province
    command = rig.controller.signer.command(body, Address(groups=[group]), now, ttl)
    messages = [(f"raw/group/{group}/command", command.to_json())]
    frames = chunks.split(audio.path.read_bytes(), audio.chunk_size)
    messages += [(f"raw/group/{group}/content", frame) for frame in frames]
    return messages


def cpu_share_note(cpu: dict[str, dict[str, float]], nproc: int, wall_s: float | None) -> str:
    """A sentence on who used the machine during a timed window."""
    if not wall_s:
        return ""
    spent = {part: v["user_s"] + v["system_s"] for part, v in cpu.items()}
    available = nproc * wall_s
    agents = spent.get("agents", 0.0)
    kernel = 100 * cpu["agents"]["system_s"] / agents if agents else 0.0
    relay = f", the link relay {spent['link_relay']:.1f}" if "link_relay" in spent else ""
    return (
        f"In the {wall_s:.1f} s the slowest agent took, the machine had {available:.1f} "
        f"CPU-seconds ({nproc} cores); the simulated agents used {agents:.1f} of them "
        f"({100 * agents / available:.0f} %, {kernel:.0f} % of it in the kernel), the broker "
        f"{spent.get('broker', 0.0):.1f}{relay} and the controller "
        f"{spent.get('controller', 0.0):.1f}."
    )


class _Online:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clusters: set[str] = set()

    def on_state(self, cluster: str, state: str) -> None:
        with self.lock:
            if state == "online":
                self.clusters.add(cluster)
            else:
                self.clusters.discard(cluster)

    def count(self) -> int:
        with self.lock:
            return len(self.clusters)


@contextlib.contextmanager
def fleet_rig(
    agents: int,
    per_process: int | None,
    *,
    shared_cache: bool,
    verbose: bool = False,
    audio: AudioSettings | None = None,
    keep: bool = False,
    link: LinkParams | None = None,
    # each agent on a worker thread of its own, as on a pole, rather than on its
    # process's shared pool (bench_fleet.WorkerSpec)
    own_threads: bool = False,
) -> Iterator[Rig]:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s controller %(levelname)s %(name)s: %(message)s",
    )
    work = Path(tempfile.mkdtemp(prefix="loa-bench-"))
    with contextlib.ExitStack() as stack:
        if keep:
            stack.callback(say, f"bench files kept in {work}")
        else:
            stack.callback(shutil.rmtree, work, True)
        broker = PrivateMosquitto(work / "broker")
        broker.start()
        stack.callback(broker.stop)
        province = make_province(work / "province", agents)
        controller = start_controller(province, broker.address, audio)
        stack.callback(controller.stop)
        online = _Online()
        controller.intake.add_state_listener(online.on_state)
        stored = Sightings()

        def on_event(ev: Event) -> None:
            stored.add(str(ev.play_id), ev.kind, ev.cluster, time.time())

        controller.intake.add_listener(on_event)

        relay = None
        fleet_broker = broker.address
        if link is not None:
            relay = LinkRelay(link, broker.address)
            relay.start()
            stack.callback(relay.stop)
            fleet_broker = relay.address
            say(f"emulated link on port {relay.port} (pid {relay.pid}): {link.describe()}")

        sightings = Sightings()
        agent_specs, raw_specs = fleet_specs(
            fleet_broker, province.groups, per_process, data_dir=work / "agents",
            public_key=province.public_key, shared_cache=shared_cache, verbose=verbose,
            own_threads=own_threads,
        )  # fmt: skip
        say(
            f"starting {agents} agents in {len(agent_specs)} processes and {agents} bare "
            f"paho subscribers in {len(raw_specs)} processes (broker port {broker.port})"
        )
        fleet = Workers(sightings, "agents")
        raw = Workers(sightings, "raw subscribers")
        stack.callback(raw.stop)
        stack.callback(fleet.stop)
        fleet.start(register_fleet_keys(agent_specs, controller))
        raw.start(raw_specs)
        ready_s = 60.0 + 0.1 * agents
        fleet.wait_ready(ready_s)
        raw.wait_ready(ready_s)
        deadline = time.monotonic() + 60
        while online.count() < agents and time.monotonic() < deadline:
            time.sleep(0.1)
        if online.count() < agents:
            raise RuntimeError(f"the controller saw {online.count()} of {agents} agents online")
        baseline = RawBaseline(broker.address, raw, agents)
        stack.callback(baseline.stop)
        rig = Rig(
            work, broker, province, controller, fleet, raw, baseline, sightings, stored, relay
        )
        rig.settle()
        say(f"{agents} agents online, {agents} raw subscribers ready")
        yield rig
