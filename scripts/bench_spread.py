"""`bench.py spread`: one scheduled play, and how far apart the agents start it.

The controller's `Distributor.send_play` sends one short bulletin (tones) to the whole
province well ahead of its start time (`--lead-s`, by default a few seconds out). Each
simulated agent is a real `Agent` on a worker thread of its own (`OwnThread`, what an
agent on a pole runs), not on the simulator's shared pool: when the play is due, the
agent's own thread wakes from its wait, its step runs the player's `tick()`, which saves
the play as started and hands it to the player's output thread, which calls the output
(the null one). The output notes `time.time()` as it is handed the play: that is an
agent's start. Every agent runs on the machine's one clock, so the starts compare
directly with each other and with the scheduled start.

Reported per trial and as medians over trials: `started` (agents whose output was handed
the play), `spread_p50_ms`, `spread_p95_ms`, `spread_p99_ms`, `spread_max_ms` (how far
each agent's start lies from the median start, |start − median start|, at those ranks),
`range_ms` (latest start − earliest), and `late_*_ms` (start − scheduled start, the
lateness every agent shares plus its own).

The spread is measured from the median start, not from the scheduled start: a delay all
agents share (the time a start takes) is heard by no one as an echo; what neighbouring
villages hear is how far apart the loudspeakers start. The lateness is reported beside
it.

The raw yardstick, in the same run and on the same worker processes (the agents idle
meanwhile): as many plain threads as each process has agents, each waiting until one
instant the same way an agent's worker thread waits (bench_fleet.plain_timers), noting
`time.time()` as it wakes. Its spread is what the machine's scheduler gives N threads on
its cores, before any work is done.

Also measured: the CPU the agents' processes used from just before the start until the
last agent started, per agent (the work of one start), and from it the least time the
machine needs to do that work for every agent, one start after another on its cores:
`serial_ms` = agents × CPU per start / cores.

And, after the trials, agents one at a time (`--alone K` of them, default 40): a play
for each of K agents spread over the processes, each addressed to that cluster alone,
their start times ALONE_GAP_S apart, so that each agent starts with no other start
queued beside it, as each agent on a pole does with a core of its own. `alone_late_*_ms`
is how late those starts were and `alone_spread_*_ms` how far each lay from their median
lateness: the spread poles would show from the agent's own start path if their clocks
agreed exactly.
"""

from __future__ import annotations

import math
import os
import statistics
import textwrap
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bench_fleet import check_per_process
from bench_report import pass_fail, percentile, table, target, verdict
from bench_rig import Rig, cpu_rows, cpu_used, fleet_rig, median_cpu, say

from controller.audio import PreparedAudio
from controller.distribution import PlaySpec, new_play_id
from controller.samples import tone

TITLE = "Bản tin đo độ lệch"
TARGET_SPREAD_MS = 20.0
BULLETIN_S = 2.0
LATENESS = timedelta(minutes=5)
# The CPU reading before a start is taken this long before it (the agents are idle then).
CPU_AHEAD_S = 0.3
# Agents started one at a time: this far apart (one start takes a few ms of CPU here).
ALONE_GAP_S = 0.15
ALONE_LEAD_S = 3.0

STAT_KEYS = (
    "spread_p50_ms", "spread_p95_ms", "spread_p99_ms", "spread_max_ms", "range_ms",
    "late_min_ms", "late_p50_ms", "late_p99_ms", "late_max_ms",
)  # fmt: skip


def default_lead_s(agents: int) -> float:
    """How far ahead the play is sent: room for every agent to receive and verify it."""
    return 3.0 + 0.004 * agents


def spread_stats(starts: Sequence[float], scheduled: float) -> dict[str, float | None]:
    """Figures (ms, to 0.1) of start times (seconds, one clock) against the scheduled
    start: the spread (|start − median start| at ranks 50, 95, 99 and its largest), the
    range (latest − earliest) and the lateness (start − scheduled). Not-a-number starts
    (a timer that never woke) are left out; none left: every figure None."""
    valid = [t for t in starts if math.isfinite(t)]
    if not valid:
        return dict.fromkeys(STAT_KEYS)
    middle = statistics.median(valid)
    off = [1000 * abs(t - middle) for t in valid]
    late = [1000 * (t - scheduled) for t in valid]
    figures = {
        "spread_p50_ms": percentile(off, 50),
        "spread_p95_ms": percentile(off, 95),
        "spread_p99_ms": percentile(off, 99),
        "spread_max_ms": max(off),
        "range_ms": 1000 * (max(valid) - min(valid)),
        "late_min_ms": min(late),
        "late_p50_ms": percentile(late, 50),
        "late_p99_ms": percentile(late, 99),
        "late_max_ms": max(late),
    }
    return {k: round(v, 1) for k, v in figures.items()}


def median_of(trials: list[dict[str, Any]], key: str) -> float | None:
    values = [t[key] for t in trials if t.get(key) is not None]
    return round(statistics.median(values), 1) if values else None


def _bulletin(rig: Rig) -> PreparedAudio:
    wav = tone(rig.work / "do-lech.wav", BULLETIN_S, freq=600)
    return rig.controller.library.prepare([wav])


def _trial(rig: Rig, audio: PreparedAudio, lead_s: float, timeout: float) -> dict[str, Any]:
    """One scheduled play to every agent, then the plain timers: the figures of both."""
    agents = rig.size
    start = datetime.now(UTC) + timedelta(seconds=lead_s)
    spec = PlaySpec(
        play_id=new_play_id("spread"), bulletin=TITLE, level="normal", start_at=start,
        latest_start=start + LATENESS, items=[audio], clusters=rig.province.clusters,
    )  # fmt: skip
    rig.controller.distributor.send_play(spec)
    scheduled = start.timestamp()
    delivered = rig.sightings.wait(
        spec.play_id, "delivered", agents, max(0.1, scheduled - CPU_AHEAD_S - time.time())
    )
    time.sleep(max(0.0, scheduled - CPU_AHEAD_S - time.time()))
    cpu0 = rig.cpu()
    starts = rig.sightings.wait(spec.play_id, "output", agents, lead_s + timeout)
    loa_cpu = cpu_used(cpu0, rig.cpu())
    rig.sightings.wait(spec.play_id, ("finished", "failed", "missed"), agents,
                       BULLETIN_S + timeout)  # fmt: skip
    rig.settle()

    # The plain timers: as many threads in each worker as it has agents, on one instant.
    at = time.time() + 2.0 + 0.002 * agents  # time to start the threads before it
    woke = [t for reply in rig.agents.ask("timers", at, timeout=at - time.time() + timeout)
            for t in reply]  # fmt: skip
    loa = spread_stats(list(starts.values()), scheduled)
    raw = spread_stats(woke, at)
    spent = loa_cpu["agents"]["user_s"] + loa_cpu["agents"]["system_s"]
    trial: dict[str, Any] = {
        "play_id": spec.play_id,
        "delivered_before_start": len(delivered),
        "started": len(starts),
        **loa,
        "raw_woke": sum(1 for t in woke if math.isfinite(t)),
        **{f"raw_{k}": v for k, v in raw.items()},
        "cpu_per_start_ms": round(1000 * spent / len(starts), 3) if starts else None,
        "cpu": loa_cpu,
    }
    say(
        f"{len(starts)}/{agents} started; spread p95 {trial['spread_p95_ms']} ms "
        f"(raw timers {trial['raw_spread_p95_ms']} ms), late p50 {trial['late_p50_ms']} ms, "
        f"max {trial['late_max_ms']} ms; {trial['cpu_per_start_ms']} ms CPU per start"
    )
    return trial


def _alone(rig: Rig, audio: PreparedAudio, count: int, timeout: float) -> list[float]:
    """Plays to `count` agents (every process's in turn), each addressed to that cluster
    alone and due ALONE_GAP_S after the one before: how late each agent started (s)."""
    clusters = sorted(rig.province.clusters)  # the workers' members are runs of these
    n = min(count, len(clusters))
    chosen = [clusters[i * len(clusters) // n] for i in range(n)]
    first = datetime.now(UTC) + timedelta(seconds=ALONE_LEAD_S)
    sent: list[tuple[str, float]] = []
    for i, cid in enumerate(chosen):
        start = first + timedelta(seconds=i * ALONE_GAP_S)
        spec = PlaySpec(
            play_id=new_play_id("alone"), bulletin=TITLE, level="normal", start_at=start,
            latest_start=start + LATENESS, items=[audio], clusters=[cid],
        )  # fmt: skip
        rig.controller.distributor.send_play(spec)
        sent.append((spec.play_id, start.timestamp()))
    late: list[float] = []
    for play_id, scheduled in sent:
        seen = rig.sightings.wait(play_id, "output", 1, ALONE_LEAD_S + timeout)
        late.extend(at - scheduled for at in seen.values())
    for play_id, _scheduled in sent:
        rig.sightings.wait(play_id, ("finished", "failed", "missed"), 1, BULLETIN_S + timeout)
    return late


def run(agents: int, trials: int, per_process: int | None, lead_s: float | None,
        verbose: bool, keep: bool, alone: int = 40) -> dict[str, Any]:  # fmt: skip
    check_per_process(per_process)
    lead = lead_s if lead_s is not None else default_lead_s(agents)
    timeout = 30.0 + 0.02 * agents
    with fleet_rig(agents, per_process, shared_cache=True, verbose=verbose, keep=keep,
                   own_threads=True) as rig:  # fmt: skip
        audio = _bulletin(rig)
        say(f"{trials} scheduled plays to {agents} agents, each sent {lead:g} s ahead")
        runs = [_trial(rig, audio, lead, timeout) for _ in range(trials)]
        say(f"{min(alone, agents)} agents started one at a time, {ALONE_GAP_S:g} s apart")
        alone_late = _alone(rig, audio, alone, timeout) if alone > 0 else []
        processes = rig.agents.processes
    nproc = os.cpu_count() or 1
    result: dict[str, Any] = {
        "bench": "spread",
        "agents": agents,
        "processes": processes,
        "trials": len(runs),
        "lead_s": lead,
        "bulletin_s": BULLETIN_S,
        "started": min(t["started"] for t in runs),
        "delivered_before_start": min(t["delivered_before_start"] for t in runs),
        **{k: median_of(runs, k) for k in STAT_KEYS},
        **{f"raw_{k}": median_of(runs, f"raw_{k}") for k in STAT_KEYS},
        "raw_woke": min(t["raw_woke"] for t in runs),
        "cpu_per_start_ms": median_of(runs, "cpu_per_start_ms"),
        "alone": len(alone_late),
        **{f"alone_{k}": v for k, v in spread_stats(alone_late, 0.0).items()},
        "cpu": median_cpu([t["cpu"] for t in runs]),
        "per_trial": [{k: v for k, v in t.items() if k != "cpu"} for t in runs],
        "measured": "time.time() in each agent's process as its output is handed the play "
        "(the player's output thread), against the play's start_at (the controller's "
        "clock: the same machine)",
    }
    per_start = result["cpu_per_start_ms"]
    result["serial_ms"] = round(agents * per_start / nproc, 1) if per_start is not None else None
    spread, raw = result["spread_p95_ms"], result["raw_spread_p95_ms"]
    result["ratio_to_raw"] = round(spread / raw, 2) if spread is not None and raw else None
    result["targets"] = [
        target("agents started", result["started"], agents, f"all {agents}", at_most=False),
        target("start spread p95 across agents", spread, TARGET_SPREAD_MS,
               f"≤ {TARGET_SPREAD_MS:g} ms"),
    ]  # fmt: skip
    result["pass"] = verdict(result["targets"])
    return result


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} ms"


def _why(r: dict[str, Any]) -> str:
    """What the figures say about a missed target (or nothing when it is met)."""
    if r["pass"] or r["spread_p95_ms"] is None:
        return ""
    nproc = r["machine"]["nproc"]
    agents_cpu = r["cpu"]["agents"]
    spent = agents_cpu["user_s"] + agents_cpu["system_s"]
    kernel = f"{100 * agents_cpu['system_s'] / spent:.0f} %" if spent else "–"
    per_process = math.ceil(r["agents"] / max(1, r["processes"]))
    paragraphs = [
        f"Why the target is missed here: at one instant, one start cost the agents' "
        f"processes {r['cpu_per_start_ms']} ms of CPU (median over trials; {kernel} of it "
        f"in the kernel): the agent's step, the player saving the play as started with its "
        f"`playing` event, the output thread woken and the event sent, with "
        f"{per_process} agents of a process, each with its own threads, waking at once and "
        f"taking turns at the process's interpreter. {r['agents']} agents on {nproc} cores "
        f"need at least {_ms(r['serial_ms'])} for that work, one start after another "
        f"(agents × CPU per start / cores), and the starts spanned {_ms(r['range_ms'])}: "
        f"the agents queue for the machine's cores, so the last starts that much after "
        f"the first.",
    ]
    raw = r.get("raw_spread_p95_ms")
    if raw is not None:
        paragraphs.append(
            f"Plain timers, as many threads in the same processes with no work to do, woke "
            f"{_ms(raw)} from their median (p95) and {_ms(r['raw_late_max_ms'])} late at "
            + (f"worst: waking {per_process} threads of one process at one instant already "
               "takes the machine more than the target."
               if raw > TARGET_SPREAD_MS else
               "worst: the machine wakes that many threads within the target; the rest is "
               "the agents' work, queued.")
        )  # fmt: skip
    if r.get("alone"):
        paragraphs.append(
            f"Started one at a time ({r['alone']} agents, {ALONE_GAP_S:g} s apart, nothing "
            f"else starting), the same agents were {_ms(r['alone_late_p50_ms'])} late at "
            f"the median and {_ms(r['alone_late_max_ms'])} at worst, and lay "
            f"{_ms(r['alone_spread_p95_ms'])} (p95) from their median lateness: that is "
            "the start path as a pole runs it, with a core of its own for its one agent. "
            "On poles the spread is then what their clocks disagree by (NTP) plus that "
            "variation; on this machine, with every agent starting at once, it is the "
            "queue for the cores."
        )
    return "\n\n".join(textwrap.fill(text, 88) for text in paragraphs)


def markdown(r: dict[str, Any], run_line: str, broker_line: str) -> str:
    rows = [
        [t["what"], t["target"], str(t["value"]) + (" ms" if "spread" in t["what"] else ""),
         pass_fail(t["pass"])]
        for t in r["targets"]
    ]  # fmt: skip

    def ratio(key: str) -> str:
        loa, raw = r.get(key), r.get(f"raw_{key}")
        return f"{loa / raw:.1f} ×" if loa is not None and raw else "–"

    figures = [
        [label, _ms(r[key]), _ms(r[f"raw_{key}"]), ratio(key)]
        for label, key in (
            ("spread p50 (from the median start)", "spread_p50_ms"),
            ("spread p95", "spread_p95_ms"),
            ("spread p99", "spread_p99_ms"),
            ("spread max", "spread_max_ms"),
            ("range (latest − earliest)", "range_ms"),
            ("late: earliest (start − scheduled)", "late_min_ms"),
            ("late p50", "late_p50_ms"),
            ("late p99", "late_p99_ms"),
            ("late: latest", "late_max_ms"),
        )
    ]
    alone = [
        [label, _ms(r[f"alone_{key}"])]
        for label, key in (
            ("late: earliest", "late_min_ms"), ("late p50", "late_p50_ms"),
            ("late p99", "late_p99_ms"), ("late: latest", "late_max_ms"),
            ("spread p95 (from the median lateness)", "spread_p95_ms"),
            ("spread max", "spread_max_ms"),
        )
    ]  # fmt: skip
    trials = [
        [str(i + 1), f"{t['started']}", _ms(t["spread_p95_ms"]), _ms(t["range_ms"]),
         _ms(t["late_p50_ms"]), _ms(t["late_max_ms"]), _ms(t["raw_spread_p95_ms"]),
         f"{t['cpu_per_start_ms']} ms"]
        for i, t in enumerate(r["per_trial"])
    ]  # fmt: skip
    why = _why(r)
    why = f"{why}\n\n" if why else ""
    return f"""\
## One scheduled play: how far apart the agents start

{run_line}
{broker_line}

{r['agents']} simulated agents (real `Agent`, `null` output) in {r['processes']} processes,
each agent on a worker thread of its own (`OwnThread`: the thread an agent on a pole
waits on for its next step) rather than the simulator's shared pool; their network side
is the simulator's shared loop (scripts/sim_network.py), which the play's start does not
use. A {r['bulletin_s']:g} s bulletin (tones), sent with the real `Distributor.send_play`
to the whole province {r['lead_s']:g} s before its start time
({r['delivered_before_start']} of {r['agents']} agents held it before the start, in the
trial where fewest did). The player decides the start in its `tick()` on the agent's
thread and hands the play to its output thread; measured: {r['measured']}.

The spread is each agent's distance from the median start, |start − median start|:
what neighbouring villages hear as an echo is how far apart the loudspeakers start, not
the delay they all share; how late they start against the scheduled time is reported
beside it. The raw column: in the same run and the same processes, as many plain threads
as each process has agents, each waiting for one instant as an agent's thread waits (a
queue's get with a timeout), then noting the time: what the machine's scheduler alone
gives. Median of {r['trials']} trial(s). Overall: **{'PASS' if r['pass'] else 'FAIL'}**.

{table(["what", "target", "Loa", "result"], rows)}

{table(["figure", "Loa", "plain timers", "ratio"], figures)}

{why}Agents started one at a time: {r['alone']} of them across the processes, each sent a
play of its own, their start times {ALONE_GAP_S:g} s apart, so that no other start
queues beside theirs (what an agent on a pole, with its own core, sees):

{table(["figure", "Loa, one agent at a time"], alone)}

CPU seconds (user + system) each part used from {CPU_AHEAD_S:g} s before the start until the
last agent started (medians over trials): {r['cpu_per_start_ms']} ms per agent started.

{table(["part", "Loa"], [row[:2] for row in cpu_rows(r["cpu"], r["cpu"])])}

Per trial:

{table(["trial", "started", "spread p95", "range", "late p50", "late max",
        "timers' spread p95", "CPU per start"], trials)}
"""
