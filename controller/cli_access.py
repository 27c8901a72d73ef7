"""`loa-controller provision`, `loa-controller broker-config` and `loa-controller keys`:
who may reach the fleet, and with what.

`keys rotate` replaces the controller's signing key; the clusters move to the new one
through a rotation signed by the old (controller/keys.py).

`provision CLUSTER... | --all --out DIR` writes each cluster's bundle (controller/provision.py);
`broker-config mosquitto|nats --out DIR` writes the broker's logins and access rules
(controller/broker_config.py); both take the logins from the controller's credentials
file (controller/credentials.py), so they agree with each other however often they run.
"""

from __future__ import annotations

import argparse
import getpass
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from protocol.l10n import _

# --- provision -----------------------------------------------------------------------------


def cmd_provision(args: argparse.Namespace) -> int:
    from controller.cli_enrol import parse_ttl
    from controller.config import load_controller_config
    from controller.fleet import load_fleet
    from controller.identities import Identities
    from controller.provision import pick_clusters, provision
    from controller.store import Store

    config = load_controller_config(Path(args.config))
    fleet = load_fleet(config.fleet, config.speech.voice_names())
    clusters = pick_clusters(fleet, args.clusters, args.all)
    out = Path(args.out)
    now = datetime.now(UTC)
    ttl = parse_ttl(args.ttl)
    by = args.by or getpass.getuser()
    store = Store(config.store_url)
    try:
        identities = Identities(store)
        registered = {c for c in clusters if identities.active_key(c) is not None}

        def token(cluster: str) -> str:
            """The cluster's one-time enrolment token, issued now (stored hashed)."""
            if cluster in registered and not args.replace:
                return ""  # its box has a key; a new box in its place needs --replace
            return identities.issue_token(
                cluster, by=by, now=now, ttl=ttl, auto_approve=args.auto_approve,
                purpose="replace" if cluster in registered else "enrol",
            ).token

        bundles = provision(
            config, fleet, clusters, out, now, rotate=args.rotate, enrolment_token=token
        )
    finally:
        store.close()
    if args.json:
        print(json.dumps([
            {"cluster": b.cluster, "username": b.username, "password": b.password,
             "bundle": str(b.folder)}
            for b in bundles
        ], ensure_ascii=False, indent=2))
        return 0
    for b in bundles:
        login = _("new login") if b.new_password else _("login unchanged")
        print(_("wrote {folder}/ for cluster {cluster} ({login}): {files}", folder=b.folder,
                cluster=b.cluster, login=login, files=", ".join(b.files)))
    keyed = sorted(registered - {b.cluster for b in bundles if "enrolment.token" in b.files})
    if keyed:
        print(_("{clusters}: a key is registered, so no enrolment token in the bundle; "
                "for a new box in place of the old one write it again with --replace (the "
                "old key is retired when the new one is registered).",
                clusters=", ".join(keyed)))
    approve = _("register at once") if args.auto_approve else _(
        "wait for `loa-controller enrol approve CLUSTER` (or the web app's enrolment page)"
    )
    print(_("Enrolment tokens are single use, valid for {ttl}; the boxes' keys {approve}.",
            ttl=args.ttl, approve=approve))
    new = [b.cluster for b in bundles if b.new_password]
    print(_("\n{n} bundle(s) in {out}/; the logins are kept in {file} (mode 0600).",
            n=len(bundles), out=out, file=config.credentials_file))
    if new:
        print(_("{n} new or rotated login(s): the broker must learn them before these "
                "boxes can connect. Write its files again and reload it:\n"
                "  loa-controller broker-config mosquitto --config {config} --out DIR\n"
                "  systemctl reload mosquitto", n=len(new), config=args.config))
        if args.rotate:
            print(_("A box still running with its old password is refused from that reload "
                    "on: install its new bundle."))
    print(_("On each box, from its bundle folder: sudo install -o root -g loa -m 0640 * "
            "/etc/loa/ then systemctl restart loa-agent (docs/operations.md, "
            "\"Provisioning a cluster\")."))
    return 0


# --- broker-config ---------------------------------------------------------------------------


def cmd_broker_config(args: argparse.Namespace) -> int:
    from controller.broker_config import (
        Tls,
        check_names,
        dotted_names,
        write_mosquitto,
        write_nats,
    )
    from controller.config import load_controller_config
    from controller.credentials import BrokerCredentials
    from controller.fleet import load_fleet

    config = load_controller_config(Path(args.config))
    fleet = load_fleet(config.fleet, config.speech.voice_names())
    me = config.provisioning.controller_username
    check_names(fleet, me)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError(
            _("give both --tls-cert and --tls-key (the broker's certificate and key)")
        )
    tls = Tls(Path(args.tls_cert), Path(args.tls_key)) if args.tls_cert else None
    port = args.port or (8883 if tls else 1883)
    now = datetime.now(UTC)
    store = BrokerCredentials(config.credentials_file)
    rotate = [me] if args.rotate_controller else []
    accounts, made = store.ensure([*sorted(fleet.clusters), me], now, rotate=rotate)
    out = Path(args.out)
    if args.broker == "mosquitto":
        written = write_mosquitto(out, fleet, accounts, me, port, now, listen=args.listen, tls=tls)
        reload = _("reload mosquitto to apply them: systemctl reload mosquitto (or kill -HUP its "
                   "pid); connected clients stay connected. First time: include the file from "
                   "/etc/mosquitto/conf.d/ (include_dir) or run mosquitto -c {conf}.",
                   conf=written[-1])
        owner = _("mosquitto reads the password file and the ACL as its own user: the first "
                  "time, chown mosquitto: {passwords} {acl} (written again, they keep "
                  "their owner)", passwords=written[0], acl=written[1])
    else:
        written = write_nats(
            out, fleet, accounts, me, port, now, listen=args.listen, client_port=args.nats_port,
            tls=tls,
        )
        reload = _("reload nats-server to apply it: nats-server --signal reload (or kill -HUP "
                   "its pid). First time: nats-server -c {conf}.", conf=written[0])
        owner = _("the file holds the passwords (mode 0600): keep it readable by nats-server "
                  "only")
        dotted = dotted_names(fleet)
        if dotted:
            print(_("note: {names} contain '.': their topics need nats-server 2.10 or later",
                    names=f"{', '.join(dotted[:5])}{' ...' if len(dotted) > 5 else ''}"))
    for path in written:
        print(_("wrote {path}", path=path))
    print(_("{n} clusters and the controller ({me}) may log in; each cluster publishes only "
            "its own agent topics and reads only its own and its groups'.",
            n=len(fleet.clusters), me=me))
    if made:
        print(_("new logins made: {names} (kept in {file}).",
                names=f"{', '.join(made[:10])}{' ...' if len(made) > 10 else ''}",
                file=config.credentials_file))
    if me in made:
        print(_("The controller logs in as {me} with the password kept there (broker_url names "
                "no user): restart it after reloading the broker.", me=me))
    print(reload)
    print(owner)
    return 0


# --- keys ----------------------------------------------------------------------------------


def _when(at: datetime, tz: Any) -> str:
    return at.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")


def _overlap(text: str) -> timedelta:
    """7d, 36h, 90m, 1h30m."""
    from protocol.durations import parse_span

    try:
        return parse_span(text)
    except ValueError:
        raise ValueError(_("--overlap {text!r}: write a duration such as 7d, 36h or 90m",
                           text=text)) from None


def cmd_keys(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo

    from controller.config import load_controller_config
    from controller.fleet import load_fleet
    from controller.keys import (
        DEFAULT_OVERLAP,
        load_rotation,
        public_key_path,
        rotate,
        rotation_path,
    )
    from protocol.signing import key_id, load_private_key

    config = load_controller_config(Path(args.config))
    tz = ZoneInfo(config.timezone)
    now = datetime.now(UTC)
    if args.action == "status":
        key = load_private_key(config.private_key)
        print(_("controller key {key} ({file}); clusters installed from now on get {public}",
                key=key_id(key.public_key()), file=config.private_key,
                public=public_key_path(config.private_key)))
        rotation = load_rotation(rotation_path(config.private_key))
        if rotation is None:
            print(_("no key rotation: the clusters trust the key of their controller.pub"))
        elif now < rotation.retire_at:
            print(_("rotation {rotation} under way: both keys accepted until "
                    "{until}, then only {new} ({n} clusters)", rotation=rotation.describe(),
                    until=_when(rotation.retire_at, tz), new=key_id(rotation.new_key),
                    n=len(rotation.commands)))
        else:
            print(_("rotation {rotation} done: {old} refused "
                    "since {since}; the rotation stays published for "
                    "clusters that were off", rotation=rotation.describe(),
                    old=key_id(rotation.old_key), since=_when(rotation.retire_at, tz)))
        return 0

    overlap = _overlap(args.overlap) if args.overlap else DEFAULT_OVERLAP
    fleet = load_fleet(config.fleet, config.speech.voice_names())
    rotation = rotate(config.private_key, fleet.clusters, now, overlap, force=args.force)
    old, new = key_id(rotation.old_key), key_id(rotation.new_key)
    retire = _when(rotation.retire_at, tz)
    print(_("controller key rotated: {old} -> {new}", old=old, new=new))
    print(_("  new key: {file} (0600) and {public}; the old private key is not kept",
            file=config.private_key, public=public_key_path(config.private_key)))
    print(_("  the rotation, signed by the old key for {n} clusters: {file}",
            n=len(rotation.commands), file=rotation_path(config.private_key)))
    print(_("  the clusters accept both keys until {retire}, then only {new}", retire=retire,
            new=new))
    print(_("Next:"))
    print(_("  1. restart the controller now (systemctl restart loa-controller): it signs with "
            "the new key and publishes the rotation to every cluster (retained on "
            "loa/v1/cluster/<id>/key); each agent logs `controller key rotated`"))
    print(_("  2. the running controller signs with the old key until then: restart it before "
            "{retire}, or the clusters refuse its commands from then on", retire=retire))
    print(_("  3. new bundles (loa-controller provision) carry the new controller.pub; boxes "
            "installed with the old one move on their own, even after "
            "{retire}, when they next connect", retire=retire))
    print(_("  4. destroy any copy of the old private key (backups) after {retire}",
            retire=retire))
    return 0


def register(sub: Any, default_config: str) -> None:
    """Add `provision` and `broker-config` to loa-controller's parser."""
    p = sub.add_parser(
        "provision", help="write the bundle a cluster's box is installed from",
        description="Write, per cluster, a folder with a complete agent.yaml, its broker "
        "password, controller.pub, the broker's CA certificate (mqtts://) and an enrolment "
        "token. The login is made once and kept (credentials file); --rotate makes a new one.",
    )
    p.add_argument("clusters", nargs="*", metavar="CLUSTER", help="cluster ids from the fleet")
    p.add_argument("--all", action="store_true", help="every cluster of the fleet")
    p.add_argument("--out", required=True, help="folder for the bundles (one sub-folder each)")
    p.add_argument("--rotate", action="store_true",
                   help="give these clusters new broker passwords")
    p.add_argument("--json", action="store_true",
                   help="print cluster, username, password and bundle of each as JSON")
    p.add_argument("--auto-approve", action="store_true",
                   help="the bundles' enrolment tokens register the box's key at once")
    p.add_argument("--ttl", default="14d", help="how long the enrolment tokens are valid (14d)")
    p.add_argument("--replace", action="store_true",
                   help="bundles for boxes replacing registered ones (enrol replace)")
    p.add_argument("--by", help="who provisions (default: your login name), for the audit log")
    p.add_argument("--config", default=default_config, help="controller config YAML")
    p.set_defaults(func=cmd_provision)

    p = sub.add_parser(
        "broker-config", help="write the broker's logins and access rules from the fleet",
        description="Write the broker configuration for the fleet as it is now: anonymous "
        "clients refused, each cluster confined to its own and its groups' topics, only the "
        "controller publishing commands, content and membership. Write it again whenever the "
        "fleet changes, then reload the broker.",
    )
    p.add_argument("broker", choices=["mosquitto", "nats"])
    p.add_argument("--out", required=True, help="folder for the files")
    p.add_argument("--port", type=int, help="MQTT port (default 1883, 8883 with TLS)")
    p.add_argument("--listen", help="address to listen on (default: every interface)")
    p.add_argument("--tls-cert", help="the broker's certificate (PEM): a TLS listener")
    p.add_argument("--tls-key", help="the broker's private key (PEM), with --tls-cert")
    p.add_argument("--nats-port", type=int, default=4222,
                   help="nats: the NATS client port, on 127.0.0.1 (default 4222)")
    p.add_argument("--rotate-controller", action="store_true",
                   help="give the controller's own login a new password")
    p.add_argument("--config", default=default_config, help="controller config YAML")
    p.set_defaults(func=cmd_broker_config)

    p = sub.add_parser(
        "keys", help="rotate the controller's signing key, or show the rotation under way",
        description="rotate: make a new signing key; every cluster is told, by a message "
        "signed with the old key, to trust the new one, and refuses the old one after the "
        "overlap. status: the key and the rotation under way.",
    )
    p.add_argument("action", choices=["rotate", "status"])
    p.add_argument("--overlap", metavar="DURATION",
                   help="how long both keys are accepted (default 7d; e.g. 36h, 30d)")
    p.add_argument("--force", action="store_true",
                   help="rotate again while an earlier rotation is still under way")
    p.add_argument("--config", default=default_config, help="controller config YAML")
    p.set_defaults(func=cmd_keys)
