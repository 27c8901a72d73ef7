"""`loa-controller cap check FILE`: what taking a CAP alert would do, without doing it.

It reads the alert as the intake does (the same parser, the same signature check, the
same area matching against the fleet and the same policy, controller/cap_policy.py) and
prints the clusters it would reach by commune, the level and repeats, the words to be
spoken, and whether it would air now, later, wait for a manager, or not air at all,
with why. Nothing is sent or stored.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from controller.config import CapConfig
from protocol import l10n
from protocol.l10n import N_, Text, _

WHAT = {
    "send": N_("would air now"),
    "hold": N_("would be held, and aired when it takes effect"),
    "approve": N_("would wait for a manager's approval"),
    "expired": N_("would not air: it has expired"),
    "refuse": N_("would be refused"),
}


def register(sub: Any, default_config: str) -> None:
    p = sub.add_parser("cap", help="CAP alerts: what taking one would do (cap check FILE)")
    cap_sub = p.add_subparsers(dest="cap_command", required=True, metavar="COMMAND")
    check = cap_sub.add_parser(
        "check", help="print what taking a CAP alert would do, without doing it"
    )
    check.add_argument("file", help="the CAP 1.2 alert (XML)")
    check.add_argument("--config", help=f"controller config YAML (default: {default_config})")
    check.add_argument("--at", help="judge it as if it were this time (ISO 8601, with offset)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(func=cmd_cap_check)


def cmd_cap_check(args: argparse.Namespace) -> int:
    from controller.cap import CapError, check_signature, parse_cap, preview
    from controller.sources import load_sources

    sources = load_sources(Path(args.config) if args.config else None, require_config=True)
    assert sources.config is not None  # required above
    web = sources.config.web
    policy = web.cap if web is not None and web.cap is not None else CapConfig()
    now = _when(args.at, sources.tz)
    raw = Path(args.file).read_bytes()
    try:
        alert = parse_cap(raw)
        signed = check_signature(raw, alert, policy)
        if signed is not raw:
            alert = parse_cap(signed)
    except CapError as exc:
        print(_("{file}: would be refused: {reason}", file=args.file, reason=l10n.say(exc)),
              file=sys.stderr)
        return 1
    seen = preview(alert, sources.fleet, policy, now)
    fleet = sources.fleet
    by_commune: dict[str, list[str]] = {}
    for cid in seen.clusters:
        by_commune.setdefault(fleet.commune_of(cid).name, []).append(cid)
    decision = seen.decision
    if decision is None:
        outcome = _no_airing(alert.msg_type, alert.status, bool(seen.clusters))
    else:
        outcome = Text(WHAT[decision.action])
    result: dict[str, Any] = {
        "alert": alert.ref, "msg_type": alert.msg_type, "status": alert.status,
        "sender": alert.sender, "severity": alert.severity, "urgency": alert.urgency,
        "certainty": alert.certainty,
        "expires": alert.expires.isoformat() if alert.expires else None,
        "starts": alert.starts.isoformat() if alert.starts else None,
        "clusters": seen.clusters, "by_commune": by_commune,
        "outcome": decision.action if decision else "nothing",
        "level": decision.level if decision else None,
        "repeat": decision.repeat if decision else None,
        "every_s": decision.every.total_seconds() if decision and decision.every else None,
        "air_at": decision.air_at.isoformat() if decision and decision.air_at else None,
        "rule": decision.rule if decision else None,
        "why": ([r.in_("en") for r in decision.reasons] if decision  # JSON: English
                else [outcome.in_("en")]),
        "text": alert.text, "signed": alert.signed,
    }
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return 0
    print(_("CAP {type} {id} from {sender} ({status}), judged at {at}: {outcome}.",
            type=alert.msg_type, id=alert.identifier, sender=alert.sender,
            status=alert.status, at=now.isoformat(timespec="seconds"),
            outcome=outcome))  # fmt: skip
    for reason in decision.reasons if decision else [outcome]:
        print(_("  why: {reason}", reason=reason))
    print(_("  severity {severity}, urgency {urgency}, certainty {certainty}; expires "
            "{expires}; takes effect {starts}", severity=alert.severity,
            urgency=alert.urgency, certainty=alert.certainty,
            expires=result["expires"] or _("not given"),
            starts=result["starts"] or _("at once")))  # fmt: skip
    if decision is not None:
        again = (_(", again every {every} until it expires", every=decision.every)
                 if decision.every else "")
        print(_("  level {level}, spoken {n} time(s){again}", level=decision.level,
                n=decision.repeat, again=again))
    print(_("  clusters: {n}", n=len(seen.clusters)) + ("" if seen.clusters else
          _(" (none of the fleet's lies in its area)")))  # fmt: skip
    for commune, cids in sorted(by_commune.items()):
        print(f"    {commune}: {', '.join(cids)}")
    print(_("  words: {text}", text=alert.text or _("(none)")))
    return 0


def _no_airing(msg_type: str, status: str, matched: bool) -> Text:
    if msg_type == "Cancel":
        return Text("a Cancel: it would stop the alerts it references")
    if msg_type not in ("Alert", "Update"):
        return Text("msgType {type} is not aired", type=msg_type)
    if status != "Actual":
        return Text("status {status}: only Actual alerts are aired", status=status)
    return (Text("nothing to air") if matched
            else Text("no cluster of ours lies in the alert's area"))


def _when(text: str | None, tz: Any) -> datetime:
    if text is None:
        return datetime.now(tz)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(_(
            "--at {text!r} is not a time: write it as 2026-10-20T06:00:00+07:00", text=text
        )) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=tz)
