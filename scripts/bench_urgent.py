"""`bench.py urgent`: an urgent announcement to the whole province, until every agent plays.

A 30-second message is made (controller.samples: a warble and Vietnamese speech from
espeak-ng, or tones) and prepared by the controller's AudioLibrary before the clock
starts, as an uploaded recording would be. Each trial then:

1. raw broker: a bare paho client publishes the same bytes (one signed command of the
   same size, then the audio chunks) to topics N bare paho subscribers take; timed until
   each subscriber has every message;
2. Loa: `Controller.send_urgent([province], audio)`; timed from the call to each agent
   *sending* its `playing` event (noted in the agent's process with time.time() as the
   event is handed to MQTT). When the controller stored each `playing` event is reported
   beside it;
3. a stop command to everyone, and a pause until the controller has stored every event.

Agents of one process share one content cache (allowed for simulated fleets: content is
addressed by hash), so the first agent of a process to complete the audio writes it.

With `--link 4g` the agents and the raw subscribers reach the broker through an emulated
4G link (scripts/link_relay.py, a delaying, lossy TCP relay: 100 ms ± 50 ms one way in
each direction, 1 % packet loss), the controller and the raw publisher directly; the
target is then every agent playing within 3 s, and the result, with the link's
parameters and what it lost, goes to its own section.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
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
from link_relay import LinkParams, counts_between

from controller.audio import PreparedAudio
from controller.distribution import new_play_id
from controller.samples import demo_urgent, tone
from controller.urgent import DEFAULT_URGENT_EXPIRY
from protocol.messages import PlayBody

MESSAGE_S = 30.0
TITLE = "Thông báo khẩn: đo tải"
ENDED = ("interrupted", "finished", "missed", "failed")
TARGET_P99_S = 1.0
TARGET_MAX_S = 2.0
TARGET_4G_MAX_S = 3.0


def _stats(latencies: list[float], prefix: str) -> dict[str, float | None]:
    return {
        f"{prefix}p50_s": rounded(percentile(latencies, 50)),
        f"{prefix}p99_s": rounded(percentile(latencies, 99)),
        f"{prefix}max_s": rounded(max(latencies)) if latencies else None,
    }


def trial(rig: Rig, audio: PreparedAudio, messages: list[tuple[str, bytes]], timeout: float
          ) -> dict[str, Any]:  # fmt: skip
    n = rig.size
    relay = rig.relay
    link0 = relay.stats() if relay else None
    cpu0 = rig.cpu()
    raw = rig.baseline.round(messages, timeout)
    raw_cpu = cpu_used(cpu0, rig.cpu())
    link1 = relay.stats() if relay else None
    rig.settle()
    link2 = relay.stats() if relay else None
    cpu0 = rig.cpu()
    started = time.time()
    [spec] = rig.controller.send_urgent([rig.province.province], audio, title=TITLE)
    playing = rig.sightings.wait(spec.play_id, "playing", n, timeout)
    loa_cpu = cpu_used(cpu0, rig.cpu())
    link3 = relay.stats() if relay else None
    stored = rig.stored.wait(spec.play_id, "playing", len(playing), 15)
    received = rig.sightings.of(spec.play_id, "received")
    delivered = rig.sightings.of(spec.play_id, "delivered")
    rig.controller.distributor.send_stop(spec.play_id, spec.clusters)
    rig.sightings.wait(spec.play_id, ENDED, n, 30)
    rig.settle()

    def since(seen: dict[str, float]) -> list[float]:
        return [at - started for at in seen.values()]

    result: dict[str, Any] = {"played": len(playing), **_stats(since(playing), "")}
    result |= {
        "raw_fanout_s": rounded(max(raw)) if len(raw) == n else None,
        **_stats(raw, "raw_"),
        **_stats(since(received), "received_"),
        **_stats(since(delivered), "delivered_"),
        **_stats(since(stored), "stored_"),
        "cpu": {"loa": loa_cpu, "raw": raw_cpu},
    }
    if link0 is not None and link1 is not None and link2 is not None and link3 is not None:
        # What the link carried (and lost) from the call until every agent played, and
        # during the raw round.
        result["link"] = {"loa": counts_between(link2, link3), "raw": counts_between(link0, link1)}
    return result


def _median_of(trials: list[dict[str, Any]], key: str) -> float | None:
    values = [t[key] for t in trials if t.get(key) is not None]
    return rounded(median(values)) if values else None


def run(agents: int, trials: int, per_process: int | None, verbose: bool, keep: bool,
        link: LinkParams | None = None) -> dict[str, Any]:  # fmt: skip
    """The bench; with link, the agents and raw subscribers behind that emulated link."""
    check_per_process(per_process)
    timeout = 30.0 + 0.03 * agents
    with fleet_rig(
        agents, per_process, shared_cache=True, verbose=verbose, keep=keep, link=link
    ) as rig:
        # A new recording for every trial, as every announcement is: the controller skips
        # audio its agents already hold, and a repeat is not what this bench measures.
        wav = rig.work / "thong-bao-khan.wav"
        spoken = demo_urgent(wav, MESSAGE_S - 1)
        messages_audio = []
        for k in range(trials):
            intro = rig.work / f"intro-{k}.wav"
            tone(intro, 0.5, freq=700 + 50 * k)
            messages_audio.append(rig.controller.library.prepare([wav], intro=intro))
        audio = messages_audio[0]
        say(
            f"{audio.duration_s:.0f} s message ({'espeak-ng speech' if spoken else 'tones'}): "
            f"{audio.size} bytes Opus, {audio.content_ref().chunks} chunks; one per trial"
        )
        per_trial = []
        for k, message in enumerate(messages_audio, 1):
            now = datetime.now(UTC)
            messages = raw_messages(rig, PlayBody(
                play_id=new_play_id("urgent"), bulletin=TITLE, level="emergency",
                start_at=now, latest_start=now + DEFAULT_URGENT_EXPIRY,
                items=[message.content_ref()], urgent=True,
            ), message)  # fmt: skip
            result = trial(rig, message, messages, timeout)
            per_trial.append(result)
            say(
                f"trial {k}/{trials}: {result['played']}/{agents} playing, p50 "
                f"{seconds(result['p50_s'])}, p99 {seconds(result['p99_s'])}, max "
                f"{seconds(result['max_s'])}; raw broker fan-out {seconds(result['raw_fanout_s'])}"
            )
        processes = rig.agents.processes
        link_totals = rig.relay.stats() if rig.relay else None
    summary: dict[str, Any] = {
        "bench": "urgent",
        "agents": agents,
        "trials": trials,
        "processes": processes,
        "message_s": audio.duration_s,
        "speech": spoken,
        "encoded_bytes": int(median([m.size for m in messages_audio])),
        "chunks": audio.content_ref().chunks,
        "played": min(t["played"] for t in per_trial),
        "measured": "agent sends its playing event (time.time() in the agent's process), "
        "from the send_urgent call",
    }
    for key in per_trial[0]:
        if key not in ("played", "cpu", "link"):
            summary[key] = _median_of(per_trial, key)
    summary["worst_max_s"] = rounded(
        max((t["max_s"] for t in per_trial if t["max_s"] is not None), default=float("nan"))
    )
    summary["cpu"] = {
        "loa": median_cpu([t["cpu"]["loa"] for t in per_trial]),
        "raw": median_cpu([t["cpu"]["raw"] for t in per_trial]),
    }
    agents_cpu = summary["cpu"]["loa"]["agents"]
    summary["agent_cpu_ms_each"] = round(
        1000 * (agents_cpu["user_s"] + agents_cpu["system_s"]) / agents, 2
    )
    summary["per_trial"] = per_trial
    if link is not None:
        return _over_link(summary, link, link_totals, per_trial)
    summary["targets"] = [
        target("agents playing", summary["played"], agents, f"all {agents}", at_most=False),
        target("p99 trigger → playing", summary["p99_s"], TARGET_P99_S, "≤ 1 s"),
        target("max trigger → playing", summary["max_s"], TARGET_MAX_S, "≤ 2 s"),
    ]
    summary["pass"] = verdict(summary["targets"])
    return summary


def _whole(value: float) -> float:
    """A median of counts: an int unless it fell between two."""
    return int(value) if value == int(value) else value


def _over_link(summary: dict[str, Any], link: LinkParams, totals: dict[str, Any] | None,
               per_trial: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The 4G run: the link, what it lost, and its own target (every agent within 3 s)."""
    agents = summary["agents"]

    def lost(window: str) -> list[int]:
        return [t["link"][window]["up"]["lost"] + t["link"][window]["down"]["lost"]
                for t in per_trial]  # fmt: skip

    summary |= {
        "link": "4g",
        "link_params": link.as_dict(),
        "link_description": link.describe(),
        # Everything the link carried from the first agent connecting to the last trial.
        "link_totals": totals,
        # Packets lost (both directions) from the call until every agent played, and in
        # the raw round; medians over trials.
        "link_lost_loa": _whole(median(lost("loa"))),
        "link_lost_raw": _whole(median(lost("raw"))),
    }
    summary["targets"] = [
        target("agents playing", summary["played"], agents, f"all {agents}", at_most=False),
        target("max trigger → playing", summary["max_s"], TARGET_4G_MAX_S, "≤ 3 s"),
    ]
    summary["pass"] = verdict(summary["targets"])
    return summary


def _stage_rows(r: dict[str, Any]) -> list[list[str]]:
    return [
        [stage, seconds(r[f"{key}p50_s"]), seconds(r[f"{key}p99_s"]), seconds(r[f"{key}max_s"])]
        for stage, key in (
            ("agent sent `received` (command admitted)", "received_"),
            ("agent sent `delivered` (audio verified)", "delivered_"),
            ("agent sent `playing`", ""),
            ("controller stored `playing`", "stored_"),
        )
    ]


def _trial_rows(r: dict[str, Any]) -> list[list[str]]:
    return [
        [str(i), str(t["played"]), seconds(t["p50_s"]), seconds(t["p99_s"]),
         seconds(t["max_s"]), seconds(t["raw_fanout_s"])]
        for i, t in enumerate(r["per_trial"], 1)
    ]  # fmt: skip


def _fleet_text(r: dict[str, Any]) -> str:
    return f"""\
{r['agents']} simulated agents (real `Agent`, `null` output) in {r['processes']} processes, each
process's agents on one network thread (the simulator's shared `NetworkLoop` and read-ahead
client, their work run right after the reads: scripts/sim_network.py, sim_workers.py);
a {r['message_s']:.0f} s message ({'speech' if r['speech'] else 'tones'}), {r['encoded_bytes']}
bytes of Opus in {r['chunks']} chunks, sent with `Controller.send_urgent` to the whole
province (one command and one copy of the audio on the province's group topics)."""


def _cpu_text(r: dict[str, Any]) -> str:
    return f"""\
CPU seconds (user + system) each part used, from the call until every agent played
(Loa) and for the raw round (raw broker); medians over trials. The agents' share is
{r['agent_cpu_ms_each']:.2f} ms of CPU per agent, all {r['agents']} sharing
{r['machine']['nproc']} cores:

{table(["part", "Loa", "raw broker"], cpu_rows(r["cpu"]["loa"], r["cpu"]["raw"]))}

{cpu_share_note(r["cpu"]["loa"], r["machine"]["nproc"], r["max_s"])}"""


def _headline_rows(r: dict[str, Any]) -> list[list[str]]:
    """The results table: each measure beside the raw broker's, with its target and
    verdict where the run checked one (r["targets"]: loopback and 4G check different ones)."""
    checked = {t["what"]: t for t in r["targets"]}

    def row(what: str, loa: str, raw: str, ratio_: str) -> list[str]:
        t = checked.get(what)
        if t is None:
            return [what, "–", loa, raw, ratio_, ""]
        return [what, t["target"], loa, raw, ratio_, pass_fail(t["pass"])]

    return [
        row("agents playing", str(r["played"]), "–", "–"),
        *(
            row(f"{stat} trigger → playing", seconds(r[f"{stat}_s"]), seconds(r[raw]),
                ratio(r[f"{stat}_s"], r[raw]))
            for stat, raw in (
                ("p50", "raw_p50_s"), ("p99", "raw_p99_s"), ("max", "raw_fanout_s")
            )
        ),
    ]  # fmt: skip


def markdown(result: dict[str, Any], run_line: str, broker_line: str) -> str:
    if result.get("link") == "4g":
        return _markdown_4g(result, run_line, broker_line)
    r = result
    rows = _headline_rows(r)
    return f"""\
## Urgent announcement: trigger → every agent playing

{run_line}
{_fleet_text(r)}
{broker_line}

Measured from the `send_urgent` call to each agent sending its `playing` event
(time.time() in the agent's process, same machine). The raw broker column is bare paho
publishing the same bytes to {r['agents']} bare paho subscribers laid out in the same
processes on the same kind of loop: per subscriber, until it had every message; its max is
the raw fan-out time.
Median of {r['trials']} trials. Overall: {pass_fail(r['pass'])}.

{table(["what", "target", "Loa", "raw broker", "ratio", "result"], rows)}

Where the time goes (medians over trials, from the call):

{table(["stage", "p50", "p99", "max"], _stage_rows(r))}

{_cpu_text(r)}

Per trial:

{table(["trial", "playing", "p50", "p99", "max", "raw fan-out"], _trial_rows(r))}
"""


def _ms(seconds_: float) -> str:
    return f"{1000 * seconds_:.0f} ms"


def _link_rows(r: dict[str, Any]) -> list[list[str]]:
    """Packets and losses in each timed window, medians over trials."""
    rows = []
    for window, what in (("loa", "Loa: from the call until every agent played"),
                         ("raw", "raw broker: the raw round")):  # fmt: skip
        cells = [what]
        for way in ("down", "up"):
            for key in ("packets", "lost"):
                values = [t["link"][window][way][key] for t in r["per_trial"]]
                cells.append(str(_whole(median(values))))
        rows.append(cells)
    return rows


def _markdown_4g(r: dict[str, Any], run_line: str, broker_line: str) -> str:
    link = r["link_params"]
    low, high = link["delay_s"] - link["jitter_s"], link["delay_s"] + link["jitter_s"]
    rows = _headline_rows(r)
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
    trials = [
        [*row, str(t["link"]["loa"]["down"]["lost"] + t["link"]["loa"]["up"]["lost"])]
        for row, t in zip(_trial_rows(r), r["per_trial"], strict=True)
    ]
    return f"""\
## Urgent announcement over an emulated 4G link: trigger → every agent playing

{run_line}
{_fleet_text(r)}
{broker_line}

The link: every agent, and every bare subscriber of the raw broker column, reaches the
broker through an emulated 4G link (scripts/link_relay.py: a TCP relay in its own
process), per connection and in both directions. Each piece of data it reads is
delivered {_ms(low)} to {_ms(high)} later, uniformly:
{_ms(link["delay_s"])} ± {_ms(link["jitter_s"])} **one way**, in each direction,
so a round trip of {_ms(2 * low)} to {_ms(2 * high)};
and never before the piece read before it on the same connection.
What it reads is cut into {link["mss"]}-byte packets, each lost with probability
{link["loss"]:g}; a lost packet, and everything behind it on the connection, arrives
{_ms(link["rto_s"])} (Linux's minimum retransmission timeout) plus another one-way delay
later, as TCP would deliver it. Bandwidth is not limited; the random draws are
seeded (seed {link["seed"]}). The controller and the raw publisher connect to the broker
directly, as from a data centre.

Measured from the `send_urgent` call to each agent sending its `playing` event
(time.time() in the agent's process, same machine): the downlink's delay and losses count,
the uplink's only from `controller stored playing` on. The raw broker column is bare paho
publishing the same bytes to {r['agents']} bare paho subscribers laid out in the same
processes on the same kind of loop, over the same link: per subscriber, until it had
every message; its max is the raw fan-out time.
Median of {r['trials']} trials. Overall: {pass_fail(r['pass'])}.

{table(["what", "target", "Loa", "raw broker", "ratio", "result"], rows)}

Packets on the link in the timed windows (medians over trials; down: towards the agents,
up: towards the broker):

{table(["window", "packets down", "lost down", "packets up", "lost up"], _link_rows(r))}

Over the whole run, {totals.get("connections", 0)} connections from the first agent \
connecting to the end of the last trial: {"; ".join(total_lines) or "–"}.

Where the time goes (medians over trials, from the call):

{table(["stage", "p50", "p99", "max"], _stage_rows(r))}

{_cpu_text(r)}

Per trial (packets lost: both directions, from the call until every agent played):

{table(["trial", "playing", "p50", "p99", "max", "raw fan-out", "packets lost"], trials)}
"""
