"""Every MQTT topic of the Loa protocol, built and parsed here and nowhere else.

Layout (version in the prefix, so v2 can run beside v1 during an upgrade):

    loa/v1/cluster/<cluster>/key         controller -> one agent   (signed key rotation, retained)
    loa/v1/cluster/<cluster>/command     controller -> one agent   (signed commands)
    loa/v1/cluster/<cluster>/content     controller -> one agent   (audio chunks)
    loa/v1/cluster/<cluster>/live        controller -> one agent   (live audio frames, QoS 0)
    loa/v1/cluster/<cluster>/membership  controller -> one agent   (signed, retained)
    loa/v1/cluster/<cluster>/event       agent -> controller       (status events)
    loa/v1/cluster/<cluster>/state       agent -> controller       (retained, Last Will)
    loa/v1/cluster/<cluster>/request     agent -> controller       (missing chunks)
    loa/v1/cluster/<cluster>/heartbeat   agent -> controller       (health, QoS 0)
    loa/v1/cluster/<cluster>/enrol       agent -> controller       (asks to join)
    loa/v1/group/<group>/command         controller -> agents of a group
    loa/v1/group/<group>/content         controller -> agents of a group
    loa/v1/group/<group>/live            controller -> agents of a group (live audio frames)
    loa/v1/controller/<controller>/canary  controller -> itself (retained: did the
                                         broker keep its retained messages?)

A broker ACL can therefore confine an agent logged in as <cluster> to reading
loa/v1/cluster/<cluster>/{key,command,content,live,membership} (TO_AGENT) and its groups'
loa/v1/group/<group>/{command,content,live} (GROUP_CHANNELS), and to writing only
loa/v1/cluster/<cluster>/{event,state,request,heartbeat,enrol} (FROM_AGENT). The broker
configuration is generated from these lists (controller/broker_config.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from protocol.l10n import N_, _

PREFIX = "loa/v1"
_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}/v1")

# Cluster and group ids are single topic levels: no '/', '+', '#', spaces or NUL.
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
# fullmatch, not match with "$": "$" also matches before a trailing newline.
_ID_RE = re.compile(ID_PATTERN)

ClusterChannel = Literal[
    "key", "command", "content", "live", "membership", "event", "state", "request",
    "heartbeat", "enrol",
]
GroupChannel = Literal["command", "content", "live"]
ControllerChannel = Literal["canary"]
CONTROLLER_CHANNELS: tuple[ControllerChannel, ...] = ("canary",)

# The agent subscribes in this order: the broker hands retained messages over in the
# order of the subscriptions, so a key rotation is known before the membership it signs.
TO_AGENT: tuple[ClusterChannel, ...] = ("key", "command", "content", "live", "membership")
FROM_AGENT: tuple[ClusterChannel, ...] = ("event", "state", "request", "heartbeat", "enrol")
GROUP_CHANNELS: tuple[GroupChannel, ...] = ("command", "content", "live")


@contextmanager
def prefix(root: str) -> Iterator[str]:
    """Every topic built and parsed in this process under `root` (two levels, the second
    `v1`, as `loa/v1`) within the block; the previous prefix after it. The demo's own
    root on a broker a real fleet uses (controller/demo.py): its controller and agents,
    in one process, never meet the real ones."""
    global PREFIX  # noqa: PLW0603 (one process, one root: set by the demo for its whole run)
    if not _PREFIX_RE.fullmatch(root):
        raise ValueError(f"topic root {root!r}: write <name>/v1, the name in letters, digits, "
                         "'.', '_' or '-'")
    before, PREFIX = PREFIX, root
    try:
        yield root
    finally:
        PREFIX = before


def check_id(value: str, what: str = N_("id")) -> str:
    """Return value if it is a valid single-level id, else raise ValueError naming it
    (what: marked with N_ where it is written, translated here)."""
    if not _ID_RE.fullmatch(value):
        raise ValueError(_(
            "{what} {value!r} cannot be used in an MQTT topic: use 1-64 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit", what=_(what), value=value,
        ))
    return value


def cluster_topic(cluster: str, channel: ClusterChannel) -> str:
    return f"{PREFIX}/cluster/{check_id(cluster, 'cluster id')}/{channel}"


def group_topic(group: str, channel: GroupChannel) -> str:
    return f"{PREFIX}/group/{check_id(group, 'group id')}/{channel}"


def controller_topic(controller: str, channel: ControllerChannel) -> str:
    """A topic of the controller's own (its retained canary: controller/reconnect.py)."""
    return f"{PREFIX}/controller/{check_id(controller, 'controller id')}/{channel}"


def all_clusters(channel: ClusterChannel) -> str:
    """Subscription filter for one channel of every cluster (the controller's side)."""
    return f"{PREFIX}/cluster/+/{channel}"


@dataclass(frozen=True)
class ParsedTopic:
    scope: Literal["cluster", "group"]
    name: str
    channel: str


def parse(topic: str) -> ParsedTopic | None:
    """Split a Loa topic into scope, name and channel; None if it is not one of ours."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX:
        return None
    scope, name, channel = parts[2], parts[3], parts[4]
    if scope == "cluster" and channel in TO_AGENT + FROM_AGENT and _ID_RE.fullmatch(name):
        return ParsedTopic("cluster", name, channel)
    if scope == "group" and channel in GROUP_CHANNELS and _ID_RE.fullmatch(name):
        return ParsedTopic("group", name, channel)
    return None
