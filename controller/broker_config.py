"""Broker configuration from the fleet: who may publish and read which topic.

`loa-controller broker-config mosquitto|nats --out DIR` writes the broker's logins and
access rules for the fleet as it is now. The rules (docs/protocol.md, "Who may publish
and read what"):

- a cluster (user name = cluster id) may publish only on its own agent topics
  (`loa/v1/cluster/<itself>/{event,state,request,heartbeat,enrol}`) and read only its own
  controller topics (`loa/v1/cluster/<itself>/{key,command,content,membership}`) and its
  groups' (`loa/v1/group/<group>/{command,content}`);
- the controller may publish every controller topic of every cluster and group, and read
  every agent topic; nobody else may do either. It may also publish and read its own
  canary (`loa/v1/controller/<id>/canary`, controller/reconnect.py);
- anonymous clients are refused.

The topic lists come from protocol/topics.py (`TO_AGENT`, `FROM_AGENT`, `GROUP_CHANNELS`),
so a new channel there is in the rules the next time they are written. Passwords come
from the controller's credentials file (controller/credentials.py); writing the files again
gives the same logins, so the broker is reloaded, not re-provisioned, when the fleet
changes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from controller.credentials import Account
from controller.fleet import Fleet
from protocol import topics
from protocol.files import PRIVATE, PUBLIC, write_atomic
from protocol.l10n import Text

MOSQUITTO_CONF = "mosquitto.conf"
MOSQUITTO_PASSWD = "mosquitto.passwd"  # noqa: S105  # a file name, not a password
MOSQUITTO_ACL = "mosquitto.acl"
NATS_CONF = "nats-server.conf"
# The MQTT port faces the clusters; --listen narrows it.
EVERY_INTERFACE = "0.0.0.0"  # noqa: S104  # the broker serves the whole fleet


@dataclass(frozen=True)
class Access:
    """What one login may publish and read (MQTT topics and filters)."""

    username: str
    publish: tuple[str, ...]
    read: tuple[str, ...]


@dataclass(frozen=True)
class Tls:
    """The broker's own certificate and key, for a TLS listener."""

    certfile: Path
    keyfile: Path


def cluster_access(fleet: Fleet, cluster: str) -> Access:
    own_out = tuple(topics.cluster_topic(cluster, c) for c in topics.FROM_AGENT)
    own_in = tuple(topics.cluster_topic(cluster, c) for c in topics.TO_AGENT)
    groups = tuple(
        topics.group_topic(group, c)
        for group in fleet.groups_of(cluster) for c in topics.GROUP_CHANNELS
    )
    return Access(cluster, own_out, own_in + groups)


def controller_access(username: str) -> Access:
    every = "+"
    # Its own canary (controller/reconnect.py): published and read back by itself alone.
    own = tuple(f"{topics.PREFIX}/controller/{every}/{c}" for c in topics.CONTROLLER_CHANNELS)
    return Access(
        username,
        tuple(f"{topics.PREFIX}/cluster/{every}/{c}" for c in topics.TO_AGENT)
        + tuple(f"{topics.PREFIX}/group/{every}/{c}" for c in topics.GROUP_CHANNELS) + own,
        tuple(f"{topics.PREFIX}/cluster/{every}/{c}" for c in topics.FROM_AGENT) + own,
    )


def check_names(fleet: Fleet, controller_username: str) -> None:
    if controller_username in fleet.clusters:
        raise ValueError(Text(
            "cluster {name!r} has the controller's broker user name: rename "
            "the cluster, or set provisioning.controller_username to another name",
            name=controller_username,
        ))


def _header(tool: str, fleet: Fleet, now: datetime, reload: str) -> list[str]:
    return [
        f"# Loa: {tool} for the fleet of {fleet.province.id} ({len(fleet.clusters)} clusters),",
        f"# written by `loa-controller broker-config` at {now.isoformat(timespec='seconds')}.",
        "# Do not edit: write it again when the fleet changes (a cluster added, moved or",
        f"# taken out, a password rotated), then {reload}.",
    ]


# --- mosquitto ---------------------------------------------------------------------------------


def mosquitto_acl(fleet: Fleet, controller_username: str, now: datetime) -> str:
    """The acl_file: each cluster its own topics (by pattern, %u = its user name = its id)
    and its groups' (a user block each), the controller every cluster's and group's."""
    lines = _header("mosquitto ACL", fleet, now, "reload mosquitto (SIGHUP)")
    lines += [
        "# A client may do only what a line below allows; anonymous clients are refused",
        "# by mosquitto.conf (allow_anonymous false).",
        "",
        "# Every cluster: its own topics (its user name is its cluster id).",
    ]
    for channel in topics.FROM_AGENT:
        lines.append(f"pattern write {topics.PREFIX}/cluster/%u/{channel}")
    for channel in topics.TO_AGENT:
        lines.append(f"pattern read {topics.PREFIX}/cluster/%u/{channel}")
    lines += ["", "# Each cluster: its groups' topics (from the fleet tree)."]
    for cluster in sorted(fleet.clusters):
        lines.append(f"user {cluster}")
        access = cluster_access(fleet, cluster)
        lines += [f"topic read {t}" for t in access.read if t.startswith(f"{topics.PREFIX}/group/")]
    lines += ["", "# The controller: commands, content, membership and keys out; events in."]
    controller = controller_access(controller_username)
    lines.append(f"user {controller_username}")
    lines += [f"topic write {t}" for t in controller.publish]
    lines += [f"topic read {t}" for t in controller.read]
    return "\n".join(lines) + "\n"


def mosquitto_passwd(accounts: Mapping[str, Account]) -> str:
    return "".join(f"{name}:{account.mosquitto}\n" for name, account in sorted(accounts.items()))


def mosquitto_conf(
    fleet: Fleet, out: Path, port: int, now: datetime, *, listen: str | None = None,
    tls: Tls | None = None,
) -> str:
    folder = out.resolve()
    lines = _header(
        "mosquitto configuration", fleet, now,
        "reload mosquitto (systemctl reload mosquitto, or kill -HUP its pid): it reads the "
        "password file and the ACL again, and clients stay connected",
    )
    lines += [
        "# Use it as mosquitto's configuration (mosquitto -c this file), or include it",
        "# from /etc/mosquitto/conf.d/.",
        "",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {folder / MOSQUITTO_PASSWD}",
        f"acl_file {folder / MOSQUITTO_ACL}",
        "",
        f"listener {port}{f' {listen}' if listen else ''}",
    ]
    if tls is not None:
        lines += [f"certfile {tls.certfile.resolve()}", f"keyfile {tls.keyfile.resolve()}"]
    lines += [
        "",
        "# Agents and the controller use persistent sessions: what they have not received",
        "# is saved on a clean stop and every autosave_interval (30 min by default), so a",
        "# crash loses what came since; Loa sends again what its clusters do not confirm.",
        "persistence true",
        "max_queued_messages 10000",
    ]
    return "\n".join(lines) + "\n"


def write_mosquitto(
    out: Path, fleet: Fleet, accounts: Mapping[str, Account], controller_username: str,
    port: int, now: datetime, *, listen: str | None = None, tls: Tls | None = None,
) -> list[Path]:
    """DIR/mosquitto.conf with mosquitto.passwd and mosquitto.acl beside it."""
    check_names(fleet, controller_username)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / MOSQUITTO_PASSWD, out / MOSQUITTO_ACL, out / MOSQUITTO_CONF]
    write_atomic(written[0], mosquitto_passwd(accounts).encode(), PRIVATE)
    write_atomic(written[1], mosquitto_acl(fleet, controller_username, now).encode(), PRIVATE)
    write_atomic(
        written[2], mosquitto_conf(fleet, out, port, now, listen=listen, tls=tls).encode(), PUBLIC
    )
    return written


# --- NATS ----------------------------------------------------------------------------------


def nats_subject(topic: str) -> str:
    """The NATS subject of an MQTT topic or filter: '/' -> '.', '.' -> '//' (nats-server
    2.10 and later; earlier ones refuse topics with a '.'), '+' -> '*', '#' -> '>'."""
    levels = topic.split("/")
    out = []
    for level in levels:
        if level == "+":
            out.append("*")
        elif level == "#":
            out.append(">")
        else:
            out.append(level.replace(".", "//"))
    return ".".join(out)


def dotted_names(fleet: Fleet) -> list[str]:
    """Cluster and group ids with a '.': their topics need nats-server 2.10 or later."""
    return sorted(n for n in [*fleet.clusters, *fleet.nodes] if "." in n)


def _nats_user(access: Access, password: str) -> list[str]:
    publish = [json.dumps(nats_subject(t)) for t in access.publish]
    # QoS 1 subscriptions are delivered through the server's own $MQTT.sub.<id> subjects.
    read = [json.dumps(nats_subject(t)) for t in access.read] + [json.dumps("$MQTT.sub.>")]
    return [
        "    {",
        f"      user: {json.dumps(access.username)}",
        f"      password: {json.dumps(password)}",
        '      allowed_connection_types: ["MQTT"]',
        "      permissions: {",
        f"        publish: {{ allow: [{', '.join(publish)}] }}",
        f"        subscribe: {{ allow: [{', '.join(read)}] }}",
        "      }",
        "    }",
    ]


def nats_conf(
    fleet: Fleet, accounts: Mapping[str, Account], controller_username: str, out: Path,
    port: int, now: datetime, *, server_name: str = "loa-broker", listen: str | None = None,
    client_port: int = 4222, tls: Tls | None = None,
) -> str:
    lines = _header(
        "nats-server configuration (MQTT)", fleet, now,
        "reload nats-server (nats-server --signal reload, or kill -HUP its pid)",
    )
    lines += [
        "# MQTT clients log in with the users below; each may publish and read only the",
        "# subjects of its own topics (MQTT topic a/b.c is NATS subject a.b//c).",
        "",
        f"server_name: {json.dumps(server_name)}   # MQTT needs one",
        f"listen: {json.dumps(f'127.0.0.1:{client_port}')}   # NATS clients: none needed",
        "jetstream {",
        f"  store_dir: {json.dumps(str((out / 'jetstream').resolve()))}"
        "   # MQTT sessions, retained messages",
        "}",
        "mqtt {",
        f"  listen: {json.dumps(f'{listen or EVERY_INTERFACE}:{port}')}",
    ]
    if tls is not None:
        lines += [
            "  tls {",
            f"    cert_file: {json.dumps(str(tls.certfile.resolve()))}",
            f"    key_file: {json.dumps(str(tls.keyfile.resolve()))}",
            "  }",
        ]
    lines += ["}", "authorization {", "  users: ["]
    for cluster in sorted(fleet.clusters):
        lines += _nats_user(cluster_access(fleet, cluster), accounts[cluster].password)
    lines += _nats_user(
        controller_access(controller_username), accounts[controller_username].password
    )
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def write_nats(
    out: Path, fleet: Fleet, accounts: Mapping[str, Account], controller_username: str,
    port: int, now: datetime, *, listen: str | None = None, client_port: int = 4222,
    tls: Tls | None = None,
) -> list[Path]:
    """DIR/nats-server.conf (its passwords in it: mode 0600)."""
    check_names(fleet, controller_username)
    out.mkdir(parents=True, exist_ok=True)
    path = out / NATS_CONF
    text = nats_conf(
        fleet, accounts, controller_username, out, port, now, listen=listen,
        client_port=client_port, tls=tls,
    )
    write_atomic(path, text.encode(), PRIVATE)
    return [path]
