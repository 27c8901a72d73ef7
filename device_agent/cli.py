"""`loa-agent`: the agent's command line. The only place that exits the process.

    loa-agent run --config /etc/loa/agent.yaml
    loa-agent check --config /etc/loa/agent.yaml [--click]
    loa-agent test-tone --config /etc/loa/agent.yaml [--seconds 5]
    loa-agent version

Output and errors follow the locale (LANG=vi_VN.UTF-8, or LC_ALL, LC_MESSAGES,
LANGUAGE) or --lang vi|en: Vietnamese or English (protocol.l10n); logs stay English.

Exit codes: run: 0 after a clean stop, 2 when the agent cannot start (bad
configuration, missing key file, data directory in use); check: 1 when any check
FAILs; test-tone: 1 when the tone did not play; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from protocol import l10n, logs
from protocol.config_errors import ConfigError
from protocol.l10n import _

DEFAULT_CONFIG = Path("/etc/loa/agent.yaml")


def _setup_logging(args: argparse.Namespace) -> None:
    # check and test-tone print their own report; the parts' logs only add noise there.
    logs.setup(args, "error" if args.command in ("check", "test-tone") else "info")


def cmd_run(args: argparse.Namespace) -> int:
    from device_agent.config import load_agent_config
    from device_agent.main import run

    run(load_agent_config(Path(args.config)))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from device_agent.check import CheckResult, run_checks, summary

    def show(result: CheckResult) -> None:
        for line in result.lines():
            print(line, flush=True)

    results = run_checks(
        Path(args.config), click=args.click, timeout_s=args.timeout, report=show
    )
    print(summary(results))
    return 1 if any(r.status == "FAIL" for r in results) else 0


def cmd_test_tone(args: argparse.Namespace) -> int:
    import tempfile

    from device_agent.amplifier import amplifier_from_config
    from device_agent.config import load_agent_config
    from device_agent.main import build_output
    from device_agent.tone import play_tone
    from protocol.clock import SystemClock

    config = load_agent_config(Path(args.config))
    output = build_output(config)
    relay = config.relay
    amplifier = None if relay.driver == "none" else amplifier_from_config(relay, SystemClock())
    if amplifier is not None:
        print(_("switching the amplifier on through the {driver} relay on {url} (warm-up "
                "{s:g} s)", driver=relay.driver, url=relay.url, s=amplifier.warm_up_s),
              flush=True)
    print(_("playing a {s:g} s test tone (1 kHz) through {output}", s=args.seconds,
            output=output.name), flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="loa-tone-") as folder:
            result = play_tone(
                output, Path(folder), args.seconds, amplifier=amplifier,
                volume=config.output.volume,
            )
    finally:
        if amplifier is not None:
            amplifier.close()
    if result.relay_fault:
        print(_("the amplifier relay failed: {why}", why=result.relay_fault), file=sys.stderr)
    if not result.ok:
        print(_("the test tone did not play: {why}", why=result.outcome.error or _("stopped")),
              file=sys.stderr)
        return 1
    where = f": {result.wav}" if result.wav else ""
    print(_("played {s:.1f} s of test tone through {output}{where}",
            s=result.outcome.played_s, output=output.name, where=where))
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
    logs.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="receive, cache and play what the controller sends")
    run.add_argument(
        "--config", default=str(DEFAULT_CONFIG), metavar="FILE",
        help=f"the agent configuration (default {DEFAULT_CONFIG})",
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check", help="check config, key, disk, broker, clock, relay and output: PASS/FAIL"
    )
    check.add_argument(
        "--config", default=str(DEFAULT_CONFIG), metavar="FILE",
        help=f"the agent configuration (default {DEFAULT_CONFIG})",
    )
    check.add_argument(
        "--click", action="store_true", help="switch the amplifier relay on, then off"
    )
    check.add_argument(
        "--timeout", type=float, default=5.0, metavar="S",
        help="seconds to wait for DNS, the broker and its login (default 5)",
    )
    check.set_defaults(func=cmd_check)

    tone = sub.add_parser("test-tone", help="play a test tone through the configured output")
    tone.add_argument(
        "--config", default=str(DEFAULT_CONFIG), metavar="FILE",
        help=f"the agent configuration (default {DEFAULT_CONFIG})",
    )
    tone.add_argument(
        "--seconds", type=float, default=3.0, metavar="S", help="tone length (default 3)"
    )
    tone.set_defaults(func=cmd_test_tone)
    version = sub.add_parser("version", help="print the agent version")
    version.set_defaults(func=cmd_version)
    l10n.add_lang_option(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    l10n.use(l10n.choose(args.lang))
    _setup_logging(args)
    try:
        code = int(args.func(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print(_("{n} error(s) in the configuration; not started.", n=len(exc.problems)),
              file=sys.stderr)
        code = 2
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"loa-agent {args.command}: {l10n.say(exc)}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
