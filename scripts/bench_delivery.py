"""`bench.py delivery`: a bulletin to every agent through the real distributor, then again.

The bulletin is made for the run (controller.samples: a chime and Vietnamese speech
from espeak-ng repeated, or tones; a different short tone in front for each trial, so
that each trial's audio is new to the agents) and prepared by the controller's
AudioLibrary (decode, trim, loudness, Opus). Each trial then:

1. raw broker: a bare paho client publishes the same bytes (a command of the same size,
   then every chunk) to N bare paho subscribers in the same process layout; timed until
   the last subscriber has them all (`raw_fanout_s`);
2. Loa: `Distributor.send_play` of a play an hour ahead for every cluster (one command
   and one copy of the chunks on the province's group topics); timed from the call until
   the last agent sends `delivered`, i.e. holds the audio, verified (`deliver_s`). Each
   agent has its own cache here: every agent receives, writes and verifies its own
   copy. What each agent received is counted on the agent's side: every MQTT PUBLISH
   that reached it, fixed header, topic, packet id and payload (TCP/IP headers aside);
3. the same audio again under a new play (`repeat_*`): what a repeat costs an agent that
   already holds the audio.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench_fleet import check_per_process
from bench_report import (
    median,
    pass_fail,
    percentile,
    ratio,
    rounded,
    seconds,
    table,
    target,
    verdict,
)
from bench_rig import (
    Rig,
    cpu_rows,
    cpu_share_note,
    cpu_used,
    fleet_rig,
    median_cpu,
    raw_messages,
    say,
)

from controller.audio import AudioSettings, PreparedAudio
from controller.distribution import PlaySpec, new_play_id
from controller.samples import demo_bulletin, tone
from protocol.messages import PlayBody

TITLE = "Bản tin đo tải"
AHEAD = timedelta(hours=1)
LATENESS = timedelta(minutes=5)
TARGET_OVERHEAD = 1.05
TARGET_REPEAT_BYTES = 2048
TARGET_RATIO = 2.0
# No audio reached any agent for this long: the play is over, as far as bytes go.
QUIET_S = 1.5
Counters = dict[str, dict[str, int]]


def make_bulletins(rig: Rig, minutes: float, count: int) -> tuple[list[PreparedAudio], bool]:
    """count different bulletins of about `minutes`, prepared by the AudioLibrary."""
    wav = rig.work / "ban-tin.wav"
    spoken = demo_bulletin(wav, max(1.0, minutes * 60))
    bulletins = []
    for k in range(count):
        intro = rig.work / f"intro-{k}.wav"
        tone(intro, 0.3, freq=500 + 50 * k)
        bulletins.append(rig.controller.library.prepare([wav], intro=intro))
    return bulletins, spoken


def play_spec(rig: Rig, audio: PreparedAudio) -> PlaySpec:
    start = datetime.now(UTC) + AHEAD
    return PlaySpec(
        play_id=new_play_id("bench"), bulletin=TITLE, level="normal", start_at=start,
        latest_start=start + LATENESS, items=[audio], clusters=rig.province.clusters,
    )  # fmt: skip


def raw_body(spec: PlaySpec, audio: PreparedAudio) -> PlayBody:
    return PlayBody(
        play_id=spec.play_id, bulletin=spec.bulletin, level=spec.level,
        start_at=spec.start_at, latest_start=spec.latest_start, items=[audio.content_ref()],
    )  # fmt: skip


def audio_bytes(before: Counters, after: Counters) -> list[int]:
    """Per agent: bytes of play commands and chunks received between two readings."""
    return [
        (after[cid]["play_bytes"] - before[cid]["play_bytes"])
        + (after[cid]["content_bytes"] - before[cid]["content_bytes"])
        for cid in after
    ]


def delta(before: Counters, after: Counters, key: str) -> list[int]:
    return [after[cid][key] - before[cid][key] for cid in after]


def wait_quiet(rig: Rig, timeout: float) -> Counters:
    """Counters once no agent has received any play command or chunk for a while."""
    deadline = time.monotonic() + timeout
    last: tuple[int, int] | None = None
    quiet_since = time.monotonic()
    while True:
        now = rig.counters()
        total = (
            sum(c["play_msgs"] for c in now.values()),
            sum(c["content_msgs"] for c in now.values()),
        )
        if total != last:
            last, quiet_since = total, time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_S or time.monotonic() > deadline:
            return now
        time.sleep(0.25)


@dataclass
class Sent:
    """One play sent to every agent: seconds from the call to each agent's `delivered`
    and to the controller storing it, the counters around it, and the CPU it took."""

    play_id: str
    delivered: dict[str, float]
    received: dict[str, float]
    stored: dict[str, float]
    before: Counters
    after: Counters
    cpu: dict[str, dict[str, float]]


def send_and_time(rig: Rig, audio: PreparedAudio, timeout: float) -> Sent:
    before = rig.counters()
    cpu0 = rig.cpu()
    started = time.time()
    spec = play_spec(rig, audio)
    rig.controller.distributor.send_play(spec)
    delivered = rig.sightings.wait(spec.play_id, "delivered", rig.size, timeout)
    used = cpu_used(cpu0, rig.cpu())
    stored = rig.stored.wait(spec.play_id, "delivered", len(delivered), 15)
    rig.settle()
    after = wait_quiet(rig, 30)
    return Sent(
        play_id=spec.play_id,
        delivered={cid: at - started for cid, at in delivered.items()},
        received={
            cid: at - started for cid, at in rig.sightings.of(spec.play_id, "received").items()
        },
        stored={cid: at - started for cid, at in stored.items()},
        before=before, after=after, cpu=used,
    )  # fmt: skip


def trial(rig: Rig, audio: PreparedAudio, timeout: float) -> dict[str, Any]:
    n = rig.size
    spec = play_spec(rig, audio)
    cpu0 = rig.cpu()
    raw = rig.baseline.round(raw_messages(rig, raw_body(spec, audio), audio), timeout)
    raw_cpu = cpu_used(cpu0, rig.cpu())
    rig.settle()
    resent0 = rig.controller.distributor.stats.resent_chunks
    first = send_and_time(rig, audio, timeout)
    second = send_and_time(rig, audio, timeout)
    delivered, stored, again = first.delivered, first.stored, second.delivered
    before, after, after_repeat = first.before, first.after, second.after
    wire = audio_bytes(before, after)
    repeat = audio_bytes(after, after_repeat)
    # Both plays are stopped, so that every trial starts from the same schedule: an agent
    # pays on every chunk for each upcoming play it holds (see docs/benchmarks.md).
    for sent in (first, second):
        rig.controller.distributor.send_stop(sent.play_id, rig.province.clusters)
        rig.sightings.wait(sent.play_id, "interrupted", n, 30)
    rig.settle()
    # Storing alone: each worker writes and hashes its agents' copies, no network.
    stores = rig.agents.ask("store", str(audio.path), audio.chunk_size, audio.sha256[:16],
                            timeout=timeout)  # fmt: skip
    return {
        "store_s": rounded(max(wall for wall, _cpu in stores)),
        "store_cpu_s": rounded(sum(cpu for _wall, cpu in stores)),
        "delivered": len(delivered),
        "deliver_s": rounded(max(delivered.values())) if len(delivered) == n else None,
        "stored_deliver_s": rounded(max(stored.values())) if len(stored) == n else None,
        "received_p50_s": rounded(percentile(list(first.received.values()), 50)),
        "received_p99_s": rounded(percentile(list(first.received.values()), 99)),
        "delivered_p50_s": rounded(percentile(list(delivered.values()), 50)),
        "raw_fanout_s": rounded(max(raw)) if len(raw) == n else None,
        "wire_bytes_per_agent": int(median(wire)),
        "wire_bytes_per_agent_max": max(wire),
        "control_bytes_per_agent": int(median(delta(before, after, "control_bytes"))),
        "chunk_requests": sum(delta(before, after_repeat, "requests")),
        "resent_chunks": rig.controller.distributor.stats.resent_chunks - resent0,
        "repeat_delivered": len(again),
        "repeat_s": rounded(max(again.values())) if len(again) == n else None,
        "repeat_bytes_per_agent": int(median(repeat)),
        "repeat_bytes_per_agent_max": max(repeat),
        "repeat_chunk_bytes_per_agent": int(median(delta(after, after_repeat, "content_bytes"))),
        "cpu": {"loa": first.cpu, "raw": raw_cpu},
    }


def _median_of(trials: list[dict[str, Any]], key: str) -> float | None:
    values = [t[key] for t in trials if t.get(key) is not None]
    return median(values) if values else None


def run(agents: int, minutes: float, trials: int, per_process: int | None, verbose: bool, keep: bool
        ) -> dict[str, Any]:  # fmt: skip
    if not 0 < minutes <= 60:
        raise ValueError("--minutes: more than 0, at most 60")
    check_per_process(per_process)
    timeout = 60.0 + 0.15 * agents * max(1.0, minutes / 5)
    settings = AudioSettings(max_duration_s=max(3600.0, minutes * 60 + 60))
    with fleet_rig(agents, per_process, shared_cache=False, verbose=verbose, audio=settings,
                   keep=keep) as rig:  # fmt: skip
        bulletins, spoken = make_bulletins(rig, minutes, trials)
        first = bulletins[0]
        say(
            f"{minutes:g}-minute bulletin ({'espeak-ng speech' if spoken else 'tones'}): "
            f"{first.size} bytes Opus, {first.content_ref().chunks} chunks of "
            f"{first.chunk_size} bytes"
        )
        per_trial = []
        for k, audio in enumerate(bulletins, 1):
            result = trial(rig, audio, timeout)
            per_trial.append(result)
            say(
                f"trial {k}/{trials}: {result['delivered']}/{agents} delivered in "
                f"{seconds(result['deliver_s'])} (raw broker {seconds(result['raw_fanout_s'])}); "
                f"{result['wire_bytes_per_agent']} bytes per agent; repeat "
                f"{result['repeat_bytes_per_agent']} bytes per agent"
            )
        processes = rig.agents.processes
    return summarise(agents, minutes, processes, spoken, bulletins, per_trial)


def summarise(agents: int, minutes: float, processes: int, spoken: bool,
              bulletins: list[PreparedAudio], per_trial: list[dict[str, Any]]
              ) -> dict[str, Any]:  # fmt: skip
    encoded = int(median([b.size for b in bulletins]))
    s: dict[str, Any] = {
        "bench": "delivery",
        "agents": agents,
        "minutes": minutes,
        "trials": len(per_trial),
        "processes": processes,
        "speech": spoken,
        "duration_s": bulletins[0].duration_s,
        "encoded_bytes": encoded,
        "chunks": bulletins[0].content_ref().chunks,
        "chunk_size": bulletins[0].chunk_size,
        "delivered": min(t["delivered"] for t in per_trial),
        "repeat_delivered": min(t["repeat_delivered"] for t in per_trial),
    }
    for key in per_trial[0]:
        if key not in s and key != "cpu":
            value = _median_of(per_trial, key)
            counts = all(isinstance(t.get(key), int) for t in per_trial)
            s[key] = value if value is None else int(value) if counts else rounded(value)
    s["overhead_pct"] = rounded(100 * (s["wire_bytes_per_agent"] / encoded - 1), 2)
    s["deliver_ratio"] = (
        rounded(s["deliver_s"] / s["raw_fanout_s"], 2)
        if s["deliver_s"] is not None and s["raw_fanout_s"] else None
    )
    s["cpu"] = {
        "loa": median_cpu([t["cpu"]["loa"] for t in per_trial]),
        "raw": median_cpu([t["cpu"]["raw"] for t in per_trial]),
    }
    s["per_trial"] = per_trial
    s["targets"] = [
        target("agents holding the bulletin", s["delivered"], agents, f"all {agents}",
               at_most=False),
        target("bytes on the wire per agent", s["wire_bytes_per_agent"],
               TARGET_OVERHEAD * encoded, "≤ 1.05 × encoded"),
        target("deliver_s / raw_fanout_s", s["deliver_ratio"], TARGET_RATIO, "≤ 2"),
        target("repeat bytes per agent", s["repeat_bytes_per_agent"], TARGET_REPEAT_BYTES,
               "≤ 2 KB"),
    ]  # fmt: skip
    s["pass"] = verdict(s["targets"])
    return s


def markdown(result: dict[str, Any], run_line: str, broker_line: str) -> str:
    r = result
    ok = {t["what"]: t["pass"] for t in r["targets"]}
    enc = r["encoded_bytes"]
    rows = [
        ["agents holding the bulletin", f"all {r['agents']}", str(r["delivered"]), "–", "–",
         pass_fail(ok["agents holding the bulletin"])],
        ["bytes on the wire per agent", f"≤ 1.05 × {enc}", f"{r['wire_bytes_per_agent']} "
         f"({r['overhead_pct']:+.2f} %)", str(enc), f"{r['wire_bytes_per_agent'] / enc:.3f} ×",
         pass_fail(ok["bytes on the wire per agent"])],
        ["delivery time (send → last agent verified)", "≤ 2 × raw", seconds(r["deliver_s"]),
         seconds(r["raw_fanout_s"]), ratio(r["deliver_s"], r["raw_fanout_s"]),
         pass_fail(ok["deliver_s / raw_fanout_s"])],
        ["a repeat, per agent", "≤ 2 KB (2048 bytes)", f"{r['repeat_bytes_per_agent']} bytes",
         "–", "–", pass_fail(ok["repeat bytes per agent"])],
    ]  # fmt: skip
    trials = [
        [str(i), str(t["delivered"]), seconds(t["deliver_s"]), seconds(t["raw_fanout_s"]),
         seconds(t["store_s"]), str(t["wire_bytes_per_agent"]),
         str(t["wire_bytes_per_agent_max"]), seconds(t["repeat_s"]),
         str(t["repeat_bytes_per_agent"])]
        for i, t in enumerate(r["per_trial"], 1)
    ]  # fmt: skip
    repeat_note = (
        f"A repeat cost each agent {r['repeat_bytes_per_agent']} bytes, of which "
        f"{r['repeat_chunk_bytes_per_agent']} are the audio chunks again: the controller "
        "publishes every chunk with every play, and an agent that already holds the "
        "content only drops them on arrival; the bytes have crossed its link by then."
        if r["repeat_chunk_bytes_per_agent"] > 0
        else "A repeat carried no audio chunks: only the play command reached the agents."
    )
    requests_note = (
        f"{r['chunk_requests']} chunk requests came from agents whose download made no "
        f"progress for 3 s, and the controller resent {r['resent_chunks']} chunks on their "
        "own content topics: that is where bytes beyond the encoded audio come from."
        if r["chunk_requests"] else "No agent asked for a chunk again."
    )
    return f"""\
## Delivery of a {r['minutes']:g}-minute bulletin, then a repeat

{run_line}
{r['agents']} simulated agents (real `Agent`, `null` output, each with its own cache on the
one disk) in {r['processes']} processes, each process's agents on one network thread (the
simulator's shared `NetworkLoop` and read-ahead client, their work run right after the reads:
scripts/sim_network.py, sim_workers.py); a {r['duration_s']:.0f} s bulletin
({'speech' if r['speech'] else 'tones'}), {enc} bytes of Opus in {r['chunks']} chunks of
{r['chunk_size']} bytes, sent with the real `Distributor.send_play` to the whole province
(one command and one copy of the chunks on the province's group topics).
{broker_line}

Bytes are counted on each agent's side: every MQTT PUBLISH that reached it (fixed header,
topic, packet id, payload; TCP/IP headers aside) on its command and content topics for
this play: the play command, which carries the manifest, and the chunks (median over
agents; acks and other control messages apart: {r['control_bytes_per_agent']} bytes per
agent). Delivery time runs from the `send_play` call to the last agent sending
`delivered` (all chunks held, SHA-256 verified). The raw broker column is bare paho
publishing the same bytes to {r['agents']} bare paho subscribers laid out in the same
processes on the same kind of loop, until the last one had every message.
Median of {r['trials']} trial(s). Overall: {pass_fail(r['pass'])}.

{table(["what", "target", "Loa", "raw broker / encoded", "ratio", "result"], rows)}

{repeat_note}

From the call, the agents sent `received` (the play command admitted) after
{seconds(r['received_p50_s'])} (p50) and {seconds(r['received_p99_s'])} (p99), and
`delivered` after {seconds(r['delivered_p50_s'])} (p50) and {seconds(r['deliver_s'])} (the last).

CPU seconds (user + system) each part used during the delivery (Loa) and the raw round:

{table(["part", "Loa", "raw broker"], cpu_rows(r["cpu"]["loa"], r["cpu"]["raw"]))}

{cpu_share_note(r["cpu"]["loa"], r["machine"]["nproc"], r["deliver_s"])}
{requests_note}

Storing alone, without the network: after each trial the same worker processes wrote a
copy of the bulletin for each of their agents to a new file of its own, in
{r['chunk_size']}-byte writes, hashing the bytes as they went (what each agent's cache does
with the chunks): {seconds(r['store_s'])}, {r['store_cpu_s']:.2f} CPU seconds (median), that is
{ratio(r['store_s'], r['raw_fanout_s'])} the raw fan-out before a byte has crossed the broker.

Per trial:

{table(["trial", "delivered", "deliver_s", "raw fan-out", "storing alone", "bytes/agent",
        "max bytes/agent", "repeat_s", "repeat bytes/agent"], trials)}
"""
