"""`bench.py agent`: what one real agent process costs, idle and playing a long bulletin.

The agent is `loa-agent run --config FILE` (as `python -m device_agent.cli`), its own
process, on a generated config, against a private mosquitto and the real controller
(a fleet of one cluster). For each output measured: `null` (the agent alone), `opusdec`
with device `null` (the field's default: opusdec and aplay children, fed at real-time
pace, as on a sound card) and `ffmpeg` with device `null` (an ffmpeg child, also at
real-time pace). The field's default output is always measured, whatever --outputs asks:
the playing target is about the output clusters use.

1. idle: once the agent is online and has settled, its resident memory (VmRSS, sampled)
   and CPU time over --idle-s seconds, as a share of one core;
2. playing: the controller sends a play of an M-minute bulletin (default 60) starting a
   few seconds later; the agent downloads, verifies and plays it. From the send until
   --play-s seconds into the play, the agent's and its children's memory are sampled;
   the peak is the agent's VmHWM (its own high-water mark, startup included) plus the
   highest sum, over the samples, of its children's VmHWM (ffmpeg; opusdec and aplay).
   Then a stop, and SIGTERM.

The bulletin is a chime and Vietnamese speech (espeak-ng) or tones, looped to M minutes
and encoded with ffmpeg's libopus at 24 kb/s (voip, mono), as the controller encodes,
but at compression level 0 so that an hour encodes in seconds: the encoder's search
effort does not change what the agent receives, stores or decodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench_broker import PrivateMosquitto
from bench_fleet import Sightings
from bench_proc import (
    CLOCK_TICKS,
    NO_CPU,
    CpuTimes,
    children,
    cpu_times,
    peak_rss_bytes,
    rss_bytes,
    rss_parts,
)
from bench_province import Province, make_province, start_controller
from bench_report import median, pass_fail, rounded, table, target, verdict
from bench_rig import say

from controller.audio import AudioSettings, PreparedAudio
from controller.distribution import PlaySpec, new_play_id
from controller.ffmpeg import run_ffmpeg
from controller.main import Controller
from controller.samples import demo_bulletin
from protocol.messages import Event

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ("null", "opusdec", "ffmpeg")
#: The output of config/agent.example.yaml and of the agent config's default.
FIELD_OUTPUT = "opusdec"
PLAYER = {"null": "–", "opusdec": "opusdec + aplay", "ffmpeg": "ffmpeg"}
MB = 1024 * 1024
SAMPLE_S = 0.25
SETTLE_S = 3.0
START_AFTER = timedelta(seconds=3)
TARGET_IDLE_MB = 60.0
TARGET_IDLE_CPU_PCT = 2.0
TARGET_PLAYING_MB = 100.0


def make_long_bulletin(work: Path, minutes: float) -> tuple[PreparedAudio, bool]:
    """An Ogg/Opus bulletin of `minutes`, by its SHA-256, as the controller names content."""
    loop = work / "loop.wav"
    spoken = demo_bulletin(loop, min(60.0, minutes * 60))
    seconds = minutes * 60
    out = work / "long.opus"
    run_ffmpeg(
        [
            "-stream_loop", "-1", "-i", str(loop), "-t", f"{seconds:.3f}", "-ac", "1",
            "-ar", "48000", "-c:a", "libopus", "-b:a", "24k", "-application", "voip",
            "-compression_level", "0", "-map_metadata", "-1", "-f", "ogg", "-y", str(out),
        ],
        timeout=600, what="encoding the long bulletin",
    )  # fmt: skip
    with out.open("rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    path = out.rename(work / f"{sha}.opus")
    return PreparedAudio(sha, path, path.stat().st_size, round(seconds, 3)), spoken


@dataclass
class Sample:
    agent_rss: int
    children_rss: int
    agent_peak: int
    children_peak: int
    agent_cpu: CpuTimes
    children_cpu: CpuTimes


class Watch:
    """Samples an agent process and its children."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.children_peak = 0
        # the children's resident memory at their largest sample: private, file-backed
        self.children_parts = (0, 0)
        self._children_cpu: dict[int, CpuTimes] = {}

    def sample(self) -> Sample:
        kids = children(self.pid)
        rss = sum(rss_bytes(k) for k in kids)
        parts = [rss_parts(k) for k in kids]
        if sum(map(sum, parts)) > sum(self.children_parts):
            self.children_parts = (sum(p[0] for p in parts), sum(p[1] for p in parts))
        # children running together (opusdec and aplay) count together
        self.children_peak = max(self.children_peak, sum(peak_rss_bytes(k) for k in kids))
        for kid in kids:
            used = cpu_times(kid)
            if used.total_s > 0:
                self._children_cpu[kid] = used
        total = NO_CPU
        for used in self._children_cpu.values():
            total = total + used
        return Sample(
            rss_bytes(self.pid), rss, peak_rss_bytes(self.pid), self.children_peak,
            cpu_times(self.pid), total,
        )  # fmt: skip


def _pct(used: CpuTimes, seconds: float) -> float:
    return 100 * used.total_s / seconds if seconds > 0 else 0.0


@contextlib.contextmanager
def agent_process(work: Path, broker: PrivateMosquitto, province: Province, output: str,
                  cid: str, token: str) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """`loa-agent run` for cluster cid on a generated config, enrolling with token;
    ended with SIGTERM (then SIGKILL)."""
    config = work / f"agent-{output}.yaml"
    token_file = work / f"agent-{output}.token"
    token_file.write_text(token + "\n", encoding="utf-8")
    lines = [
        f"enrolment_token_file: {json.dumps(str(token_file))}",
        f"cluster_id: {cid}",
        f"broker_url: mqtt://127.0.0.1:{broker.port}",
        f"controller_public_key: {json.dumps(str(province.public_key))}",
        f"data_dir: {json.dumps(str(work / f'agent-{output}'))}",
        f"groups: {json.dumps(province.groups[cid])}",
        "output:",
        f"  kind: {output}",
    ]
    if output in ("ffmpeg", "opusdec"):
        lines.append('  device: "null"')
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with (work / f"agent-{output}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "device_agent.cli", "run", "--config", str(config)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class _States:
    """Whether the cluster being measured is online (as the controller sees it)."""

    def __init__(self) -> None:
        self.online = threading.Event()
        self.cluster = ""

    def on_state(self, cluster: str, state: str) -> None:
        if cluster != self.cluster:
            return
        if state == "online":
            self.online.set()
        else:
            self.online.clear()


def measure_idle(watch: Watch, seconds: float) -> dict[str, Any]:
    first = watch.sample()
    started = time.monotonic()
    rss = [first.agent_rss]
    while time.monotonic() - started < seconds:
        time.sleep(SAMPLE_S)
        rss.append(watch.sample().agent_rss)
    last = watch.sample()
    wall = time.monotonic() - started
    return {
        "idle_s": round(wall, 1),
        "idle_rss_mb": rounded(median(rss) / MB, 1),
        "idle_rss_max_mb": rounded(max(rss) / MB, 1),
        "idle_cpu_pct": rounded(_pct(last.agent_cpu - first.agent_cpu, wall), 3),
        # the kernel counts CPU time in clock ticks: the smallest share this window shows
        "idle_cpu_resolution_pct": rounded(100 / CLOCK_TICKS / wall, 3),
    }


def measure_play(controller: Controller, stored: Sightings, watch: Watch, audio: PreparedAudio,
                 cluster: str, play_s: float) -> dict[str, Any]:  # fmt: skip
    now = datetime.now(UTC)
    spec = PlaySpec(
        play_id=new_play_id("bench-agent"), bulletin="Bản tin dài (đo tải)", level="normal",
        start_at=now + START_AFTER, latest_start=now + timedelta(minutes=10), items=[audio],
        clusters=[cluster],
    )  # fmt: skip
    sent, sent_wall = time.monotonic(), time.time()
    controller.distributor.send_play(spec)
    window = min(play_s, audio.duration_s)
    deadline = sent + 120 + window
    samples = [watch.sample()]
    at_start = samples[0]
    playing_at: float | None = None
    ended = ("finished", "interrupted", "failed", "missed")
    while time.monotonic() < deadline:
        time.sleep(SAMPLE_S)
        samples.append(watch.sample())
        if playing_at is None and stored.of(spec.play_id, "playing"):
            playing_at = time.monotonic()
            at_start = samples[-1]
        if any(stored.of(spec.play_id, kind) for kind in ended):
            break
        if playing_at is not None and time.monotonic() - playing_at >= window:
            break
    end = samples[-1]
    delivered = stored.of(spec.play_id, "delivered")
    outcome = next((k for k in ended if stored.of(spec.play_id, k)), "playing")
    controller.distributor.send_stop(spec.play_id, [cluster])
    stored.wait(spec.play_id, ended, 1, 10)
    played_s = time.monotonic() - playing_at if playing_at is not None else 0.0
    result: dict[str, Any] = {
        "played": playing_at is not None,
        "outcome_in_window": outcome,
        "delivered_s": rounded(min(delivered.values()) - sent_wall) if delivered else None,
        "playing_window_s": round(played_s, 1),
        "playing_rss_max_mb": rounded(max(s.agent_rss + s.children_rss for s in samples) / MB, 1),
        "agent_peak_rss_mb": rounded(end.agent_peak / MB, 1),
        "player_peak_rss_mb": rounded(end.children_peak / MB, 1),
        "player_rss_private_mb": rounded(watch.children_parts[0] / MB, 1),
        "player_rss_shared_files_mb": rounded(watch.children_parts[1] / MB, 1),
        "playing_peak_rss_mb": rounded((end.agent_peak + end.children_peak) / MB, 1),
    }
    if playing_at is not None and played_s > 0:
        result["playing_agent_cpu_pct"] = rounded(
            _pct(end.agent_cpu - at_start.agent_cpu, played_s), 2
        )
        result["playing_player_cpu_pct"] = rounded(
            _pct(end.children_cpu - at_start.children_cpu, played_s), 2
        )
    return result


def measure_output(work: Path, broker: PrivateMosquitto, province: Province,
                   controller: Controller, stored: Sightings, states: _States,
                   audio: PreparedAudio, output: str, cid: str, idle_s: float,
                   play_s: float) -> dict[str, Any]:  # fmt: skip
    states.cluster = cid
    states.online.clear()
    # The agent enrols as a new box does: its token approves itself.
    token = controller.identities.issue_token(
        cid, by="bench", now=controller.clock.now(), auto_approve=True
    ).token
    with agent_process(work, broker, province, output, cid, token) as proc:
        if not states.online.wait(30):
            raise RuntimeError(
                f"the {output} agent did not come online in 30 s; see {work}/agent-{output}.log"
            )
        time.sleep(SETTLE_S)
        watch = Watch(proc.pid)
        say(f"{output} agent online (pid {proc.pid}); idle for {idle_s:g} s")
        result = measure_idle(watch, idle_s)
        say(f"{output} agent: playing the {audio.duration_s / 60:g}-minute bulletin")
        result |= measure_play(controller, stored, watch, audio, cid, play_s)
        if proc.poll() is not None:
            raise RuntimeError(f"the {output} agent exited; see {work}/agent-{output}.log")
    return result


def run(minutes: float, idle_s: float, play_s: float, outputs: str, keep: bool
        ) -> dict[str, Any]:  # fmt: skip
    asked = {o.strip() for o in outputs.split(",") if o.strip()}
    if any(o not in OUTPUTS for o in asked):
        raise ValueError(f"--outputs: a comma-separated list of {', '.join(OUTPUTS)}")
    chosen = [o for o in OUTPUTS if o in asked or o == FIELD_OUTPUT]
    if not 0 < minutes <= 600 or idle_s <= 0 or play_s <= 0:
        raise ValueError("--minutes (at most 600), --idle-s and --play-s must be more than 0")
    work = Path(tempfile.mkdtemp(prefix="loa-bench-agent-"))
    with contextlib.ExitStack() as stack:
        if keep:
            stack.callback(say, f"bench files kept in {work}")
        else:
            stack.callback(shutil.rmtree, work, True)
        broker = PrivateMosquitto(work / "broker")
        broker.start()
        stack.callback(broker.stop)
        # A cluster of its own for each output: the controller remembers what a cluster
        # holds, and each agent starts empty.
        province = make_province(work / "province", len(chosen))
        settings = AudioSettings(max_duration_s=max(3600.0, minutes * 60 + 60))
        controller = start_controller(province, broker.address, settings)
        stack.callback(controller.stop)
        stored = Sightings()

        def on_event(ev: Event) -> None:
            stored.add(str(ev.play_id), ev.kind, ev.cluster, time.time())

        controller.intake.add_listener(on_event)
        states = _States()
        controller.intake.add_state_listener(states.on_state)
        started = time.monotonic()
        audio, spoken = make_long_bulletin(work, minutes)
        make_s = time.monotonic() - started
        say(f"{minutes:g}-minute bulletin: {audio.size} bytes Opus, made in {make_s:.0f} s")
        per_output = {
            output: measure_output(work, broker, province, controller, stored, states, audio,
                                   output, cid, idle_s, play_s)
            for output, cid in zip(chosen, province.clusters, strict=True)
        }  # fmt: skip
    return summarise(minutes, audio, spoken, per_output)


def summarise(minutes: float, audio: PreparedAudio, spoken: bool,
              per_output: dict[str, dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    def worst(key: str) -> float | None:
        values = [r[key] for r in per_output.values() if r.get(key) is not None]
        return max(values) if values else None

    field = per_output[FIELD_OUTPUT]
    for o in per_output.values():
        o["playing_pass"] = o["played"] and o["playing_peak_rss_mb"] < TARGET_PLAYING_MB
    s: dict[str, Any] = {
        "bench": "agent",
        "minutes": minutes,
        "bulletin_bytes": audio.size,
        "duration_s": audio.duration_s,
        "speech": spoken,
        "field_output": FIELD_OUTPUT,
        "idle_rss_mb": worst("idle_rss_max_mb"),
        "idle_cpu_pct": worst("idle_cpu_pct"),
        # the target is about the output clusters use; every output's own result is kept
        "playing_peak_rss_mb": field["playing_peak_rss_mb"],
        "played": all(r["played"] for r in per_output.values()),
        "outputs": per_output,
    }
    s["targets"] = [
        target("idle RSS", s["idle_rss_mb"], TARGET_IDLE_MB, "< 60 MB"),
        target("idle CPU", s["idle_cpu_pct"], TARGET_IDLE_CPU_PCT, "< 2 % of a core"),
        target("playing peak RSS", s["playing_peak_rss_mb"] if field["played"] else None,
               TARGET_PLAYING_MB, "< 100 MB"),
    ]  # fmt: skip
    s["pass"] = verdict(s["targets"])
    return s


def markdown(result: dict[str, Any], run_line: str, broker_line: str) -> str:
    r = result

    def mb(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f} MB"

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f} %"

    def idle_pct(o: dict[str, Any]) -> str:
        if o["idle_cpu_pct"] == 0:  # not one clock tick in the window
            return f"< {o['idle_cpu_resolution_pct']:.2f} %"
        return pct(o["idle_cpu_pct"])

    rows = []
    for output, o in r["outputs"].items():
        what = "`null` (agent alone)" if output == "null" else f"`{output}`, device `null`"
        if output == r["field_output"]:
            what += " (the default)"
        rows.append([
            what, mb(o["idle_rss_max_mb"]), idle_pct(o), mb(o["agent_peak_rss_mb"]),
            PLAYER[output], mb(o["player_peak_rss_mb"]), mb(o["playing_peak_rss_mb"]),
            pass_fail(o["playing_pass"]),
            pct(o.get("playing_agent_cpu_pct")), pct(o.get("playing_player_cpu_pct")),
        ])  # fmt: skip
    worst_idle = max(r["outputs"].values(), key=lambda o: o["idle_cpu_pct"])
    shown = {"idle RSS": mb(r["idle_rss_mb"]), "idle CPU": idle_pct(worst_idle),
             "playing peak RSS": mb(r["playing_peak_rss_mb"])}  # fmt: skip
    measured = {"idle RSS": "worst of the outputs", "idle CPU": "worst of the outputs",
                "playing peak RSS": f"`{r['field_output']}` (the default)"}  # fmt: skip
    checks = [[t["what"], t["target"], f"{shown[t['what']]}, {measured[t['what']]}",
               pass_fail(t["pass"])] for t in r["targets"]]  # fmt: skip
    notes = []
    for output, o in r["outputs"].items():
        if output == "null":
            continue
        notes.append(
            f"{PLAYER[output]}: resident memory at its largest sample "
            f"{mb(o['player_rss_private_mb'])} private, {mb(o['player_rss_shared_files_mb'])} "
            "of mapped files (the programs and their libraries, which the kernel shares "
            "between processes but RSS counts whole)."
        )
    player_note = "\n".join(notes) + "\n\n" if notes else ""
    window = ", ".join(f"{o['playing_window_s']:.0f} s" for o in r["outputs"].values())
    return f"""\
## One agent process: idle and playing a {r['minutes']:g}-minute bulletin

{run_line}
`loa-agent run` as its own process (`python -m device_agent.cli`) on a generated
config, against the real controller; a {r['duration_s'] / 60:g}-minute bulletin
({'speech' if r['speech'] else 'tones'}, {r['bulletin_bytes']} bytes of Ogg/Opus at 24 kb/s)
downloaded, verified and played. Idle: VmRSS sampled every {SAMPLE_S} s (the highest
sample) and CPU time over the window, as a share of one core. Playing: from the play
command until {window} into the play (per output); peak is the agent's VmHWM
(startup included) plus the highest sum of its player children's VmHWM (ffmpeg; or
opusdec and aplay, which run together). Device `null` is paced to real time: ffmpeg by
its `arealtime` filter, aplay (whose ALSA null device takes audio at once) by the agent
feeding it a tenth of a second at a time. The playing target is about the default
output, `{r['field_output']}`; each output's own result is in its row.
{broker_line}

{table(["output", "idle RSS", "idle CPU", "agent peak", "player", "player peak",
        "playing peak", "< 100 MB", "agent CPU playing", "player CPU playing"], rows)}

{player_note}{table(["target", "limit", "measured", "result"], checks)}

Overall: {pass_fail(r['pass'])}.
"""
