"""Content distribution: a play becomes one signed command and its audio chunks.

The targeted clusters are covered by the fewest whole groups of the fleet tree (a
commune, a district, the province) plus any leftover clusters. One command, signed once
and addressed to those groups and clusters, is published on each of their command
topics, then the audio chunks on their content topics: the broker fans out, so each
chunk leaves the controller once per group, not once per cluster.

Audio a cluster already holds is not sent again (controller/holdings.py learns what each
cluster holds from its `delivered` events). For each item and each group or cluster the
command went to: if every targeted cluster there holds the item, no chunk goes; if fewer
than half of them lack it (`own_topics_below`), the chunks go to those clusters' own
content topics; otherwise once to the group's content topic. Agents that already hold a
content hash ignore its chunks; an agent that missed chunks (or whose holding was stale)
asks for exactly those on its request topic and gets them on its own content topic.

A play carries one audio for all its clusters. Clusters of different audio profiles
(controller.audio_chain: horns outdoors, full-range speakers indoors) need different
audio, so a play whose clusters differ is sent as one play per profile (`per_profile`),
each with its own id: the play's id and ``+<profile>``.

Resends are bounded, since anyone who can publish on the broker can ask, and each byte
resent is a byte of the cluster's paid 4G data: a request from a cluster the fleet
names, for content this controller holds, gets at most the chunks it asked for (indexes
the content has, each once); a (cluster, content) gets them at most once per
RESEND_INTERVAL_S, and at most RESEND_FACTOR times the content's size per RESEND_WINDOW_S;
a cluster at most MAX_CLUSTER_RESEND_BYTES per RESEND_WINDOW_S. What is kept to enforce
that is pruned once its window is over and capped (MAX_RESEND_KEYS pairs). A request
never drops the cluster's holding: a cluster that lost the audio gets what it asked
for, reports it delivered, and holds it again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from controller.audio_chain import PROFILE_NAMES
from controller.trust import ClusterKeys, Refused
from protocol import chunks, topics
from protocol.clock import Clock
from protocol.messages import (
    Address,
    ChunkRequest,
    ContentRef,
    Level,
    MessageError,
    PlayBody,
    StopBody,
    parse,
)
from protocol.mqtt import Link
from protocol.ratelimit import LogLimiter
from protocol.signing import Signer

log = logging.getLogger(__name__)

#: A (cluster, content) gets its asked-for chunks again at most once in this (seconds);
#: an agent asks again every 10 s while nothing arrives.
RESEND_INTERVAL_S = 30.0
#: The window of the byte budgets below (seconds).
RESEND_WINDOW_S = 3600.0
#: A (cluster, content) gets at most this many times the content's size per window.
RESEND_FACTOR = 3
#: A cluster gets at most this many bytes of resent chunks per window.
MAX_CLUSTER_RESEND_BYTES = 64 * 1024 * 1024
#: Most (cluster, content) pairs whose resends are counted; new pairs beyond it wait.
MAX_RESEND_KEYS = 10_000


@dataclass
class _Resent:
    """Resends within the current window: to a (cluster, content), or to a cluster."""

    window_start: float
    last_at: float
    sent_bytes: int = 0

STOP_TTL = timedelta(minutes=10)
# A play command stays valid a little past its latest start, for agents that reconnect.
PLAY_TTL_MARGIN = timedelta(minutes=5)


def play_ttl(body: PlayBody, now: datetime) -> timedelta:
    """How long a play command signed now stays valid. A scheduled play: a margin past its
    latest start (an agent that gets it then reports it missed, by the lateness rule). An
    urgent one expires at its latest start (the controller's `urgent_expiry` after it was
    sent): an agent that gets it later reports it `expired` and plays nothing."""
    margin = timedelta(0) if body.urgent else PLAY_TTL_MARGIN
    return max(body.latest_start - now, timedelta(0)) + margin


class Audio(Protocol):
    """Prepared audio as the audio library hands it out."""

    @property
    def sha256(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def duration_s(self) -> float: ...
    def content_ref(self) -> ContentRef: ...


class FleetView(Protocol):
    def cover(self, cluster_ids: Sequence[str]) -> tuple[list[str], list[str]]: ...
    def groups_of(self, cluster_id: str) -> list[str]: ...
    def clusters_in(self, node_id: str) -> list[str]: ...


class HoldingsView(Protocol):
    """What the distributor needs from controller.holdings.Holdings."""

    def held_by(
        self, sha256s: Collection[str], clusters: Collection[str]
    ) -> dict[str, set[str]]: ...


class PlayRecorder(Protocol):
    """Where sent plays are kept (controller.store.plays.PlayRepository)."""

    def record(
        self,
        *,
        play_id: str,
        programme: str | None,
        bulletin: str,
        level: str,
        start_at: datetime,
        latest_start: datetime,
        duration_s: float,
        items: list[str],
        cluster_ids: list[str],
        urgent: bool,
        sent_at: datetime,
        body: str | None = None,
    ) -> None: ...



class DeliveryTracker(Protocol):
    """What the distributor tells controller.confirmations.Confirmations."""

    def expect(
        self, play_id: str, cluster_ids: Collection[str], latest_start: datetime,
        command_id: str, now: datetime,
    ) -> None: ...

    def withdraw(self, play_id: str | None, cluster_ids: Collection[str], now: datetime) -> int: ...


@dataclass(frozen=True)
class PlaySpec:
    play_id: str
    bulletin: str
    level: Level
    start_at: datetime
    latest_start: datetime
    items: Sequence[Audio]
    clusters: Sequence[str]
    programme: str | None = None
    volume: int | None = None
    urgent: bool = False
    replay_if_interrupted: bool = False

    @property
    def duration_s(self) -> float:
        return sum(item.duration_s for item in self.items)


def new_play_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


#: Between a play's id and the audio profile of one part of it (see per_profile).
PROFILE_MARK = "+"


def per_profile(
    spec: PlaySpec,
    by_profile: Mapping[str, Sequence[str]],
    items: Mapping[str, Sequence[Audio]],
) -> list[PlaySpec]:
    """The play, split by the audio profile of its clusters.

    by_profile: {profile: clusters} (controller.fleet.Fleet.by_profile); items: the audio
    prepared for each of those profiles. When every cluster shares one profile, this is
    the play itself with that profile's audio. Otherwise each profile's clusters get a
    play of their own, whose id is the play's with PROFILE_MARK and the profile
    (`play_ids`): confirmations, resends, stops and reports all go by play id, and a play
    names one audio for every cluster it reaches.
    """
    if not by_profile:
        raise ValueError(f"play {spec.play_id} targets no cluster")
    split = len(by_profile) > 1
    return [
        dataclasses.replace(
            spec,
            play_id=f"{spec.play_id}{PROFILE_MARK}{profile}" if split else spec.play_id,
            items=list(items[profile]),
            clusters=list(clusters),
        )
        for profile, clusters in by_profile.items()
    ]


def play_ids(play_id: str) -> list[str]:
    """Every id a play sent through per_profile may have gone out under: its own, or its
    own with each audio profile."""
    return [play_id, *(f"{play_id}{PROFILE_MARK}{profile}" for profile in PROFILE_NAMES)]


def sent_as(
    play_id: str, clusters_of: Callable[[str], Sequence[str]]
) -> list[tuple[str, list[str]]]:
    """The plays a play went out as, with their clusters: itself, or one per audio profile
    (per_profile). clusters_of: a play's clusters as recorded (none: never sent)."""
    found = []
    for each in play_ids(play_id):
        clusters = list(clusters_of(each))
        if clusters:
            found.append((each, clusters))
    return found


@dataclass
class DistributionStats:
    commands: int = 0
    resent_commands: int = 0  # plays sent again to a cluster that had not confirmed them
    chunks: int = 0
    chunk_bytes: int = 0
    resent_chunks: int = 0
    resent_bytes: int = 0
    # Chunk requests not answered: invalid, from a cluster not in the fleet, for content
    # not held, or within RESEND_INTERVAL_S of the last resend of the same pair.
    requests_refused: int = 0
    # Items not sent to a destination because every targeted cluster there held them.
    held_items: int = 0
    # Items sent to single clusters' own topics instead of their group's.
    own_topic_items: int = 0


class Distributor:
    def __init__(
        self,
        link: Link,
        signer: Signer,
        recorder: PlayRecorder,
        fleet: Callable[[], FleetView],
        clock: Clock,
        content_path: Callable[[str], Path | None],
        *,
        chunk_size: int = chunks.DEFAULT_CHUNK_SIZE,
        holdings: HoldingsView | None = None,
        own_topics_below: float = 0.5,
        tracker: DeliveryTracker | None = None,
        known: Callable[[str], bool] | None = None,
        resend_interval_s: float = RESEND_INTERVAL_S,
        max_resend_keys: int = MAX_RESEND_KEYS,
        monotonic: Callable[[], float] = time.monotonic,
        keys: ClusterKeys,
    ) -> None:
        """holdings: what each cluster holds (None: send every item to every destination).
        own_topics_below: when fewer than this share of a group's targeted clusters lack
        an item, send it to their own content topics rather than to the whole group.
        tracker: told of every play once it is published, and of every stop, so that
        what a cluster does not confirm is sent again (controller/confirmations.py).
        known(cluster): whether the fleet names it (None: any cluster may ask for chunks).
        resend_interval_s, max_resend_keys: the bounds on resends (module docstring).
        keys: the registered key of each cluster: only chunk requests it signed are
        answered."""
        self._keys = keys
        self._known = known
        self._resend_interval_s = resend_interval_s
        self._max_resend_keys = max_resend_keys
        self._monotonic = monotonic
        self._refusals = LogLimiter(log)
        self._link = link
        self._tracker = tracker
        self._holdings = holdings
        self._own_topics_below = own_topics_below
        self._signer = signer
        self._recorder = recorder
        self._fleet = fleet
        self._clock = clock
        self._content_path = content_path
        self._chunk_size = chunk_size
        self._resend_lock = threading.Lock()
        # (cluster, sha256) -> its resends in this window, and the same per cluster;
        # oldest window first
        self._resent: OrderedDict[tuple[str, str], _Resent] = OrderedDict()
        self._resent_to: OrderedDict[str, _Resent] = OrderedDict()
        self.stats = DistributionStats()

    def start(self) -> None:
        self._link.subscribe(topics.all_clusters("request"), self._on_request)

    # --- plays ------------------------------------------------------------------------------

    def send_play(self, spec: PlaySpec) -> Address:
        """Publish the signed play command, then its audio, to every targeted cluster."""
        if not spec.clusters:
            raise ValueError(f"play {spec.play_id} targets no cluster")
        now = self._clock.now()
        fleet = self._fleet()
        groups, leftovers = fleet.cover(list(spec.clusters))
        to = Address(groups=groups, clusters=leftovers)
        body = PlayBody(
            play_id=spec.play_id,
            bulletin=spec.bulletin,
            programme=spec.programme,
            level=spec.level,
            start_at=spec.start_at,
            latest_start=spec.latest_start,
            items=[item.content_ref() for item in spec.items],
            volume=spec.volume,
            replay_if_interrupted=spec.replay_if_interrupted,
            urgent=spec.urgent,
        )
        cmd = self._signer.command(body, to, now, play_ttl(body, now))
        payload = cmd.to_json()
        destinations = [("group", g) for g in groups] + [("cluster", c) for c in leftovers]
        self._recorder.record(
            play_id=spec.play_id, programme=spec.programme, bulletin=spec.bulletin,
            level=spec.level, start_at=spec.start_at, latest_start=spec.latest_start,
            duration_s=spec.duration_s, items=[i.sha256 for i in spec.items],
            cluster_ids=sorted(spec.clusters), urgent=spec.urgent, sent_at=now,
            body=body.model_dump_json(),
        )
        for scope, name in destinations:
            self._link.publish(self._topic(scope, name, "command"), payload)
            self.stats.commands += 1
        held = (
            self._holdings.held_by({i.sha256 for i in spec.items}, spec.clusters)
            if self._holdings is not None else {}
        )
        for item in spec.items:
            content_topics = self._content_topics(
                fleet, destinations, set(spec.clusters), held.get(item.sha256, set())
            )
            if content_topics:
                data = item.path.read_bytes()
                for topic in content_topics:
                    self._publish_chunks(topic, data)
        if self._tracker is not None:  # after the audio: nothing holds up an announcement
            self._tracker.expect(spec.play_id, spec.clusters, spec.latest_start, cmd.id, now)
        log.info(
            "sent %s %r (%s) to %d clusters via %d groups and %d single clusters, start %s",
            spec.play_id, spec.bulletin, spec.level, len(spec.clusters), len(groups),
            len(leftovers), spec.start_at.isoformat(timespec="seconds"),
        )
        return to

    def resend_play(self, cluster: str, body_json: str) -> str | None:
        """Send a play again to one cluster that has not confirmed it, on its own command
        topic: a new command (new id, signed now, addressed to that cluster alone) with the
        same body and play id, so an agent that has it answers `received` again and plays
        it once. The audio is not pushed: the agent asks for exactly the chunks it lacks.
        Returns the new command's id (None: the stored play is unreadable)."""
        try:
            body = PlayBody.model_validate_json(body_json)
        except ValueError as exc:
            log.warning("stored play body for %s is unreadable (%s); not sent again", cluster,
                        exc)
            return None
        now = self._clock.now()
        cmd = self._signer.command(body, Address(clusters=[cluster]), now, play_ttl(body, now))
        self._link.publish(topics.cluster_topic(cluster, "command"), cmd.to_json())
        self.stats.commands += 1
        self.stats.resent_commands += 1
        return cmd.id

    def send_stop(self, play_id: str | None, cluster_ids: Sequence[str]) -> None:
        """Tell these clusters to stop a play now (or everything, with play_id None)."""
        if not cluster_ids:
            return
        now = self._clock.now()
        if self._tracker is not None:  # not sent again to those that never confirmed it
            self._tracker.withdraw(play_id, cluster_ids, now)
        groups, leftovers = self._fleet().cover(list(cluster_ids))
        to = Address(groups=groups, clusters=leftovers)
        cmd = self._signer.command(StopBody(play_id=play_id), to, now, STOP_TTL)
        payload = cmd.to_json()
        for g in groups:
            self._link.publish(topics.group_topic(g, "command"), payload)
        for c in leftovers:
            self._link.publish(topics.cluster_topic(c, "command"), payload)
        self.stats.commands += len(groups) + len(leftovers)
        log.info("sent stop for %s to %d clusters", play_id or "everything", len(cluster_ids))

    # --- helpers ----------------------------------------------------------------------------

    def _content_topics(
        self,
        fleet: FleetView,
        destinations: Sequence[tuple[str, str]],
        targets: set[str],
        holders: set[str],
    ) -> list[str]:
        """The content topics one item goes to: none where every targeted cluster holds
        it, the lacking clusters' own topics where only a few lack it, else the group's."""
        out: list[str] = []
        for scope, name in destinations:
            members = (
                [c for c in fleet.clusters_in(name) if c in targets]
                if scope == "group" else [name]
            )
            lacking = [c for c in members if c not in holders]
            if not lacking:
                self.stats.held_items += 1
            elif scope == "group" and len(lacking) < len(members) * self._own_topics_below:
                out.extend(topics.cluster_topic(c, "content") for c in lacking)
                self.stats.own_topic_items += len(lacking)
            else:
                out.append(self._topic(scope, name, "content"))
        return out

    @staticmethod
    def _topic(scope: str, name: str, channel: topics.GroupChannel) -> str:
        if scope == "group":
            return topics.group_topic(name, channel)
        return topics.cluster_topic(name, channel)

    def _publish_chunks(self, topic: str, data: bytes, only: set[int] | None = None) -> int:
        """Publish the chunks of data (only these indexes, if given); the bytes sent."""
        sent = 0
        for index, frame in enumerate(chunks.split(data, self._chunk_size)):
            if only is not None and index not in only:
                continue
            self._link.publish(topic, frame)
            self.stats.chunks += 1
            self.stats.chunk_bytes += len(frame)
            sent += len(frame)
        return sent

    def resend_state_size(self) -> int:
        """(cluster, content) pairs and clusters whose resends are counted (bounded)."""
        with self._resend_lock:
            return len(self._resent) + len(self._resent_to)

    def _refuse_request(self, kind: str, topic: str, reason: object) -> None:
        self.stats.requests_refused += 1
        self._refusals.warning(kind, "did not answer %s on %s: %s", kind, topic, reason)

    def _on_request(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse(topic)
        if parsed is None or parsed.scope != "cluster":
            self._refuse_request("a chunk request on a topic that names no cluster", topic,
                                 "not a Loa topic")
            return
        if self._known is not None and not self._known(parsed.name):
            self._refuse_request("a chunk request from a cluster not in the fleet", topic,
                                 f"cluster {parsed.name} is not in the fleet")
            return
        try:  # only what the cluster's registered key signed (controller/trust.py)
            opened = self._keys.open(parsed.name, "request", payload)
            req = parse(ChunkRequest, opened.body)
        except Refused:  # logged, rate-limited, by the check
            self.stats.requests_refused += 1
            return
        except MessageError as exc:
            self._refuse_request("an invalid chunk request", topic, exc)
            return
        if parsed.name != req.cluster:
            self._refuse_request("a chunk request on another cluster's topic", topic,
                                 f"it claims cluster {req.cluster}")
            return
        path = self._content_path(req.sha256)
        if path is None:
            self._refuse_request(
                "a chunk request for content this controller does not hold", topic,
                f"content {req.sha256[:12]}",
            )
            return
        data = path.read_bytes()
        count = chunks.chunk_count(len(data), self._chunk_size)
        asked = {index for index in req.missing if index < count}
        size = sum(
            min(self._chunk_size, len(data) - i * self._chunk_size) + chunks.HEADER_SIZE
            for i in asked
        )
        whole = len(data) + count * chunks.HEADER_SIZE  # every chunk once, on the wire
        refusal = self._reserve_resend(req.cluster, req.sha256, whole, size)
        if refusal is not None:
            self._refuse_request("a chunk request beyond the resend bounds", topic, refusal)
            return
        sent = self._publish_chunks(topics.cluster_topic(req.cluster, "content"), data, asked)
        self.stats.resent_chunks += len(asked)
        self.stats.resent_bytes += sent
        log.info("resent %d chunks of %s to cluster %s", len(asked), req.sha256[:12],
                 req.cluster)

    def _reserve_resend(
        self, cluster: str, sha256: str, content_size: int, size: int
    ) -> str | None:
        """Count a resend of `size` bytes of this content (`content_size` bytes with every
        chunk's header) to this cluster if the bounds allow it (None); else say why not."""
        now = self._monotonic()
        with self._resend_lock:
            _prune(self._resent, now)
            _prune(self._resent_to, now)
            pair = self._resent.get((cluster, sha256))
            to = self._resent_to.get(cluster)
            if pair is not None and now - pair.last_at < self._resend_interval_s:
                return (
                    f"content {sha256[:12]} was resent to {cluster} {now - pair.last_at:.1f} s "
                    f"ago (at most once per {self._resend_interval_s:g} s)"
                )
            if pair is not None and pair.sent_bytes + size > RESEND_FACTOR * content_size:
                return (
                    f"{cluster} has had {pair.sent_bytes} bytes of content {sha256[:12]} "
                    f"({content_size} bytes) resent within the hour; at most {RESEND_FACTOR} "
                    "times its size"
                )
            if to is not None and to.sent_bytes + size > MAX_CLUSTER_RESEND_BYTES:
                return (
                    f"{cluster} has had {to.sent_bytes} bytes resent within the hour; at most "
                    f"{MAX_CLUSTER_RESEND_BYTES // (1024 * 1024)} MB"
                )
            if pair is None and len(self._resent) >= self._max_resend_keys:
                return f"resends to {len(self._resent)} other (cluster, content) pairs this hour"
            if pair is None:
                pair = self._resent[(cluster, sha256)] = _Resent(now, now)
            if to is None:
                to = self._resent_to[cluster] = _Resent(now, now)
            pair.last_at = to.last_at = now
            pair.sent_bytes += size
            to.sent_bytes += size
        return None


def _prune(kept: OrderedDict[Any, _Resent], now: float) -> None:
    """Drop the counts whose window is over (the oldest windows come first)."""
    while kept:
        oldest, resent = next(iter(kept.items()))
        if now - resent.window_start < RESEND_WINDOW_S:
            return
        del kept[oldest]
