"""`bench.py live`: a live session to the whole province for a fixed time.

The controller's `LiveBroadcast` (controller/live.py) carries a synthetic source: a 20 ms
packet every 20 ms at 24 kb/s (60 bytes), each carrying its capture time and number, so
that the agents' metered output (bench_fleet.LiveMeter: the null output, its live sink
noting each packet handed over) measures, per packet and agent, capture → hand-over. The
same frames are then published by a bare paho client to N bare paho subscribers: the
raw broker's fan-out of the same bytes, in the same run.

Reported: `agents`, `listening` (agents that handed at least 99 % of the packets to
their output), `latency_p50_s` and `latency_p99_s` (capture → the agent handing the
packet to its output, over every packet of every agent), `spread_p95_ms` (for the same
packet, the latest hand-over minus the earliest, across agents; 95th percentile over the
packets), `lost_frames_max` (packets of 20 ms an agent never handed over, the worst
agent), `wire_bytes_per_agent_per_min` (what the broker sends each agent: MQTT
PUBLISH packets of the frames and of the start commands) and its ratio to the Opus
bitrate, and the raw broker's fan-out.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from bench_fleet import LIVE_BINS, LIVE_PACKET, check_per_process, publish_packet_bytes
from bench_report import pass_fail, percentile, rounded, seconds, table, target, verdict
from bench_rig import cpu_rows, cpu_used, fleet_rig, say
from link_relay import LinkParams

from controller.live import LiveBroadcast, LivePlan, LiveSettings
from protocol import live as frames
from protocol.clock import SystemClock
from protocol.mqtt import Link
from protocol.ogg import OggWriter

PACKET_BYTES = 60  # 24 kb/s in packets of 20 ms
TARGET_P99_S = 1.5
TARGET_4G_P99_S = 3.0
TARGET_SPREAD_MS = 20.0
TARGET_WIRE_RATIO = 1.10
DELAY_MS = 1000
DELAY_4G_MS = 2000


class SyntheticSource:
    """An encoded stream of numbered packets at real-time pace (controller.live's
    EncodedStream): each packet's first bytes are its capture time and number."""

    def __init__(self, packets: int) -> None:
        self.total = packets
        self.sent = 0
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self._ogg = OggWriter()
        self._head: bytes | None = self._ogg.head(1, 0)

    def read(self, timeout: float) -> bytes | None:
        if self.sent >= self.total:
            return b""
        due = min(self.total, math.floor((time.monotonic() - self.t0) / 0.02) + 1)
        if due <= self.sent:
            wait = self.t0 + self.sent * 0.02 - time.monotonic()
            time.sleep(max(0.0, min(timeout, wait)))
            return None
        pages = [self._head] if self._head is not None else []
        self._head = None
        for n in range(self.sent, due):
            packet = LIVE_PACKET.pack(self.wall0 + n * 0.02, n)
            packet += bytes(PACKET_BYTES - len(packet))
            pages.append(self._ogg.packet(packet, (n + 1) * frames.SLOT_SAMPLES))
        self.sent = due
        return b"".join(p for p in pages if p)

    def failure(self) -> str | None:
        return None

    def close(self) -> None:
        pass


class TallyLink:
    """The controller's link, counting what a live session publishes (per topic)."""

    def __init__(self, inner: Link) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.frames: list[tuple[str, bytes]] = []
        self.commands: list[tuple[str, int]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        with self.lock:
            if topic.endswith("/live"):
                self.frames.append((topic, payload))
            else:
                self.commands.append((topic, len(payload)))
        self.inner.publish(topic, payload, qos, retain)


def run(agents: int, seconds_: float, per_process: int | None, verbose: bool, keep: bool,
        link: LinkParams | None = None) -> dict[str, Any]:  # fmt: skip
    check_per_process(per_process)
    packets = int(seconds_ * 1000 / frames.SLOT_MS)
    delay_ms = DELAY_4G_MS if link is not None else DELAY_MS
    with fleet_rig(agents, per_process, shared_cache=True, verbose=verbose, keep=keep,
                   link=link) as rig:  # fmt: skip
        controller = rig.controller
        tally = TallyLink(controller.link)
        settings = LiveSettings(delay_ms=delay_ms)
        clusters = sorted(rig.province.groups)
        rig.agents.ask("live")  # nothing yet: a clean meter
        cpu0 = rig.cpu()
        broadcast = LiveBroadcast(
            LivePlan(bulletin="Phát trực tiếp: đo tải", inputs=["synthetic"],
                     clusters=clusters, source="microphone", duration_s=seconds_ + 10),
            link=tally, signer=controller.signer, cover=controller.fleet.cover,
            clock=SystemClock(), settings=settings,
            open_source=lambda _source: SyntheticSource(packets),
        )  # fmt: skip
        say(f"live session to {agents} agents for {seconds_:g} s, delay {delay_ms} ms")
        report = broadcast.run()
        time.sleep(delay_ms / 1000 + 2.0)  # the last frame's delay, then the agents' end
        loa_cpu = cpu_used(cpu0, rig.cpu())
        handed: dict[str, int] = {}
        histogram = [0] * LIVE_BINS
        first: dict[int, float] = {}
        last: dict[int, float] = {}
        for part in rig.agents.ask("live"):
            handed |= part["handed"]
            for i, n in enumerate(part["histogram"]):
                histogram[i] += n
            for number, at in part["first"].items():
                first[number] = min(at, first.get(number, at))
            for number, at in part["last"].items():
                last[number] = max(at, last.get(number, at))
        cpu1 = rig.cpu()
        raw = rig.baseline.round(
            [(f"raw/group/{rig.province.province}/content", payload)
             for topic, payload in tally.frames if topic.split("/")[3] == rig.province.province],
            60.0 + 0.05 * agents,
        )  # fmt: skip
        raw_cpu = cpu_used(cpu1, rig.cpu())
        processes = rig.agents.processes
    frame_topics = {topic for topic, _p in tally.frames}
    per_agent_frames = [p for t, p in tally.frames if t == min(frame_topics)] if frame_topics \
        else []
    wire = sum(publish_packet_bytes(min(frame_topics), len(p), qos=0) for p in per_agent_frames)
    command_topics = {t for t, _n in tally.commands}
    first_command_topic = min(command_topics) if command_topics else ""
    wire += sum(publish_packet_bytes(t, n, qos=1) for t, n in tally.commands
                if t == first_command_topic)  # fmt: skip
    opus_bytes = packets * PACKET_BYTES
    minutes = seconds_ / 60
    latencies_ms = _from_histogram(histogram)
    spreads = sorted(1000 * (last[n] - first[n]) for n in first)
    result: dict[str, Any] = {
        "bench": "live",
        "agents": agents,
        "processes": processes,
        "seconds": seconds_,
        "delay_ms": delay_ms,
        "frame_packets": settings.frame_packets,
        "packets": packets,
        "listening": sum(1 for cid in clusters if handed.get(cid, 0) >= 0.99 * packets),
        "latency_p50_s": rounded(percentile(latencies_ms, 50) / 1000) if latencies_ms else None,
        "latency_p99_s": rounded(percentile(latencies_ms, 99) / 1000) if latencies_ms else None,
        "spread_p95_ms": round(percentile(spreads, 95), 1) if spreads else None,
        "lost_frames_max": max(packets - handed.get(cid, 0) for cid in clusters),
        "wire_bytes_per_agent_per_min": round(wire / minutes),
        "opus_bytes_per_min": round(opus_bytes / minutes),
        "wire_ratio": round(wire / opus_bytes, 3),
        "frames_published": report.frames,
        "raw_fanout_s": rounded(max(raw)) if len(raw) == agents else None,
        "raw_p50_s": rounded(percentile(raw, 50)) if raw else None,
        "raw_bytes": sum(len(p) for p in per_agent_frames),
        "cpu": {"loa": loa_cpu, "raw": raw_cpu},
        "measured": "capture time written in each synthetic packet → time.time() in the "
        "agent's process when its live sink is handed the packet",
    }
    p99_limit = TARGET_4G_P99_S if link is not None else TARGET_P99_S
    result["targets"] = [
        target("agents listening", result["listening"], agents, f"all {agents}", at_most=False),
        target("latency p99 capture → output", result["latency_p99_s"], p99_limit,
               f"≤ {p99_limit:g} s"),
        target("spread p95 across agents", result["spread_p95_ms"], TARGET_SPREAD_MS,
               f"≤ {TARGET_SPREAD_MS:g} ms"),
        target("wire bytes / Opus bytes", result["wire_ratio"], TARGET_WIRE_RATIO,
               f"≤ {TARGET_WIRE_RATIO:g}"),
    ]  # fmt: skip
    if link is not None:
        result |= {"link": "4g", "link_params": link.as_dict(),
                   "link_description": link.describe()}  # fmt: skip
    result["pass"] = verdict(result["targets"])
    say(
        f"{result['listening']}/{agents} listening, latency p50 {seconds(result['latency_p50_s'])} "
        f"p99 {seconds(result['latency_p99_s'])}, spread p95 {result['spread_p95_ms']} ms, "
        f"lost max {result['lost_frames_max']}, wire ×{result['wire_ratio']}; raw fan-out "
        f"{seconds(result['raw_fanout_s'])}"
    )
    return result


def _from_histogram(histogram: list[int]) -> list[float]:
    """The latencies (ms) a histogram of 1 ms bins holds, as a sorted list."""
    out: list[float] = []
    for ms, count in enumerate(histogram):
        out.extend([float(ms)] * count)
    return out


def markdown(r: dict[str, Any], run_line: str, broker_line: str) -> str:
    rows = [
        [t["what"], t["target"], str(t["value"]), pass_fail(t["pass"])] for t in r["targets"]
    ]
    extra = [
        ["latency p50 capture → output", seconds(r["latency_p50_s"])],
        ["lost 20 ms frames, worst agent", f"{r['lost_frames_max']} of {r['packets']}"],
        ["wire bytes per agent per minute", f"{r['wire_bytes_per_agent_per_min']:,} "
         f"(Opus {r['opus_bytes_per_min']:,})"],
        ["raw broker: the same frames to every subscriber (p50, all)",
         f"{seconds(r['raw_p50_s'])}, {seconds(r['raw_fanout_s'])}"],
    ]  # fmt: skip
    link = f" over the emulated link ({r['link_description']})" if r.get("link") else ""
    title = "over an emulated 4G link" if r.get("link") else "on loopback"
    return f"""\
## A live session, {title}: capture → every agent's output

{run_line}
{broker_line}

A live session of {r['seconds']:g} s{link} to {r['agents']} simulated agents (real `Agent`,
its output the null one with a metered live sink) in {r['processes']} processes: a synthetic
source of 20 ms packets at 24 kb/s, in signed frames of {r['frame_packets']} packets, played
at capture + {r['delay_ms']} ms. {r['measured']}.

{table(["measure", "target", "Loa", "verdict"], rows)}

{table(["also measured", "value"], extra)}

CPU seconds (user + system) of each part during the session (Loa), and for the raw
round:

{table(["part", "Loa", "raw broker"], cpu_rows(r["cpu"]["loa"], r["cpu"]["raw"]))}
"""
