#!/usr/bin/env python3
"""Loa's benchmarks, measured against the project's targets; they write docs/benchmarks.md.

    python scripts/bench.py urgent   [--agents N] [--trials K] [--link loopback|4g] [--json]
    python scripts/bench.py delivery [--agents N] [--minutes M] [--trials K]
                                     [--link loopback|4g] [--json]
    python scripts/bench.py agent    [--minutes M] [--idle-s S] [--play-s S] [--json]
    python scripts/bench.py intake   [--clusters N] [--events E] [--store URL] [--json]
    python scripts/bench.py live     [--agents N] [--seconds S] [--link loopback|4g] [--json]
    python scripts/bench.py spread   [--agents N] [--trials K] [--lead-s S] [--json]
    python scripts/bench.py          # every section at its defaults (make bench)

Every mode starts its own mosquitto on a free port of 127.0.0.1 (mosquitto and ffmpeg
must be on PATH) and, for the fleet benches, N simulated agents in worker processes
(by default one per core, at most 500 agents each) plus, in the same run, N bare paho
subscribers laid out the same way: the raw broker doing the same work, the yardstick
for Loa's figures.
`--link 4g` puts those agents and subscribers behind an emulated 4G link
(scripts/link_relay.py, a delaying, lossy TCP relay: 100 ms ± 50 ms one way in each
direction, 1 % packet loss; the controller stays on the broker's side) and writes the
mode's own 4G section (`urgent-4g`, `delivery-4g`). `delivery --link 4g` also limits
each connection's bandwidth (by default 2 Mbit/s down, 0.5 Mbit/s up:
--link-down-kbit, --link-up-kbit); `urgent --link 4g` does not unless asked. `intake`
runs one real controller process and plays a fleet of signed event messages at it
(scripts/bench_intake.py); with --store URL, on a PostgreSQL server, in its own section
(`intake-postgresql`). `spread` sends one play a few seconds ahead to every agent (each
on a worker thread of its own, as on a pole) and measures how far apart they start,
beside plain timers in the same processes (scripts/bench_spread.py). `make bench`
writes every section: each mode at its defaults, and urgent and delivery over 4G too.

With --json a mode prints one JSON object on stdout; without, it rewrites its own
section of docs/benchmarks.md (or of --doc FILE; --doc with --json does both).
Progress goes to stderr. Exit status: 0 when the bench ran (whether or not the targets
were met: the result says PASS or FAIL), 1 when it could not run, 3 when it ran out
of --time-limit.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from link_relay import LinkParams

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
if str(ROOT) not in sys.path:  # run from a checkout without installing Loa
    sys.path.insert(1, str(ROOT))


class TimeLimitError(Exception):
    """The run took longer than --time-limit."""


def _on_alarm(_signum: int, _frame: FrameType | None) -> None:
    raise TimeLimitError


def _on_term(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(143)


def link_params(args: argparse.Namespace) -> LinkParams | None:
    """The emulated link asked for (a link_relay.LinkParams), or None on loopback."""
    if getattr(args, "link", "loopback") != "4g":
        return None
    import link_relay

    return link_relay.LinkParams(
        delay_s=args.link_delay_ms / 1000, jitter_s=args.link_jitter_ms / 1000,
        loss=args.link_loss_pct / 100, seed=args.link_seed,
        down_kbit=args.link_down_kbit, up_kbit=args.link_up_kbit,
    )  # fmt: skip


def section(args: argparse.Namespace) -> str:
    """The part of docs/benchmarks.md this run writes."""
    if args.mode == "intake":
        return "intake-postgresql" if args.store else "intake"
    return f"{args.mode}-4g" if link_params(args) is not None else str(args.mode)


def run_urgent(args: argparse.Namespace) -> dict[str, Any]:
    import bench_urgent

    return bench_urgent.run(
        args.agents, args.trials, args.per_process, args.verbose, args.keep, link_params(args)
    )


def run_delivery(args: argparse.Namespace) -> dict[str, Any]:
    import bench_delivery

    return bench_delivery.run(
        args.agents, args.minutes, args.trials, args.per_process, args.verbose, args.keep,
        link_params(args),
    )


def run_live(args: argparse.Namespace) -> dict[str, Any]:
    import bench_live

    return bench_live.run(
        args.agents, args.seconds, args.per_process, args.verbose, args.keep, link_params(args)
    )


def run_agent(args: argparse.Namespace) -> dict[str, Any]:
    import bench_agent

    return bench_agent.run(args.minutes, args.idle_s, args.play_s, args.outputs, args.keep)


def run_intake(args: argparse.Namespace) -> dict[str, Any]:
    import bench_intake

    return bench_intake.run(
        args.clusters, args.events, tuple(args.per_message), args.trials, args.store,
        args.verbose, args.keep,
    )


def run_spread(args: argparse.Namespace) -> dict[str, Any]:
    import bench_spread

    return bench_spread.run(
        args.agents, args.trials, args.per_process, args.lead_s, args.verbose, args.keep,
        args.alone,
    )


def markdown(result: dict[str, Any]) -> str:
    import bench_agent
    import bench_delivery
    import bench_intake
    import bench_live
    import bench_report
    import bench_spread
    import bench_urgent

    writers: dict[str, Callable[[dict[str, Any], str, str], str]] = {
        "urgent": bench_urgent.markdown,
        "delivery": bench_delivery.markdown,
        "agent": bench_agent.markdown,
        "intake": bench_intake.markdown,
        "live": bench_live.markdown,
        "spread": bench_spread.markdown,
    }
    return writers[result["bench"]](
        result, bench_report.run_line(result), bench_report.broker_line(result)
    )


RUNNERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "urgent": run_urgent,
    "delivery": run_delivery,
    "agent": run_agent,
    "intake": run_intake,
    "live": run_live,
    "spread": run_spread,
}

#: What `make bench` runs: each mode at its defaults, and urgent, delivery and live over
#: the emulated 4G link.
EVERY_SECTION = (
    ["urgent"], ["urgent", "--link", "4g"], ["delivery"], ["delivery", "--link", "4g"],
    ["agent"], ["intake"], ["live"], ["live", "--link", "4g"], ["spread"],
)  # fmt: skip


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--doc", type=Path, help=f"the results file to update (default {DOC})")
    p.add_argument("--time-limit", type=int, default=900, metavar="S",
                   help="give up (and clean up) after S seconds (default 900)")
    p.add_argument("--keep", action="store_true", help="keep the bench's temporary files")
    p.add_argument("-v", "--verbose", action="store_true", help="log the controller and agents")


def _fleet(p: argparse.ArgumentParser, trials: int) -> None:
    p.add_argument("--agents", type=int, default=1000, metavar="N",
                   help="simulated agents (default 1000)")
    p.add_argument("--trials", type=int, default=trials, metavar="K",
                   help=f"repetitions; medians are reported (default {trials})")
    p.add_argument("--per-process", type=int, default=None, metavar="P",
                   help="agents per worker process, at most 500 (default: as many "
                   "processes as cores)")


def _link(p: argparse.ArgumentParser, down_kbit: float, up_kbit: float) -> None:
    """The emulated link's options; the bandwidths' defaults are the mode's."""
    p.add_argument("--link", choices=("loopback", "4g"), default="loopback",
                   help="the agents' link to the broker: loopback (default), or an "
                   "emulated 4G link, written to its own section")
    p.add_argument("--link-delay-ms", type=float, default=100.0, metavar="MS",
                   help="4g: one-way delay in each direction (default 100)")
    p.add_argument("--link-jitter-ms", type=float, default=50.0, metavar="MS",
                   help="4g: the one-way delay is uniform in delay ± jitter (default 50)")
    p.add_argument("--link-loss-pct", type=float, default=1.0, metavar="PCT",
                   help="4g: packets lost, in percent (default 1)")
    p.add_argument("--link-seed", type=int, default=1, metavar="N",
                   help="4g: seed of the link's random draws (default 1)")
    p.add_argument("--link-down-kbit", type=float, default=down_kbit, metavar="KBIT",
                   help="4g: each connection's bandwidth towards the agent, kbit/s; 0: "
                   f"not limited (default {down_kbit:g})")
    p.add_argument("--link-up-kbit", type=float, default=up_kbit, metavar="KBIT",
                   help="4g: each connection's bandwidth towards the broker, kbit/s; 0: "
                   f"not limited (default {up_kbit:g})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.py", description="Loa's benchmarks against its targets."
    )
    sub = parser.add_subparsers(dest="mode", metavar="MODE")
    urgent = sub.add_parser("urgent", help="urgent announcement: trigger → every agent playing")
    _fleet(urgent, trials=3)
    _link(urgent, down_kbit=0.0, up_kbit=0.0)
    _common(urgent)
    live = sub.add_parser("live", help="a live session to every agent for a fixed time")
    _fleet(live, trials=1)
    live.add_argument("--seconds", type=float, default=60.0, metavar="S",
                      help="how long the session lasts (default 60)")
    _link(live, down_kbit=0.0, up_kbit=0.0)
    _common(live)
    spread = sub.add_parser(
        "spread", help="one scheduled play: how far apart the agents start it"
    )
    _fleet(spread, trials=3)
    spread.add_argument("--lead-s", type=float, default=None, metavar="S",
                        help="send the play S seconds before its start (default 3 + "
                        "0.004 per agent)")
    spread.add_argument("--alone", type=int, default=40, metavar="K",
                        help="then start K agents one at a time, each alone (default 40; "
                        "0: not)")
    _common(spread)
    delivery = sub.add_parser("delivery", help="a bulletin to every agent, then a repeat")
    _fleet(delivery, trials=3)
    delivery.add_argument("--minutes", type=float, default=5.0, metavar="M",
                          help="bulletin length in minutes (default 5)")
    _link(delivery, down_kbit=2000.0, up_kbit=500.0)
    _common(delivery)
    agent = sub.add_parser("agent", help="one real agent process: idle and playing footprint")
    agent.add_argument("--minutes", type=float, default=60.0, metavar="M",
                       help="length of the bulletin played (default 60)")
    agent.add_argument("--idle-s", type=float, default=30.0, metavar="S",
                       help="idle measurement window (default 30)")
    agent.add_argument("--play-s", type=float, default=30.0, metavar="S",
                       help="measurement window once playing (default 30)")
    agent.add_argument("--outputs", default="null,opusdec,ffmpeg", metavar="LIST",
                       help="outputs to measure: null, opusdec, ffmpeg (device null) "
                       "(default all three)")
    _common(agent)

    intake = sub.add_parser(
        "intake", help="status events one controller process stores and acknowledges"
    )
    intake.add_argument("--clusters", type=int, default=1000, metavar="N",
                        help="clusters in the fleet, each with its key (default 1000)")
    intake.add_argument("--events", type=int, default=30000, metavar="E",
                        help="events a trial (default 30000)")
    intake.add_argument("--per-message", type=int, nargs="+", default=[1, 3], metavar="K",
                        help="events per message, a run of trials for each; the first is "
                        "judged against the target (default: 1 3)")
    intake.add_argument("--trials", type=int, default=3, metavar="K",
                        help="repetitions; medians are reported (default 3)")
    intake.add_argument("--store", metavar="URL",
                        help="a PostgreSQL server (postgresql+psycopg://user:pw@host/db): "
                        "the bench makes a database of its own there, and drops it after; "
                        "written to its own section (default: a SQLite file)")
    _common(intake)
    return parser


def run_mode(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run one mode (argv: its arguments, for the command written with its figures)."""
    import bench_report
    from bench_broker import PrivateMosquitto

    started = time.monotonic()
    machine = bench_report.machine()  # the load average before the bench adds to it
    source = bench_report.source_version(ROOT)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    signal.alarm(max(1, args.time_limit))
    try:
        result = RUNNERS[args.mode](args)
    except TimeLimitError:
        print(f"bench.py {args.mode}: gave up after --time-limit {args.time_limit} s",
              file=sys.stderr)
        return 3
    finally:
        signal.alarm(0)
    result["date"] = bench_report.now_utc()
    result["command"] = bench_report.command_line(argv)
    result["machine"] = machine
    result["source"] = source
    result["broker"] = PrivateMosquitto.tuning()
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
    if not args.json or args.doc:
        doc = args.doc or DOC
        bench_report.write_section(doc, section(args), markdown(result))
        print(f"bench.py {args.mode}: {'PASS' if result['pass'] else 'FAIL'}; "
              f"written to {doc}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.mode is None:  # make bench: every section of docs/benchmarks.md
        status = 0
        for section_argv in EVERY_SECTION:
            status = max(status, main(section_argv))
        return status
    if getattr(args, "agents", 1) < 1 or getattr(args, "trials", 1) < 1:
        print("bench.py: --agents and --trials must be at least 1", file=sys.stderr)
        return 2
    try:
        return run_mode(args, argv)
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"bench.py {args.mode}: could not run: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
