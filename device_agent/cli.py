"""`loa-agent`: the agent's command line. The only place that exits the process.

    loa-agent run --config /etc/loa/agent.yaml
    loa-agent version

Exit codes: 0 after a clean stop, 2 when the agent cannot start (bad configuration,
missing key file, data directory in use), 130 on Ctrl-C before it started.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from protocol.yamlload import ConfigError

DEFAULT_CONFIG = Path("/etc/loa/agent.yaml")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from device_agent.config import load_agent_config
    from device_agent.main import run

    run(load_agent_config(Path(args.config)))
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    from device_agent.main import agent_version

    print(f"loa-agent {agent_version()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loa-agent", description="The agent of one loudspeaker cluster."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="receive, cache and play what the controller sends")
    run.add_argument(
        "--config", default=str(DEFAULT_CONFIG), metavar="FILE",
        help=f"the agent configuration (default {DEFAULT_CONFIG})",
    )
    run.set_defaults(func=cmd_run)
    version = sub.add_parser("version", help="print the agent version")
    version.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        code = int(args.func(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print(f"{len(exc.problems)} error(s) in the configuration; not started.", file=sys.stderr)
        code = 2
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"loa-agent {args.command}: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
