"""`loa-controller live`: carry a stream, a file or standard input to clusters, live.

It signs with the controller's key and publishes on the controller's broker login, as the
daemon does (controller/live.py); it needs no running daemon. The agents report the
session like any play (`loa-controller fleet`, the reports).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from protocol.durations import parse_span
from protocol.l10n import _


def cmd_live(args: argparse.Namespace) -> int:
    from controller.config import load_controller_config
    from controller.fleet import load_fleet
    from controller.live import LiveBroadcast, LivePlan, LiveSettings
    from controller.main import Settings
    from protocol.clock import SystemClock
    from protocol.mqtt import MqttLink
    from protocol.signing import Signer, load_private_key

    config = load_controller_config(Path(args.config))
    settings = Settings.from_config(config)
    fleet = load_fleet(settings.fleet_path, config.speech.voice_names())
    clusters = fleet.resolve(args.target)
    duration = parse_span(args.duration).total_seconds() if args.duration else None
    delay_ms = int(parse_span(args.delay).total_seconds() * 1000)
    plan = LivePlan(
        bulletin=args.title or (
            "phát trực tiếp" if args.input == "-" else f"tiếp sóng {args.input}"
        ),
        inputs=[args.input, *(args.backup or [])],
        clusters=clusters,
        source="microphone" if args.input == "-" else "rebroadcast",
        level=args.level,
        duration_s=duration,
        fallback=Path(args.fallback) if args.fallback else None,
    )
    live_settings = LiveSettings(
        delay_ms=delay_ms, bitrate_kbps=settings.audio.bitrate_kbps,
        target_lufs=settings.audio.target_lufs or -16.0,
        true_peak_dbtp=settings.audio.true_peak_dbtp,
    )  # fmt: skip
    link = MqttLink(settings.broker, f"{settings.client_id}-live")
    link.start()
    try:
        if not link.wait_connected(10):
            print(_("loa-controller live: cannot reach the broker {host}:{port}; check "
                    "broker_url in {config}", host=settings.broker.host,
                    port=settings.broker.port, config=args.config))  # fmt: skip
            return 1
        broadcast = LiveBroadcast(
            plan, link=link, signer=Signer(load_private_key(settings.private_key)),
            cover=fleet.cover, clock=SystemClock(), settings=live_settings,
        )  # fmt: skip
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, lambda *_: broadcast.stop())
            signal.signal(signal.SIGTERM, lambda *_: broadcast.stop())
        print(_("live session {session}: {bulletin} ({level}) to {n} clusters; Ctrl-C ends "
                "it", session=broadcast.session_id, bulletin=plan.bulletin, level=plan.level,
                n=len(clusters)), flush=True)  # fmt: skip
        report = broadcast.run()
    finally:
        link.stop()
    for entry in report.inputs:
        print(_("  {source}: {s:.1f} s, {outcome}", source=entry.source, s=entry.seconds,
                outcome=entry.outcome))
    print(_("live session {session} ended: {s:.1f} s sent in {frames} frames",
            session=report.session_id, s=report.seconds, frames=report.frames))  # fmt: skip
    sent_any = any(entry.seconds > 0 for entry in report.inputs)
    return 0 if sent_any else 1


def register(sub: Any, default_config: str) -> None:
    """Add the `live` subcommand to loa-controller's parser."""
    p = sub.add_parser(
        "live", help="carry a stream, a file or standard input to clusters as it comes",
        description="Relay an upper-level station's stream (http/https, Icecast, HLS), a "
        "local file, or standard input (-: a sound device through ffmpeg) to the targeted "
        "clusters, live, signed with the controller's key. Backups are tried in order "
        "when the input stalls or fails.",
    )
    p.add_argument("--target", action="append", required=True, metavar="NODE",
                   help="a node, cluster or name of the fleet (repeat for several)")
    p.add_argument("--input", required=True, metavar="FILE|URL|-",
                   help="the stream's URL, a file, or - for standard input")
    p.add_argument("--backup", action="append", metavar="URL",
                   help="a backup input, tried when the ones before it fail (repeat)")
    p.add_argument("--fallback", metavar="FILE",
                   help="a file to air once when no input works (default: silence)")
    p.add_argument("--level", choices=["normal", "priority", "emergency"], default="normal")
    p.add_argument("--duration", metavar="SPAN",
                   help="how long (30m, 1h); default: until the input ends or Ctrl-C")
    p.add_argument("--delay", default="2s", metavar="SPAN",
                   help="the clusters' playout delay behind capture (default 2s)")
    p.add_argument("--title", help="what the clusters report it as")
    p.add_argument("--config", default=default_config, help="controller config YAML")
    p.set_defaults(func=cmd_live)
