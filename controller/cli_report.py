"""`loa-controller report`: proof of play from the stored events (controller.report)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from controller.report import GROUPINGS, build, local_range, period
from protocol.l10n import _

FORMATS = ("table", "csv", "xlsx", "json")


def _store_and_zone(args: argparse.Namespace) -> tuple[str, ZoneInfo]:
    from controller.sources import DEFAULT_TIMEZONE, find_config

    config = find_config(Path(args.config) if args.config else None, required=not args.store)
    tz = config.tz if config else ZoneInfo(DEFAULT_TIMEZONE)
    url = args.store or (config.store_url if config else None)
    if url is None:  # find_config raised already; for mypy
        raise ValueError(_("name the store with --store URL or a config with --config FILE"))
    return url, tz


def cmd_report(args: argparse.Namespace) -> int:
    from controller.report_export import render
    from controller.store import Store

    url, tz = _store_and_zone(args)
    if url.startswith("sqlite:///"):
        file = url.removeprefix("sqlite:///")
        if file and file != ":memory:" and not Path(file).exists():
            raise ValueError(_("no store at {file}: check --store (sqlite:///PATH, relative to "
                               "here; sqlite:////PATH for an absolute path)", file=file))
    if args.format == "xlsx" and not args.out:
        raise ValueError(_("an XLSX report is a file: name it with --out report.xlsx"))
    first, last = period(first=args.start, last=args.end, day=args.day, week=args.week,
                         month=args.month)
    store = Store(url)
    try:
        if first is None or last is None:
            begun, ended = store.history.first_play(), store.history.last_play()
            today = datetime.now(tz).date()
            first = first or (begun.astimezone(tz).date() if begun else today)
            last = last or max(ended.astimezone(tz).date() if ended else today, first)
        start, end = local_range(first, last, tz)
        report = build(store.history.between(start, end), tz, args.by, datetime.now(UTC))
    finally:
        store.close()
    output = render(report, args.format)
    if args.out:
        path = Path(args.out)
        if isinstance(output, bytes):
            path.write_bytes(output)
        else:
            path.write_text(output, encoding="utf-8")
        print(_("wrote {path}: {n} rows by {by}, {first} to {last} ({tz})", path=path,
                n=len(report.rows), by=args.by, first=first, last=last, tz=tz.key),
              file=sys.stderr)
    elif isinstance(output, bytes):  # only xlsx, refused above without --out
        sys.stdout.buffer.write(output)
    else:
        sys.stdout.write(output if output.endswith("\n") else output + "\n")
    return 0


def register(sub: Any, default_config: str) -> None:
    """Add the `report` subcommand to loa-controller's parser."""
    p = sub.add_parser(
        "report", help="proof of play: what aired, where, from the stored events",
        description="Plays scheduled, aired in full, interrupted, missed (with reasons) and "
        "failed, seconds aired and offline time, per cluster, commune, programme or level, "
        "for local days of the fleet's time zone; computed from the events the clusters "
        "reported. Without a range: every stored play.",
    )
    p.add_argument("--from", dest="start", metavar="D", help="first local day, YYYY-MM-DD")
    p.add_argument("--to", dest="end", metavar="D", help="last local day, YYYY-MM-DD")
    p.add_argument("--day", metavar="D", help="one local day")
    p.add_argument("--week", metavar="D", help="the week (Monday to Sunday) of this day")
    p.add_argument("--month", metavar="YYYY-MM", help="one month")
    p.add_argument("--by", choices=GROUPINGS, default="cluster",
                   help="one row per cluster (default), commune, programme or level")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table (default), csv or xlsx (Vietnamese headers), json")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of the terminal")
    p.add_argument("--store", metavar="URL",
                   help="the store to read (sqlite:///PATH, postgresql://...); default: the "
                   "config's store_url")
    p.add_argument("--config", help=f"controller config YAML (default: {default_config})")
    p.set_defaults(func=cmd_report)

