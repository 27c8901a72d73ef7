#!/usr/bin/env python3
"""Hostile payloads at a real agent or a real controller, measured against the targets.

    python scripts/fuzz.py agent  [--count N] [--seed S] [--json]
    python scripts/fuzz.py flood  [--count N] [--flood-s S] [--json]
    python scripts/fuzz.py intake [--count N] [--seed S] [--json]

Every mode starts its own mosquitto on a free port of 127.0.0.1 and the process under
test as `loa-agent run` or `loa-controller run` would run it (see fuzz_agent.py and
fuzz_intake.py for what is sent and measured). It prints, per mode:

- `sent`: payloads published;
- `crashes`: the process under test exited (0 or 1);
- `plays_unsigned`: plays the fuzzer made up that the agent received or played;
- `relay_switches`: times the agent switched its amplifier on before the valid
  emergency was sent (the relay is an LCUS board on a pty);
- `rss_growth_mb`: resident memory once quiet after the run, less before it;
- `valid_after_s`: how long a valid signed emergency then takes to start playing (for
  `flood`: sent half way through the flood), or, for `intake`, a valid event to be
  stored.

Targets (the project's targets table): no crash, no unsigned play, no relay switch,
RSS growth under 20 MB, and the valid emergency (or event) within 1 s.

With --json it prints one JSON object on stdout; without, it rewrites its section of
docs/benchmarks.md (or of --doc FILE; --doc with --json does both). Progress goes to
stderr. Exit status: 0 when the run finished (whether or not the targets were met: the
result says PASS or FAIL), 1 when it could not run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
if str(ROOT) not in sys.path:  # run from a checkout without installing Loa
    sys.path.insert(1, str(ROOT))

TARGET_RSS_GROWTH_MB = 20.0
TARGET_VALID_AFTER_S = 1.0


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    from bench_report import target

    valid = {
        "intake": "valid event stored after the run",
        "agent": "valid emergency playing after the run",
        "flood": "valid emergency playing during the flood",
    }[result["fuzz"]]
    checks = [
        target("crashes", result["crashes"], 0, "none"),
        target("RSS growth", result["rss_growth_mb"], TARGET_RSS_GROWTH_MB, "< 20 MB"),
        target(valid, result["valid_after_s"], TARGET_VALID_AFTER_S, "≤ 1 s"),
    ]
    if result["fuzz"] == "intake":
        checks.append(target("rows of clusters not in the fleet", result["unknown_rows"], 0,
                             "none"))  # fmt: skip
        checks.append(target("events out of range stored", result["out_of_range_stored"], 0,
                             "none"))  # fmt: skip
        checks.append(target("the fuzzer's events stored (it holds no cluster's key)",
                             result["fuzz_events_stored"], 0, "none"))  # fmt: skip
    else:
        checks.append(target("unsigned plays", result["plays_unsigned"], 0, "none"))
        checks.append(target("relay switches", result["relay_switches"], 0, "none"))
    return checks


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"loa-fuzz-{args.mode}-"))
    try:
        if args.mode == "intake":
            import fuzz_intake

            return fuzz_intake.run_intake(work, args.count, args.seed, args.verbose,
                                          args.warm_up)  # fmt: skip
        import fuzz_agent

        if args.mode == "flood":
            return fuzz_agent.run_flood(work, args.count, args.flood_s, args.verbose)
        return fuzz_agent.run_agent(work, args.count, args.seed, args.verbose)
    finally:
        if args.keep:
            print(f"fuzz files kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def markdown(result: dict[str, Any]) -> str:
    from bench_report import pass_fail, run_line, table

    r = result
    mode = r["fuzz"]

    def value(v: Any, unit: str = "") -> str:
        return "–" if v is None else f"{v}{unit}"

    checks = [[t["what"], t["target"], value(t["value"]), pass_fail(t["pass"])]
              for t in r["targets"]]  # fmt: skip
    if mode == "flood":
        what = (
            f"{r['sent']} tiny forged chunks (8 bytes of data each, each a content nobody "
            f"announced) on the commune's content topic, paced over {r['flood_s']:g} s, at "
            "one real agent process (`loa-agent run`, `null` output, its amplifier relay an "
            "LCUS board on a pty); half way through, a valid signed emergency (command, "
            "then its audio on the same topic), timed from its publication to its "
            f"`playing` event. The agent used {r['agent_cpu_s']} s of CPU on the flood and "
            f"was quiet again {r['quiet_after_s']} s after the last chunk was sent."
        )
    elif mode == "agent":
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(r["by_kind"].items()))
        what = (
            f"{r['sent']} hostile payloads (seed {r['seed']}) on every topic one real agent "
            "process reads (`loa-agent run`, `null` output, its amplifier relay an LCUS "
            f"board on a pty), published in {r['send_s']} s: {kinds}. Then, once the agent "
            f"was quiet ({r['quiet_after_s']} s after the last), a valid signed emergency, "
            "timed from its publication to its `playing` event."
        )
    else:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(r["by_kind"].items()))
        what = (
            f"{r['sent']} hostile payloads (seed {r['seed']}) on every topic one real "
            "controller process reads (`loa-controller run`, a fleet of ten clusters, a "
            f"SQLite store that had stored {r['warm_up_events']} valid events first: the "
            f"baseline), published in {r['send_s']} s: {kinds}. Then, once the "
            f"controller was quiet ({r['quiet_after_s']} s after the last), a valid event "
            "of a known cluster, timed from its publication until it is in the store. "
            f"Events stored: {r['events_stored']}, of them {r['fuzz_events_stored']} of the "
            "fuzzer's (the rest: the warm-up and the valid event, signed by their clusters' "
            f"keys); chunks resent for requests: {r['resent_bytes']} bytes, "
            f"{r['resend_amplification']} × the bytes of the requests (a request the "
            "cluster's key did not sign is refused)."
        )
    figures = [
        ["sent", value(r["sent"])], ["crashes", value(r["crashes"])],
        ["plays_unsigned", value(r["plays_unsigned"])],
        ["relay_switches", value(r["relay_switches"])],
        ["rss_growth_mb", f"{value(r['rss_growth_mb'])} ({value(r['rss_before_mb'])} → "
                          f"{value(r['rss_after_mb'])} MB)"],
        ["valid_after_s", value(r["valid_after_s"])],
        ["tracebacks in its log", value(r["tracebacks"])],
        ["its log", f"{r['log_kb']} KB"],
    ]  # fmt: skip
    title = {
        "agent": "Fuzzing one agent process",
        "flood": "A flood of forged chunks at one agent process, and an emergency through it",
        "intake": "Fuzzing one controller process: the intake and chunk requests",
    }[mode]
    broker = ", ".join(f"`{k} {v}`" for k, v in r["broker"].items())
    return f"""\
## {title}

{run_line(r)}
{what}
Broker: private mosquitto on 127.0.0.1, tuned with {broker}.

{table(["figure", "value"], figures)}

{table(["target", "limit", "measured", "result"], checks)}

Overall: {pass_fail(r['pass'])}.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fuzz.py", description="Hostile payloads at a real agent or controller."
    )
    sub = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    agent = sub.add_parser("agent", help="hostile payloads at one agent process")
    flood = sub.add_parser("flood", help="forged chunks at one agent, an emergency through")
    intake = sub.add_parser("intake", help="hostile payloads at one controller process")
    for p, count in ((agent, 100_000), (flood, 30_000), (intake, 100_000)):
        p.add_argument("--count", type=int, default=count, metavar="N",
                       help=f"payloads to send (default {count})")
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.add_argument("--doc", type=Path, help=f"the results file to update (default {DOC})")
        p.add_argument("--keep", action="store_true", help="keep the run's temporary files")
        p.add_argument("-v", "--verbose", action="store_true",
                       help="debug logging in the process under test")
    for p in (agent, intake):
        p.add_argument("--seed", type=int, default=14, help="seed of the payloads (default 14)")
    intake.add_argument("--warm-up", type=int, default=20_000, metavar="N",
                        help="valid events stored before the baseline is taken (default "
                        "20000: the store's caches fill, the growth counted is the fuzz's)")
    flood.add_argument("--flood-s", type=float, default=4.0, metavar="S",
                       help="seconds over which the chunks are sent (default 4)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.count < 1:
        print("fuzz.py: --count must be at least 1", file=sys.stderr)
        return 2
    import bench_report
    from fuzz_rig import FUZZ_TUNING

    started = time.monotonic()
    machine = bench_report.machine()
    source = bench_report.source_version(ROOT)
    try:
        result = run(args)
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"fuzz.py {args.mode}: could not run: {exc}", file=sys.stderr)
        return 1
    result["targets"] = targets(result)
    result["pass"] = bench_report.verdict(result["targets"])
    result["date"] = bench_report.now_utc()
    result["command"] = bench_report.command_line(argv, "fuzz.py")
    result["machine"] = machine
    result["source"] = source
    result["broker"] = dict(FUZZ_TUNING)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
    if not args.json or args.doc:
        doc = args.doc or DOC
        bench_report.write_section(doc, f"fuzz-{args.mode}", markdown(result))
        print(f"fuzz.py {args.mode}: {'PASS' if result['pass'] else 'FAIL'}; written to {doc}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
