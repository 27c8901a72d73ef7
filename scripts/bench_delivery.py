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

On loopback, the delivery time and its ratio to the raw fan-out are reported, not
judged: 1,000 agents sharing 2 cores there measure the machine's page cache more than
Loa. With `--link 4g` the agents and the raw subscribers reach the broker through the
emulated 4G link (scripts/link_relay.py: 100 ms ± 50 ms one way, 1 % loss, and by
default 2 Mbit/s down and 0.5 Mbit/s up per connection), the controller and the raw
publisher directly; the target is then delivery within 1.25 × the raw fan-out over the
same links, and the result, with what the link carried and what the relay's own CPU
cost, goes to its own section (`delivery-4g`).
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
from link_relay import LinkParams, counts_between, kbit_text

from controller.audio import AudioSettings, PreparedAudio
from controller.distribution import PlaySpec, new_play_id
from controller.samples import demo_bulletin, tone
from protocol.messages import PlayBody

TITLE = "Bản tin đo tải"
AHEAD = timedelta(hours=1)
LATENESS = timedelta(minutes=5)
TARGET_OVERHEAD = 1.05
TARGET_REPEAT_BYTES = 2048
# Over the emulated 4G link with a bandwidth per connection: the radio, not the CPU, is
# what delivery waits for, so Loa should take little more than the broker alone.
TARGET_4G_RATIO = 1.25
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
    link: dict[str, Any] | None  # what the emulated link carried meanwhile, if any


def send_and_time(rig: Rig, audio: PreparedAudio, timeout: float) -> Sent:
    before = rig.counters()
    link0 = rig.relay.stats() if rig.relay else None
    cpu0 = rig.cpu()
    started = time.time()
    spec = play_spec(rig, audio)
    rig.controller.distributor.send_play(spec)
    delivered = rig.sightings.wait(spec.play_id, "delivered", rig.size, timeout)
    used = cpu_used(cpu0, rig.cpu())
    link = counts_between(link0, rig.relay.stats()) if rig.relay and link0 else None
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
        before=before, after=after, cpu=used, link=link,
    )  # fmt: skip


def trial(rig: Rig, audio: PreparedAudio, timeout: float) -> dict[str, Any]:
    n = rig.size
    spec = play_spec(rig, audio)
    link0 = rig.relay.stats() if rig.relay else None
    cpu0 = rig.cpu()
    raw = rig.baseline.round(raw_messages(rig, raw_body(spec, audio), audio), timeout)
    raw_cpu = cpu_used(cpu0, rig.cpu())
    raw_link = counts_between(link0, rig.relay.stats()) if rig.relay and link0 else None
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
    result: dict[str, Any] = {
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
    if first.link is not None and raw_link is not None:
        # What the link carried (and lost) from the call until every agent held the
        # bulletin, and in the raw round.
        result["link"] = {"loa": first.link, "raw": raw_link}
    return result


def _median_of(trials: list[dict[str, Any]], key: str) -> float | None:
    values = [t[key] for t in trials if t.get(key) is not None]
    return median(values) if values else None


def run(agents: int, minutes: float, trials: int, per_process: int | None, verbose: bool,
        keep: bool, link: LinkParams | None = None) -> dict[str, Any]:  # fmt: skip
    """The bench; with link, the agents and raw subscribers behind that emulated link."""
    if not 0 < minutes <= 60:
        raise ValueError("--minutes: more than 0, at most 60")
    check_per_process(per_process)
    timeout = 60.0 + 0.15 * agents * max(1.0, minutes / 5)
    if link is not None and link.down_kbit > 0:  # at least the time the link needs, twice
        timeout += 2 * minutes * 60 * 24_000 / (link.down_kbit * 1000)
    settings = AudioSettings(max_duration_s=max(3600.0, minutes * 60 + 60))
    with fleet_rig(agents, per_process, shared_cache=False, verbose=verbose, audio=settings,
                   keep=keep, link=link) as rig:  # fmt: skip
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
            relay = result["cpu"]["loa"].get("link_relay")
            say(
                f"trial {k}/{trials}: {result['delivered']}/{agents} delivered in "
                f"{seconds(result['deliver_s'])} (raw broker {seconds(result['raw_fanout_s'])}); "
                f"{result['wire_bytes_per_agent']} bytes per agent; repeat "
                f"{result['repeat_bytes_per_agent']} bytes per agent"
                + (f"; link relay {relay['user_s'] + relay['system_s']:.1f} CPU-s during the "
                   "delivery" if relay else "")
            )  # fmt: skip
        processes = rig.agents.processes
        link_totals = rig.relay.stats() if rig.relay else None
    summary = summarise(agents, minutes, processes, spoken, bulletins, per_trial)
    if link is None:
        return summary
    return _over_link(summary, link, link_totals)


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
        if key not in s and key not in ("cpu", "link"):
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
        target("repeat bytes per agent", s["repeat_bytes_per_agent"], TARGET_REPEAT_BYTES,
               "≤ 2 KB"),
    ]  # fmt: skip
    s["pass"] = verdict(s["targets"])
    return s


def _busy_pct(cpu: dict[str, dict[str, float]], part: str, wall_s: float | None) -> float | None:
    """A part's CPU over a window, as a share of one core (100: a core all the time)."""
    used = cpu.get(part)
    if used is None or not wall_s:
        return None
    return rounded(100 * (used["user_s"] + used["system_s"]) / wall_s, 1)


def _link_worst_s(link: LinkParams, wire_bytes: int) -> float | None:
    if link.down_kbit <= 0:
        return None
    on_line = max(0, wire_bytes - link.burst_bytes) + link.loss * wire_bytes
    return rounded(
        8 * on_line / (1000 * link.down_kbit) + 2 * (link.delay_s + link.jitter_s) + link.rto_s
    )


def _over_link(s: dict[str, Any], link: LinkParams, totals: dict[str, Any] | None
               ) -> dict[str, Any]:  # fmt: skip
    """The 4G run: the link, what it carried, what the relay cost, and its own target."""
    per_trial = s["per_trial"]

    def link_median(window: str, way: str, key: str) -> float:
        value = median([t["link"][window][way][key] for t in per_trial])
        return int(value) if value == int(value) else value

    s |= {
        "link": "4g",
        "link_params": link.as_dict(),
        "link_description": link.describe(),
        # Everything the link carried from the first agent connecting to the last trial.
        "link_totals": totals,
        "link_window": {
            window: {
                way: {key: link_median(window, way, key) for key in ("bytes", "packets", "lost")}
                for way in ("down", "up")
            }
            for window in ("loa", "raw")
        },
        # The least time the downlink needs to carry what reached each agent: what the
        # full bucket does not hold at the rate, then the shortest one-way delay.
        "line_s": (
            rounded(
                8 * max(0, s["wire_bytes_per_agent"] - link.burst_bytes) / (1000 * link.down_kbit)
                + link.delay_s - link.jitter_s
            )
            if link.down_kbit > 0 else None
        ),
        # About the most the link alone explains for the slowest connection: the line
        # time, the retransmissions' own time on the line, the longest one-way delay, and
        # a packet lost near the end (its retransmission timeout and another one-way delay
        # at the longest).
        "link_worst_s": _link_worst_s(link, s["wire_bytes_per_agent"]),
        # The relay process's CPU as a share of one core, in each timed window: near 100,
        # it, not the emulated radio, set the pace.
        "relay_busy_pct": {
            "loa": _busy_pct(s["cpu"]["loa"], "link_relay", s["deliver_s"]),
            "raw": _busy_pct(s["cpu"]["raw"], "link_relay", s["raw_fanout_s"]),
        },
    }
    # What the relay costs: CPU per megabyte it carried (both ways) in Loa's window, and
    # the cores it would need to carry every agent's bytes at the downlink's rate.
    relay_cpu = s["cpu"]["loa"].get("link_relay")
    carried = s["link_window"]["loa"]["down"]["bytes"] + s["link_window"]["loa"]["up"]["bytes"]
    if relay_cpu is not None and carried:
        per_mb = 1000 * (relay_cpu["user_s"] + relay_cpu["system_s"]) / (carried / 1e6)
        s["relay_ms_per_mb"] = rounded(per_mb, 2)
        s["relay_cores_at_line_rate"] = (
            rounded(per_mb / 1000 * carried / 1e6 / s["line_s"], 2) if s["line_s"] else None
        )
    else:
        s["relay_ms_per_mb"] = s["relay_cores_at_line_rate"] = None
    s["targets"] = [
        *s["targets"][:2],
        target("deliver_s / raw_fanout_s", s["deliver_ratio"], TARGET_4G_RATIO, "≤ 1.25 × raw"),
        s["targets"][2],
    ]
    s["pass"] = verdict(s["targets"])
    return s


def _headline_rows(r: dict[str, Any]) -> list[list[str]]:
    """The results table: each measure with its target and verdict where the run checked
    one (r["targets"]: loopback reports the delivery time, 4G judges it)."""
    checked = {t["what"]: t for t in r["targets"]}
    enc = r["encoded_bytes"]

    def row(what: str, key: str, loa: str, base: str, ratio_: str) -> list[str]:
        t = checked.get(key)
        if t is None:
            return [what, "–", loa, base, ratio_, ""]
        return [what, t["target"], loa, base, ratio_, pass_fail(t["pass"])]

    return [
        row("agents holding the bulletin", "agents holding the bulletin", str(r["delivered"]),
            "–", "–"),
        row("bytes on the wire per agent", "bytes on the wire per agent",
            f"{r['wire_bytes_per_agent']} ({r['overhead_pct']:+.2f} %)", f"{enc} (encoded)",
            f"{r['wire_bytes_per_agent'] / enc:.3f} ×"),
        row("delivery time (send → last agent verified)", "deliver_s / raw_fanout_s",
            seconds(r["deliver_s"]), f"{seconds(r['raw_fanout_s'])} (raw broker)",
            ratio2(r["deliver_s"], r["raw_fanout_s"])),
        row("a repeat, per agent", "repeat bytes per agent",
            f"{r['repeat_bytes_per_agent']} bytes", "–", "–"),
    ]  # fmt: skip


def ratio2(value: float | None, base: float | None) -> str:
    """A ratio with two decimals, as the 1.25 target reads."""
    if value is None or base is None or base <= 0:
        return "–"
    return f"{value / base:.2f} ×"


def _fleet_text(r: dict[str, Any]) -> str:
    enc = r["encoded_bytes"]
    return f"""\
{r['agents']} simulated agents (real `Agent`, `null` output, each with its own cache on the
one disk) in {r['processes']} processes, each process's agents on one network thread (the
simulator's shared `NetworkLoop` and read-ahead client, their work run right after the reads:
scripts/sim_network.py, sim_workers.py); a {r['duration_s']:.0f} s bulletin
({'speech' if r['speech'] else 'tones'}), {enc} bytes of Opus in {r['chunks']} chunks of
{r['chunk_size']} bytes, sent with the real `Distributor.send_play` to the whole province
(one command and one copy of the chunks on the province's group topics)."""


def _measured_text(r: dict[str, Any], link: str) -> str:
    return f"""\
Bytes are counted on each agent's side: every MQTT PUBLISH that reached it (fixed header,
topic, packet id, payload; TCP/IP headers aside) on its command and content topics for
this play: the play command, which carries the manifest, and the chunks (median over
agents; acks and other control messages apart: {r['control_bytes_per_agent']} bytes per
agent). Delivery time runs from the `send_play` call to the last agent sending
`delivered` (all chunks held, SHA-256 verified). The raw broker column is bare paho
publishing the same bytes to {r['agents']} bare paho subscribers laid out in the same
processes on the same kind of loop{link}, until the last one had every message.
Median of {r['trials']} trial(s). Overall: {pass_fail(r['pass'])}."""


def _notes(r: dict[str, Any]) -> tuple[str, str]:
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
    return repeat_note, requests_note


def _timeline_text(r: dict[str, Any]) -> str:
    return f"""\
From the call, the agents sent `received` (the play command admitted) after
{seconds(r['received_p50_s'])} (p50) and {seconds(r['received_p99_s'])} (p99), and
`delivered` after {seconds(r['delivered_p50_s'])} (p50) and {seconds(r['deliver_s'])} (the last)."""


def _storing_text(r: dict[str, Any]) -> str:
    return f"""\
Storing alone, without the network: after each trial the same worker processes wrote a
copy of the bulletin for each of their agents to a new file of its own, in
{r['chunk_size']}-byte writes, hashing the bytes as they went (what each agent's cache does
with the chunks): {seconds(r['store_s'])}, {r['store_cpu_s']:.2f} CPU seconds (median), that is
{ratio(r['store_s'], r['raw_fanout_s'])} the raw fan-out before a byte has crossed the broker."""


def _trial_rows(r: dict[str, Any]) -> list[list[str]]:
    return [
        [str(i), str(t["delivered"]), seconds(t["deliver_s"]), seconds(t["raw_fanout_s"]),
         ratio2(t["deliver_s"], t["raw_fanout_s"]), seconds(t["store_s"]),
         str(t["wire_bytes_per_agent"]), str(t["wire_bytes_per_agent_max"]),
         seconds(t["repeat_s"]), str(t["repeat_bytes_per_agent"])]
        for i, t in enumerate(r["per_trial"], 1)
    ]  # fmt: skip


TRIAL_HEADER = ["trial", "delivered", "deliver_s", "raw fan-out", "ratio", "storing alone",
                "bytes/agent", "max bytes/agent", "repeat_s", "repeat bytes/agent"]  # fmt: skip


def markdown(result: dict[str, Any], run_line: str, broker_line: str) -> str:
    if result.get("link") == "4g":
        return _markdown_4g(result, run_line, broker_line)
    r = result
    repeat_note, requests_note = _notes(r)
    return f"""\
## Delivery of a {r['minutes']:g}-minute bulletin, then a repeat

{run_line}
{_fleet_text(r)}
{broker_line}

{_measured_text(r, "")}
On loopback the delivery time and its ratio to the raw fan-out are figures, not a target:
{r['agents']} agents sharing {r['machine']['nproc']} cores here measure the machine (its
page cache, the agents' interpreters) more than the network; the delivery-time target is
judged over the emulated 4G link (`delivery --link 4g`, its own section).

{table(["what", "target", "Loa", "yardstick", "ratio", "result"], _headline_rows(r))}

{repeat_note}

{_timeline_text(r)}

CPU seconds (user + system) each part used during the delivery (Loa) and the raw round:

{table(["part", "Loa", "raw broker"], cpu_rows(r["cpu"]["loa"], r["cpu"]["raw"]))}

{cpu_share_note(r["cpu"]["loa"], r["machine"]["nproc"], r["deliver_s"])}
{requests_note}

{_storing_text(r)}

Per trial:

{table(TRIAL_HEADER, _trial_rows(r))}
"""


def _ms(seconds_: float) -> str:
    return f"{1000 * seconds_:.0f} ms"


def _link_rows(r: dict[str, Any]) -> list[list[str]]:
    rows = []
    for window, what in (("loa", "Loa: from the call until every agent held the bulletin"),
                         ("raw", "raw broker: the raw round")):  # fmt: skip
        w = r["link_window"][window]
        rows.append([what, *(str(w[way][key]) for way in ("down", "up")
                             for key in ("bytes", "packets", "lost"))])  # fmt: skip
    return rows


def _relay_text(r: dict[str, Any]) -> str:
    """What the relay process cost, whether it or the emulated radio set the pace, and
    how far each column was from the time the downlink alone needs."""
    busy = r["relay_busy_pct"]
    loa, raw = busy["loa"], busy["raw"]
    if loa is None or raw is None:
        return ""
    cpu_loa = r["cpu"]["loa"]["link_relay"]
    cpu_raw = r["cpu"]["raw"]["link_relay"]
    worst = max(loa, raw)
    if worst >= 85:
        judgement = (
            "The relay, one single-threaded process, was at or near a whole core in at "
            "least one window: there it, not the emulated radio, set the pace, and the "
            "ratio says less about Loa than it should; a smaller fleet (--agents) keeps "
            "the relay within a core."
        )
    elif worst >= 60:
        judgement = "The relay had headroom in both windows, though not much."
    else:
        judgement = "The relay had headroom in both windows: it did not set the pace."
    need = ""
    if r.get("relay_ms_per_mb") and r.get("relay_cores_at_line_rate") is not None:
        need = (
            f" It costs {r['relay_ms_per_mb']:.1f} ms of CPU per megabyte it carries (most of "
            "it the kernel's loopback TCP, in and out): to carry what Loa's delivery sent "
            f"at the downlink's rate, in {seconds(r['line_s'])}, it would need "
            f"{r['relay_cores_at_line_rate']:.2f} cores' worth of CPU, and it can use one "
            "core at most."
        )
    pace = ""
    line_s, raw_s, loa_s = r.get("line_s"), r["raw_fanout_s"], r["deliver_s"]
    worst_s = r.get("link_worst_s")
    if line_s and worst_s and raw_s and loa_s:
        pace = (
            f" Against the {seconds(line_s)} the downlink alone needs, the raw fan-out took "
            f"{raw_s / line_s:.2f} × and Loa {loa_s / line_s:.2f} ×; the link itself explains "
            f"about {seconds(worst_s)} for the slowest connection (retransmissions, the "
            "longest one-way delay, and a packet lost near the end)"
        )
        if raw_s <= 1.05 * worst_s:
            pace += ", so the emulated radio set the raw broker's pace."
        else:
            pace += (
                ": beyond that, the raw round waited for the machine (the relay, the broker "
                "and the subscribers share its cores with everything else running; see the "
                "load average above), and the yardstick is slower than the radio alone."
            )
    return (
        f"What the emulated link itself cost: the relay process (Python, asyncio, one "
        f"thread) used {cpu_loa['user_s']:.2f} + {cpu_loa['system_s']:.2f} CPU seconds "
        f"during Loa's delivery, {loa:.0f} % of one core over its {seconds(r['deliver_s'])}, "
        f"and {cpu_raw['user_s']:.2f} + {cpu_raw['system_s']:.2f} during the raw round, "
        f"{raw:.0f} % of one core over its {seconds(r['raw_fanout_s'])} (medians over "
        f"trials).{need} {judgement}{pace}"
    )


def _markdown_4g(r: dict[str, Any], run_line: str, broker_line: str) -> str:
    link = r["link_params"]
    low, high = link["delay_s"] - link["jitter_s"], link["delay_s"] + link["jitter_s"]
    repeat_note, requests_note = _notes(r)
    totals = r["link_totals"] or {}
    total_lines = []
    for way, towards in (("down", "towards the agents"), ("up", "towards the broker")):
        c = totals.get(way)
        if c:
            share = 100 * c["lost"] / c["packets"] if c["packets"] else 0.0
            total_lines.append(
                f"{towards} {c['bytes']} bytes in {c['packets']} packets, {c['lost']} lost "
                f"({share:.2f} %)"
            )
    line = (
        f"At {kbit_text(link['down_kbit'])} the downlink alone needs "
        f"{seconds(r['line_s'])} to carry one agent's {r['wire_bytes_per_agent']} bytes "
        "(the bucket's depth at once, the rest at the rate, then the shortest one-way "
        "delay): the least time either column could take."
        if r["line_s"] else ""
    )
    return f"""\
## Delivery of a {r['minutes']:g}-minute bulletin over an emulated 4G link, then a repeat

{run_line}
{_fleet_text(r)}
{broker_line}

The link: every agent, and every bare subscriber of the raw broker column, reaches the
broker through an emulated 4G link (scripts/link_relay.py: a TCP relay in its own
process), per connection and in both directions. Each connection has its own bandwidth,
as each box on a pole has its own radio: {kbit_text(link['down_kbit'])} towards the agent
and {kbit_text(link['up_kbit'])} towards the broker (a token bucket {link['burst_bytes']}
bytes deep; a lost packet spends its size again when retransmitted). A packet arrives
{_ms(low)} to {_ms(high)} after it left, uniformly: {_ms(link["delay_s"])} ±
{_ms(link["jitter_s"])} **one way**, in each direction; never before the packet before it
on the same connection. Packets of {link["mss"]} bytes are lost with probability
{link["loss"]:g}; a lost packet, and everything behind it on the connection, arrives
{_ms(link["rto_s"])} (Linux's minimum retransmission timeout) plus another one-way delay
later. The relay holds at most {link["window_bytes"] // 1024} KB per connection and
direction read and not yet delivered, then stops reading from the sender, as a full TCP
window would; the broker keeps the rest. The random draws are seeded (seed
{link["seed"]}). The controller and the raw publisher connect to the broker directly, as
from a data centre. {line}

{_measured_text(r, ", over the same links")}

{table(["what", "target", "Loa", "yardstick", "ratio", "result"], _headline_rows(r))}

{_relay_text(r)}

What the link carried in the timed windows (medians over trials; down: towards the
agents, up: towards the broker):

{table(["window", "bytes down", "packets down", "lost down", "bytes up", "packets up",
        "lost up"], _link_rows(r))}

Over the whole run, {totals.get("connections", 0)} connections from the first agent \
connecting to the end of the last trial: {"; ".join(total_lines) or "–"}.

{repeat_note}

{_timeline_text(r)}

CPU seconds (user + system) each part used during the delivery (Loa) and the raw round:

{table(["part", "Loa", "raw broker"], cpu_rows(r["cpu"]["loa"], r["cpu"]["raw"]))}

{cpu_share_note(r["cpu"]["loa"], r["machine"]["nproc"], r["deliver_s"])}
{requests_note}

{_storing_text(r)}

Per trial:

{table(TRIAL_HEADER, _trial_rows(r))}
"""
