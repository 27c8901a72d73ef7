"""`loa-controller enrol ...`: cluster identities, from the command line.

- `enrol token CLUSTER [--auto-approve] [--ttl 14d] [--out FILE]`: a one-time token for
  a new box (the provisioning bundle's `enrolment.token`), printed or written to FILE
  (mode 0600). Without --auto-approve the box's join request waits for a manager.
- `enrol list [--json]`: every cluster's registered key, the join requests waiting for
  approval, and the tokens not used yet.
- `enrol approve CLUSTER [--key KEY]`, `enrol reject CLUSTER [--key KEY]`: decide a
  waiting join request; the running controller tells the agent within seconds.
- `enrol replace CLUSTER [--auto-approve] [--ttl] [--out FILE]`: a token for a box that
  replaces the cluster's current one: when its key is registered, the old key is
  retired and nothing it signs is stored any more.

Every step is a row of the audit log. The store is the running controller's (the
config's `store_url`); this command works while the controller runs.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.l10n import _

if TYPE_CHECKING:
    from controller.identities import Identities, IssuedToken
    from controller.store import Store


def parse_ttl(text: str) -> timedelta:
    """"14d", "36h", "90m", "2h30m": how long a token stays valid."""
    from protocol.durations import parse_span

    try:
        return parse_span(text)
    except ValueError:
        raise ValueError(_("--ttl {text!r}: write a duration such as 14d, 36h or 90m",
                           text=text)) from None


def _open(args: argparse.Namespace) -> tuple[Store, Identities, Any]:
    from controller.config import load_controller_config
    from controller.fleet import load_fleet
    from controller.identities import Identities
    from controller.store import Store

    config = load_controller_config(Path(args.config))
    fleet = load_fleet(config.fleet)
    store = Store(config.store_url)
    return store, Identities(store), fleet


def _known(fleet: Any, cluster: str) -> None:
    if cluster in fleet.clusters:
        return
    from protocol.validation import suggest

    close = suggest(cluster, fleet.clusters)
    hint = _("did you mean {close!r}? ", close=close) if close else ""
    raise ValueError(_(
        "no cluster {cluster!r} in the fleet; {hint}write a cluster id as the fleet file "
        "has it (loa-controller fleet lists them)", cluster=cluster, hint=hint,
    ))


def _by(args: argparse.Namespace) -> str:
    return str(args.by or getpass.getuser())


def _give(issued: IssuedToken, args: argparse.Namespace) -> None:
    """The token, once: to --out (mode 0600) or on stdout."""
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also when the file was there before
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(issued.token + "\n")
    if args.json:
        print(json.dumps({
            "cluster": issued.cluster,
            "token": None if args.out else issued.token,
            "file": str(args.out) if args.out else None,
            "expires_at": issued.expires_at.isoformat(),
            "auto_approve": issued.auto_approve,
            "purpose": issued.purpose,
        }, indent=2))
        return
    if not args.out:
        print(issued.token)
    how = (
        _("its key is registered as soon as the box asks") if issued.auto_approve
        else _("its join request then waits for `loa-controller enrol approve {cluster}`",
               cluster=issued.cluster)
    )
    where = (_("written to {out} (mode 0600)", out=args.out) if args.out
             else _("printed above"))
    print(
        _("token for cluster {cluster} {where}; single use, valid until "
          "{until}. Put it on the "
          "box as the file named by enrolment_token_file in agent.yaml; {how}.",
          cluster=issued.cluster, where=where,
          until=issued.expires_at.astimezone(UTC).isoformat(timespec="minutes"), how=how),
        file=sys.stderr,
    )


def cmd_token(args: argparse.Namespace) -> int:
    store, identities, fleet = _open(args)
    try:
        _known(fleet, args.cluster)
        issued = identities.issue_token(
            args.cluster, by=_by(args), now=datetime.now(UTC), ttl=parse_ttl(args.ttl),
            auto_approve=args.auto_approve,
            purpose="replace" if args.command_name == "replace" else "enrol",
        )
    finally:
        store.close()
    _give(issued, args)
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    store, identities, fleet = _open(args)
    try:
        _known(fleet, args.cluster)
        now = datetime.now(UTC)
        if args.command_name == "approve":
            key = identities.approve(args.cluster, by=_by(args), now=now, key=args.key)
            print(_("registered key {key} of cluster {cluster}; the running controller "
                    "tells the agent within seconds, and stores what it signs from then on",
                    key=key, cluster=args.cluster))
        else:
            key = identities.reject(args.cluster, by=_by(args), now=now, key=args.key)
            print(_("rejected key {key} of cluster {cluster}; nothing it signs is stored. "
                    "A new token: loa-controller enrol token {cluster}", key=key,
                    cluster=args.cluster))
    finally:
        store.close()
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from controller.text_table import format_table

    store, identities, fleet = _open(args)
    try:
        keys = identities.keys()
        requests = identities.requests()
        tokens = identities.tokens()
    finally:
        store.close()
    now = datetime.now(UTC)
    active = {k.cluster: k for k in keys if k.status == "active"}
    pending = [r for r in requests if r.status == "pending"]
    waiting = [
        t for t in tokens if t.used_at is None and t.revoked_at is None and t.expires_at > now
    ]
    if args.json:
        print(json.dumps({
            "clusters": [
                {"cluster": cid,
                 "key": active[cid].key_id if cid in active else None,
                 "registered_at": active[cid].registered_at.isoformat() if cid in active else None,
                 "registered_by": active[cid].registered_by if cid in active else None}
                for cid in sorted(fleet.clusters)
            ],
            "pending": [
                {"cluster": r.cluster, "key": r.key_id, "requested_at": r.requested_at.isoformat(),
                 "purpose": r.purpose, "agent_version": r.agent_version}
                for r in pending
            ],
            "retired": [
                {"cluster": k.cluster, "key": k.key_id,
                 "retired_at": k.retired_at.isoformat() if k.retired_at else None}
                for k in keys if k.status == "retired"
            ],
            "tokens": [
                {"cluster": t.cluster, "purpose": t.purpose, "auto_approve": t.auto_approve,
                 "expires_at": t.expires_at.isoformat(), "issued_by": t.issued_by}
                for t in waiting
            ],
        }, ensure_ascii=False, indent=2))
        return 0

    def when(at: datetime) -> str:
        return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")

    if pending:
        print(_("Join requests waiting for approval (loa-controller enrol approve CLUSTER):"))
        print(format_table(
            [_("cluster"), _("key"), _("asked at"), _("for"), _("agent")],
            [[r.cluster, r.key_id, when(r.requested_at),
              _("a replaced box") if r.purpose == "replace" else _("a new box"),
              r.agent_version or "-"] for r in pending],
        ))
        print()
    rows = []
    for cid in sorted(fleet.clusters):
        found = active.get(cid)
        token = next((t for t in waiting if t.cluster == cid), None)
        state = (
            _("registered since {at} by {by}", at=when(found.registered_at),
              by=found.registered_by)
            if found else _("NOT REGISTERED")
        )
        if token is not None:
            state += _(
                "; token ({purpose}{auto}) until {until}",
                purpose=_("replace") if token.purpose == "replace" else _("enrol"),
                auto=_(", approves itself") if token.auto_approve else "",
                until=when(token.expires_at),
            )
        rows.append([cid, found.key_id if found else "-", state])
    print(format_table([_("cluster"), _("key"), _("state")], rows))
    missing = sum(1 for cid in fleet.clusters if cid not in active)
    print(_("\n{registered} of {total} clusters registered, {pending} join request(s) waiting.",
            registered=len(fleet.clusters) - missing, total=len(fleet.clusters),
            pending=len(pending)))
    return 0


def register(sub: Any, default_config: str) -> None:
    """Add `enrol` and its subcommands to the loa-controller parser."""
    enrol = sub.add_parser(
        "enrol", help="cluster identities: enrolment tokens, approvals, box replacement",
        description="Register each cluster's own key: a one-time token for the box, then "
        "approval (unless the token approves itself). See docs/operations.md.",
    )
    steps = enrol.add_subparsers(dest="command_name", required=True, metavar="STEP")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=default_config, help="controller config YAML")
        p.add_argument("--by", help="who does this (default: your login name)")

    for name, helptext in (
        ("token", "a one-time enrolment token for a cluster's new box"),
        ("replace", "a token for a box replacing the cluster's current one (retires its key)"),
    ):
        p = steps.add_parser(name, help=helptext)
        p.add_argument("cluster", metavar="CLUSTER")
        p.add_argument("--auto-approve", action="store_true",
                       help="register the box's key as soon as it asks (no approval)")
        p.add_argument("--ttl", default="14d", help="how long the token is valid (14d)")
        p.add_argument("--out", help="write the token to this file (mode 0600)")
        p.add_argument("--json", action="store_true", help="print JSON")
        common(p)
        p.set_defaults(func=cmd_token)

    p = steps.add_parser("list", help="registered keys, waiting requests, unused tokens")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--config", default=default_config, help="controller config YAML")
    p.set_defaults(func=cmd_list)

    for name, helptext in (
        ("approve", "register the key of a cluster's waiting join request"),
        ("reject", "refuse a cluster's waiting join request"),
    ):
        p = steps.add_parser(name, help=helptext)
        p.add_argument("cluster", metavar="CLUSTER")
        p.add_argument("--key", help="the key id, when the cluster has several requests")
        common(p)
        p.set_defaults(func=cmd_decide)
