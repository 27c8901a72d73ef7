"""`loa-controller`: the controller's command line. The only place that exits the process."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from protocol.yamlload import ConfigError

DEFAULT_CONFIG = Path("config/controller.yaml")


def _setup_logging(verbose: bool, command: str) -> None:
    # The demo runs 73 agents in one process: it tells its own story on stderr and
    # shows only warnings from the parts, unless asked for more.
    quiet = command == "demo"
    logging.basicConfig(
        level=logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _width(text: str) -> int:
    return sum(0 if unicodedata.combining(ch) else 1 for ch in unicodedata.normalize("NFC", text))


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [_width(h) for h in headers]
    for row in rows:
        widths = [max(w, _width(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(_pad(h, w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(
        "  ".join(_pad(c, w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
    return "\n".join(lines)


# --- subcommands -------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    from protocol.signing import generate_keypair

    out = Path(args.out)
    private, public = out / "controller.key", out / "controller.pub"
    try:
        generate_keypair(private, public, overwrite=args.force)
    except FileExistsError as exc:
        print(f"loa-controller keygen: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {private} (private: keep it on the controller only, mode 0600)")
    print(f"wrote {public} (public: copy it to every agent as controller_public_key)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from controller.config import load_controller_config
    from controller.main import run

    config = load_controller_config(Path(args.config))
    run(config)
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from controller.config import load_controller_config
    from controller.store import Store

    config = load_controller_config(Path(args.config))
    tz = ZoneInfo(config.timezone)
    store = Store(config.store_url)
    rows = store.fleet_rows()
    store.close()
    if args.json:
        print(json.dumps([
            {
                "cluster": r.id, "name": r.name, "commune": r.commune_name, "state": r.state,
                "last_seen": r.last_seen.isoformat() if r.last_seen else None,
                "playing": r.playing, "last_result": r.last_result,
                "last_result_bulletin": r.last_result_bulletin,
                "last_result_reason": r.last_result_reason,
                "last_rejection": r.last_rejection,
            }
            for r in rows
        ], ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print(f"no clusters in {config.store_url}; has `loa-controller run` started yet?")
        return 0

    def when(value: datetime | None) -> str:
        return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if value else "never"

    table = []
    for r in rows:
        result = "-"
        if r.last_result:
            result = f"{r.last_result}: {r.last_result_bulletin or '?'}"
            if r.last_result_reason and r.last_result != "finished":
                result += f" ({r.last_result_reason})"
        rejected = f"{when(r.last_rejection_at)} {r.last_rejection}" if r.last_rejection else "-"
        table.append([
            r.id, r.commune_name, r.state, when(r.last_seen), r.playing or "-", result, rejected
        ])
    print(format_table(
        ["cluster", "commune", "online", "last seen", "playing", "last result",
         "last rejected command"],
        table,
    ))
    online = sum(1 for r in rows if r.state == "online")
    print(f"\n{len(rows)} clusters, {online} online, {len(rows) - online} offline or never seen "
          f"(times in {config.timezone})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from controller.check import check

    problems = check(Path(args.config) if args.config else None, [Path(p) for p in args.paths])
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        print(problem)
    if errors:
        print(f"{len(errors)} error(s); nothing was changed. Fix them and run check again.",
              file=sys.stderr)
        return 1
    print("ok: config, fleet and playlists are valid", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from controller.demo import run_demo

    result = run_demo(broker_url=args.broker, as_json=args.json, keep=args.keep)
    return 0 if result.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loa-controller",
        description="Loa controller: schedules bulletins and sends them to speaker clusters.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the controller daemon")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="controller config YAML")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("keygen", help="make the controller's Ed25519 signing key pair")
    p.add_argument("--out", default="keys", help="directory for controller.key/.pub (keys/)")
    p.add_argument("--force", action="store_true", help="overwrite existing keys")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("fleet", help="show every cluster: online, last seen, playing, result")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="controller config YAML")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_fleet)

    p = sub.add_parser("check", help="validate config, fleet and playlists; report every error")
    p.add_argument("paths", nargs="*", help="playlist files or directories (default: config's)")
    p.add_argument("--config", help="controller config YAML (default: config/controller.yaml)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="the whole path in miniature: 73 simulated clusters")
    p.add_argument("--broker", help="use this broker (mqtt://host:port) instead of an embedded one")
    p.add_argument("--json", action="store_true", help="print one JSON object with the results")
    p.add_argument("--keep", action="store_true", help="keep the demo's working directory")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, args.command)
    try:
        code = int(args.func(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print(f"{len(exc.problems)} error(s); nothing was started.", file=sys.stderr)
        code = 1
    except (ValueError, OSError) as exc:
        print(f"loa-controller {args.command}: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
