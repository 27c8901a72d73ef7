"""Figures and where they go: statistics, the machine, targets, and docs/benchmarks.md.

Each bench owns one section of docs/benchmarks.md, between `<!-- bench:<section>:begin -->`
and `<!-- bench:<section>:end -->` (the section is the mode's name, or `urgent-4g` and
`delivery-4g` for `urgent --link 4g` and `delivery --link 4g`); a run rewrites its own
section and leaves the others as they are.
scripts/fuzz.py writes its sections (`fuzz-agent`, `fuzz-flood`, `fuzz-intake`) the same
way. Nothing in that file is written by hand.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The sections of docs/benchmarks.md, in the file's order, and the command writing each.
SECTIONS = {
    "urgent": "urgent",
    "urgent-4g": "urgent --link 4g",
    "delivery": "delivery",
    "delivery-4g": "delivery --link 4g",
    "agent": "agent",
    "intake": "intake",
    "intake-postgresql": "intake --store URL",
    "live": "live",
    "live-4g": "live --link 4g",
    "spread": "spread",
    "fuzz-agent": "agent",
    "fuzz-flood": "flood",
    "fuzz-intake": "intake",
}
# The script that writes a section, where it is not bench.py.
SCRIPTS = {"fuzz-agent": "fuzz.py", "fuzz-flood": "fuzz.py", "fuzz-intake": "fuzz.py"}

HEADER = """\
# Benchmarks

Every figure below is written by `scripts/bench.py` (or, for the fuzz sections at the
end, `scripts/fuzz.py`) from its own run (`make bench`, or one mode at a time); nothing
here is typed by hand. The targets come from the project's
targets table. Each bench starts a private mosquitto on a free loopback port and, in the
same run, measures the raw broker doing the same work with bare paho clients, so that
results read as a ratio to what the broker itself can do on the same (shared, noisy)
machine, not only as seconds. Headline figures are medians over trials. On the 2-core
virtual machine these runs are made on, the same code gives noticeably different results
from one run to the next: the machine is shared, and memory the guest has not touched
for a while costs the kernel several times more to write. Compare runs made close
together, and read the ratios to the raw broker.

The sections: `urgent`, an urgent announcement to a whole province of simulated agents,
on loopback; `urgent --link 4g`, the same with every agent (and every bare subscriber)
behind an emulated 4G link (scripts/link_relay.py: a relay delaying each direction of
each connection by 100 ms ± 50 ms one way, a round trip of 100 to 300 ms, and losing 1 %
of its packets as TCP sees it); `delivery`, a bulletin to every agent, then a repeat, on
loopback, where its time is a figure, not a target; `delivery --link 4g`, the same
behind the emulated 4G link with a bandwidth per connection (2 Mbit/s down, 0.5 Mbit/s
up), where delivery is judged against the raw broker over the same links; `agent`, one
real agent process, idle and playing; `live` and `live --link 4g`, a live session
streamed to every agent for a minute; `intake`, status events one controller process
stores, on SQLite, and `intake --store URL` (section `intake-postgresql`), the same on a
PostgreSQL server (not run by `make bench`: it needs the server); `spread`, one play
scheduled a few seconds ahead and how far apart every agent starts it, beside plain
timers in the same processes; `fuzz.py agent`, `fuzz.py flood` and `fuzz.py
intake`, hostile payloads at a real agent or controller process (not run by `make
bench`).

Run one mode with `--json` to get the figures as one JSON object instead.
"""


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def rounded(value: float, digits: int = 3) -> float | None:
    """JSON-friendly: nan and inf become null."""
    return round(value, digits) if math.isfinite(value) else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    from bench_broker import mosquitto_version

    return {
        "nproc": os.cpu_count(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mosquitto": mosquitto_version(),
    }


def source_version(root: Path) -> str:
    """The commit measured, marked when the product's code differs from it."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, timeout=10, check=False
            ).stdout.decode().strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "protocol", "controller", "device_agent")
    return f"{commit} (with uncommitted changes)" if changed else commit


def target(what: str, value: float | None, limit: float, text: str, *, at_most: bool = True
           ) -> dict[str, Any]:  # fmt: skip
    """One target checked: value within limit (at_most, else at least). None fails."""
    ok = value is not None and (value <= limit if at_most else value >= limit)
    return {"what": what, "target": text, "value": value, "limit": limit, "pass": ok}


def verdict(targets: list[dict[str, Any]]) -> bool:
    return all(t["pass"] for t in targets)


def pass_fail(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f} s"


def ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base <= 0:
        return "–"
    return f"{value / base:.1f} ×"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(argv: Sequence[str], script: str = "bench.py") -> str:
    """The command that writes this result's section: the script with the arguments of
    this mode's run (argv), less --json and --doc, which only say where the figures went."""
    args: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--doc":
            skip = True
        elif arg != "--json" and not arg.startswith("--doc="):
            args.append(arg)
    return f"python scripts/{script} " + " ".join(args)


def run_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    return (
        f"Run {result['date']} with `{result['command']}` at commit {result['source']} on "
        f"{m['nproc']} × {m['cpu']} (nproc {m['nproc']}, load average {m['load']} at the "
        f"start), Linux {m['kernel']}, Python {m['python']}, mosquitto {m['mosquitto']}; "
        f"{result['elapsed_s']:.0f} s in all."
    )


def broker_line(result: dict[str, Any]) -> str:
    tuning = ", ".join(f"`{k} {v}`" for k, v in result["broker"].items())
    return f"Broker: private mosquitto on 127.0.0.1, tuned with {tuning}."


def _markers(section: str) -> tuple[str, str]:
    return f"<!-- bench:{section}:begin -->", f"<!-- bench:{section}:end -->"


def _placeholder(section: str) -> str:
    begin, end = _markers(section)
    command = SECTIONS[section]
    script = SCRIPTS.get(section, "bench.py")
    title = command if script == "bench.py" else f"{script} {command}"
    return (
        f"{begin}\n## `{title}`\n\nNot run yet: `python scripts/{script} {command}`.\n"
        f"{end}\n"
    )


def write_section(doc: Path, section: str, body: str) -> None:
    """Replace this section of doc (made with every section if missing). A section the
    file does not have yet goes after the one before it in SECTIONS, or at the end."""
    if section not in SECTIONS:
        raise ValueError(f"unknown bench section {section!r}")
    text = doc.read_text(encoding="utf-8") if doc.exists() else ""
    if not text.strip():
        text = HEADER + "".join("\n" + _placeholder(s) for s in SECTIONS)
    begin, end = _markers(section)
    new = f"{begin}\n{body.strip()}\n{end}"
    start = text.find(begin)
    stop = text.find(end, start)
    if start >= 0 and stop >= 0:
        text = text[:start] + new + text[stop + len(end):]
    else:
        order = list(SECTIONS)
        earlier = [_markers(s)[1] for s in reversed(order[: order.index(section)])]
        previous = next((m for m in earlier if m in text), None)
        if previous is not None:
            cut = text.find(previous) + len(previous)
            text = text[:cut] + "\n\n" + new + text[cut:]
        else:
            text = text.rstrip("\n") + "\n\n" + new + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")
