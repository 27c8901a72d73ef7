"""Provisioning bundles: what a technician installs on a new cluster's box.

`loa-controller provision CLUSTER --out DIR` writes DIR/CLUSTER/ with:

- `agent.yaml` (0644): a complete agent configuration: cluster id, broker address,
  login, the files below, the cluster's groups until its membership arrives, default
  output and relay;
- `broker.password` (0600): the cluster's broker password (user name = cluster id);
- `controller.pub` (0644): the controller's public key, from its private key as it is now;
- `broker-ca.pem` (0644): the broker's CA certificate, when the clusters reach the broker
  over mqtts://;
- `enrolment.token` (0600): the one-time token the agent joins with.

Every path in agent.yaml is relative, so the folder's files can be installed together
anywhere (`/etc/loa/` by default). Writing a bundle again gives the same login (kept in
the credentials file, controller/credentials.py) unless it is rotated.

The enrolment token comes from a callable (`EnrolmentTokens`): by default a random token
for each bundle; `loa-controller provision` passes one that issues the cluster's token
(controller/identities.py, stored hashed). An empty token means none: a cluster whose
key is registered gets a bundle without `enrolment.token` unless it is for a box
replacing it (`--replace`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from controller.config import ControllerConfig
from controller.credentials import Account, BrokerCredentials
from controller.fleet import Fleet
from protocol.files import PRIVATE, PUBLIC, write_atomic
from protocol.l10n import _
from protocol.signing import load_private_key, public_pem
from protocol.validation import suggest

AGENT_CONFIG = "agent.yaml"
PASSWORD_FILE = "broker.password"  # noqa: S105  # a file name, not a password
PUBLIC_KEY_FILE = "controller.pub"
CA_FILE = "broker-ca.pem"
TOKEN_FILE = "enrolment.token"  # noqa: S105  # a file name, not a token

# cluster id -> the token to write into its bundle (one call per bundle written; "": none)
EnrolmentTokens = Callable[[str], str]


def random_enrolment_token(_cluster: str) -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Bundle:
    """One bundle written: the cluster, its broker login and the folder."""

    cluster: str
    username: str
    password: str
    folder: Path
    files: tuple[str, ...]
    new_password: bool


@dataclass(frozen=True)
class BundleSource:
    """What every bundle of one run shares."""

    broker_url: str
    ca_file: Path | None
    controller_public_pem: bytes
    enrolment_token: EnrolmentTokens

    @classmethod
    def from_config(
        cls, config: ControllerConfig, enrolment_token: EnrolmentTokens = random_enrolment_token
    ) -> BundleSource:
        ca_file = config.agent_ca_file
        if ca_file is not None and not ca_file.is_file():
            raise ValueError(_(
                "{file}: the broker's CA certificate (provisioning.ca_file or "
                "broker_ca_file) is not there; every bundle for an mqtts:// broker carries it",
                file=ca_file,
            ))
        key = load_private_key(config.private_key)
        return cls(
            broker_url=config.agent_broker_url,
            ca_file=ca_file,
            controller_public_pem=public_pem(key.public_key()),
            enrolment_token=enrolment_token,
        )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def agent_yaml(
    fleet: Fleet, cluster: str, source: BundleSource, username: str, now: datetime,
    *, token: bool = True,
) -> str:
    """The complete agent.yaml of one cluster's bundle."""
    spec = fleet.clusters[cluster]
    commune = fleet.commune_of(cluster)
    settings: dict[str, object] = {
        "cluster_id": cluster,
        "broker_url": source.broker_url,
    }
    if source.ca_file is not None:
        settings["broker_ca_file"] = CA_FILE
    settings |= {
        "username": username,
        "password_file": PASSWORD_FILE,
        **({"enrolment_token_file": TOKEN_FILE} if token else {}),
        "controller_public_key": PUBLIC_KEY_FILE,
        "data_dir": "/var/lib/loa-agent",
        "groups": fleet.groups_of(cluster),
    }
    box = {
        "output": {"kind": "opusdec", "device": "alsa:default"},
        "relay": {"driver": "none"},
        "keepalive": 30,
    }
    return (
        f"# Agent configuration of cluster {cluster} ({_one_line(spec.name)}, "
        f"{_one_line(commune.name)}),\n"
        f"# written by `loa-controller provision` at {now.isoformat(timespec='seconds')}.\n"
        "# Install it with the other files of this folder (paths are relative to it):\n"
        "#   sudo install -o root -g loa -m 0640 * /etc/loa/\n"
        "# The lines below come from the controller; leave them as they are.\n"
        + yaml.safe_dump(settings, sort_keys=False, allow_unicode=True, default_flow_style=None)
        + "\n# This box's hardware: set output and relay as it is wired\n"
        "# (config/agent.example.yaml documents every key).\n"
        + yaml.safe_dump(box, sort_keys=False, allow_unicode=True)
    )


def write_bundle(
    folder: Path,
    fleet: Fleet,
    cluster: str,
    account: Account,
    source: BundleSource,
    now: datetime,
    *,
    new_password: bool = False,
) -> Bundle:
    """Write (or write again) one cluster's bundle into folder."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    username = cluster
    write_atomic(folder / PASSWORD_FILE, (account.password + "\n").encode(), PRIVATE)
    write_atomic(folder / PUBLIC_KEY_FILE, source.controller_public_pem, PUBLIC)
    files = [AGENT_CONFIG, PASSWORD_FILE, PUBLIC_KEY_FILE]
    if source.ca_file is not None:
        write_atomic(folder / CA_FILE, source.ca_file.read_bytes(), PUBLIC)
        files.append(CA_FILE)
    elif (folder / CA_FILE).exists():  # written when the broker was reached over TLS
        (folder / CA_FILE).unlink()
    token = source.enrolment_token(cluster).strip()
    if "\n" in token:
        raise ValueError(_("the enrolment token for {cluster} must be one line", cluster=cluster))
    if token:
        write_atomic(folder / TOKEN_FILE, (token + "\n").encode(), PRIVATE)
        files.append(TOKEN_FILE)
    elif (folder / TOKEN_FILE).exists():  # from a bundle written before the key registered
        (folder / TOKEN_FILE).unlink()
    text = agent_yaml(fleet, cluster, source, username, now, token=bool(token))
    write_atomic(folder / AGENT_CONFIG, text.encode(), PUBLIC)
    return Bundle(cluster, username, account.password, folder, tuple(files), new_password)


def pick_clusters(fleet: Fleet, names: Sequence[str], every: bool) -> list[str]:
    """The clusters asked for, in fleet order; ValueError naming any unknown one."""
    if every:
        if names:
            raise ValueError(_("give cluster ids or --all, not both"))
        return sorted(fleet.clusters)
    if not names:
        raise ValueError(
            _("name the clusters to provision (cluster ids from the fleet), or --all")
        )
    unknown = [n for n in names if n not in fleet.clusters]
    if unknown:
        hints = []
        for name in unknown:
            close = suggest(name, fleet.clusters)
            hints.append(f"{name!r}" + (_(" (did you mean {close!r}?)", close=close)
                                        if close else ""))
        raise ValueError(_(
            "no cluster {names} in the fleet; write cluster ids as they appear "
            "after `id:` under `clusters:` in the fleet file", names=", ".join(hints),
        ))
    return list(dict.fromkeys(names))


def provision(
    config: ControllerConfig,
    fleet: Fleet,
    clusters: Sequence[str],
    out: Path,
    now: datetime,
    *,
    rotate: bool = False,
    enrolment_token: EnrolmentTokens = random_enrolment_token,
) -> list[Bundle]:
    """Write out/<cluster>/ for each cluster; make (or, with rotate, replace) their logins."""
    controller_user = config.provisioning.controller_username
    if controller_user in clusters:
        raise ValueError(_(
            "cluster {user!r} has the controller's broker user name: rename the "
            "cluster, or set provisioning.controller_username to another name",
            user=controller_user,
        ))
    source = BundleSource.from_config(config, enrolment_token)
    store = BrokerCredentials(config.credentials_file)
    accounts, made = store.ensure(clusters, now, rotate=clusters if rotate else ())
    return [
        write_bundle(
            out / cluster, fleet, cluster, accounts[cluster], source, now,
            new_password=cluster in made,
        )
        for cluster in clusters
    ]

