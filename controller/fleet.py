"""The fleet: the administrative tree and the speaker clusters on it (config/fleet.yaml).

The tree is data, because it changes under a running fleet (on 1 July 2025 the
district level was abolished and communes were merged): a province, optional
districts, communes (xã, phường, thị trấn), optional villages (ấp, khu vực, thôn), and
the clusters, each in a commune or in one of its villages.

Every node id and cluster id is one MQTT topic level (protocol.topics.check_id) and
they share one name space, so a target in a playlist is simply "a name": a node id
(every cluster under that node), a cluster id (that cluster), ``tag:<tag>`` (every
cluster carrying the tag), or ``all`` (every cluster of the fleet). A node's tags are
inherited by every cluster under it. A target may also be a node's statistics code
("31399") or a node's or cluster's name as people write it, with or without its marks
and its prefix ("Xã Tân Bình", "xa tan binh", "Tân Bình"); a name that fits several
places is refused with the ids to choose from (`Fleet.lookup`).

Each node may name the voice that speaks typed announcements there (``voice:
mien-nam``, controller.voices); a node without one speaks with its parent's voice, the
province's is the default, and a fleet naming none speaks with ``mien-bac``.

Each cluster has an audio profile (controller.audio_chain: ``horn`` for the outdoor horns,
the default, or ``full-range`` for indoor or full-range speakers), which decides how its
audio is prepared. It is written on any node or cluster (``audio_profile:``) and holds
for everything under it that does not say otherwise: set the province's once, and a
commune's, a village's or a single cluster's where its speakers differ.

The file, nested the way a manager thinks about it::

    province:
      id: tinh-hau-giang
      name: Tỉnh Hậu Giang
      code: "93"
      voice: mien-nam             # espeak-ng's Southern Vietnamese voice
      districts:
        - id: huyen-phung-hiep
          name: Huyện Phụng Hiệp
          tags: [phung-hiep]
          communes:
            - id: xa-tan-binh
              name: Xã Tân Bình
              code: "31399"
              clusters:
                - {id: tan-binh-01, name: Trụ sở UBND xã, lat: 9.79, lon: 105.77}
              villages:
                - id: ap-tan-loi
                  name: Ấp Tân Lợi
                  clusters:
                    - {id: tan-binh-02, name: Ngã ba Tân Lợi}
      communes: []   # communes directly under the province (no district)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from controller.audio_chain import DEFAULT_PROFILE, ProfileName
from controller.folding import exact, fold, without_prefix
from controller.voices import BUILTIN, check_voice_name
from protocol.config_errors import ConfigError, Problem
from protocol.l10n import N_, _
from protocol.topics import check_id
from protocol.validation import suggest, validate
from protocol.yamlload import LocationMap, NodePath, load_yaml

Kind = Literal["province", "district", "commune", "village"]

ALL = "all"  # the target naming every cluster of the fleet; no node may use it as id
TAG_PREFIX = "tag:"


# --- the file's models ------------------------------------------------------------------


def _topic_id(value: str) -> str:
    check_id(value)
    if value == ALL:
        raise ValueError(_("{all!r} is reserved: in targets it means every cluster", all=ALL))
    return value


def _tag(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", value):
        raise ValueError(_(
            "tag {value!r}: use 1-64 lower-case letters, digits, '-' or '_' "
            "(no accents or spaces), e.g. ven-song", value=value,
        ))
    return value


def _code_text(value: Any) -> Any:
    # A statistics code written without quotes arrives as a number; keep it as text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _code(value: str) -> str:
    if not re.fullmatch(r"[0-9]{2,5}", value):
        raise ValueError(_(
            "{value!r} is not a national statistics code: 2 digits for a province, 3 for "
            'a district, 5 for a commune, in quotes, e.g. code: "31399"', value=value,
        ))
    return value


Id = Annotated[str, AfterValidator(_topic_id)]
Tag = Annotated[str, AfterValidator(_tag)]
Code = Annotated[str, BeforeValidator(_code_text), AfterValidator(_code)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
VoiceRef = Annotated[str, AfterValidator(check_voice_name)]


class _Strict(BaseModel):
    # Field docstrings become descriptions in the JSON Schema (editor hover text).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ClusterSpec(_Strict):
    """One speaker cluster (cụm loa): one pole, one receiver box."""

    id: Id
    """Unique in the fleet; the cluster's MQTT name. Letters, digits, '.', '_', '-'."""
    name: Name
    """Where it stands, in Vietnamese, e.g. Chợ Tân Bình."""
    lat: Annotated[float, Field(ge=-90, le=90)] | None = None
    """Latitude in degrees (WGS 84); with lon, or neither."""
    lon: Annotated[float, Field(ge=-180, le=180)] | None = None
    """Longitude in degrees (WGS 84); with lat, or neither."""
    tags: list[Tag] = []
    """Labels playlists can target as tag:<tag>."""
    audio_profile: ProfileName | None = None
    """How its audio is prepared: horn (outdoor horn speakers) or full-range (indoor or
    full-range speakers); left out, the nearest node above decides (horn at the top)."""


class VillageSpec(_Strict):
    """A village (ấp, khu vực, thôn, tổ) inside a commune."""

    id: Id
    """Unique in the fleet (nodes and clusters alike); its MQTT group name."""
    name: Name
    """The full Vietnamese name with its prefix, e.g. Xã Tân Bình."""
    code: Code | None = None
    """The national statistics code, in quotes, e.g. "31399"."""
    tags: list[Tag] = []
    """Labels playlists can target as tag:<tag>; every cluster below inherits them."""
    audio_profile: ProfileName | None = None
    """How audio is prepared for the clusters below: horn (outdoor horn speakers) or
    full-range (indoor or full-range speakers); left out, the node above decides (horn at
    the top)."""
    clusters: list[ClusterSpec] = []
    """The speaker clusters that sit directly here."""


class CommuneSpec(_Strict):
    """A commune, ward or town (xã, phường, thị trấn): one commune radio station."""

    id: Id
    """Unique in the fleet (nodes and clusters alike); its MQTT group name."""
    name: Name
    """The full Vietnamese name with its prefix, e.g. Xã Tân Bình."""
    code: Code | None = None
    """The national statistics code, in quotes, e.g. "31399"."""
    tags: list[Tag] = []
    """Labels playlists can target as tag:<tag>; every cluster below inherits them."""
    voice: VoiceRef | None = None
    """The voice typed announcements are spoken with here (mien-bac, mien-trung, mien-nam,
    or one of speech.voices in the controller config); the parent's if left out."""
    audio_profile: ProfileName | None = None
    """How audio is prepared for the clusters below: horn (outdoor horn speakers) or
    full-range (indoor or full-range speakers); left out, the node above decides (horn at
    the top)."""
    clusters: list[ClusterSpec] = []
    """The speaker clusters that sit directly here."""
    villages: list[VillageSpec] = []
    """Its villages (ấp, khu vực), each with its own clusters."""


class DistrictSpec(_Strict):
    """A district (huyện, thị xã, thành phố thuộc tỉnh); optional since 1 July 2025."""

    id: Id
    """Unique in the fleet (nodes and clusters alike); its MQTT group name."""
    name: Name
    """The full Vietnamese name with its prefix, e.g. Xã Tân Bình."""
    code: Code | None = None
    """The national statistics code, in quotes, e.g. "31399"."""
    tags: list[Tag] = []
    """Labels playlists can target as tag:<tag>; every cluster below inherits them."""
    voice: VoiceRef | None = None
    """The voice typed announcements are spoken with here (mien-bac, mien-trung, mien-nam,
    or one of speech.voices in the controller config); the parent's if left out."""
    audio_profile: ProfileName | None = None
    """How audio is prepared for the clusters below: horn (outdoor horn speakers) or
    full-range (indoor or full-range speakers); left out, the node above decides (horn at
    the top)."""
    communes: list[CommuneSpec] = []
    """The district's communes."""


class ProvinceSpec(_Strict):
    """The province (tỉnh, or thành phố trực thuộc trung ương) this controller serves."""

    id: Id
    """Unique in the fleet (nodes and clusters alike); its MQTT group name."""
    name: Name
    """The full Vietnamese name with its prefix, e.g. Xã Tân Bình."""
    code: Code | None = None
    """The national statistics code, in quotes, e.g. "31399"."""
    tags: list[Tag] = []
    """Labels playlists can target as tag:<tag>; every cluster below inherits them."""
    voice: VoiceRef | None = None
    """The voice typed announcements are spoken with here (mien-bac, mien-trung, mien-nam,
    or one of speech.voices in the controller config); mien-bac if left out."""
    audio_profile: ProfileName | None = None
    """How audio is prepared for the clusters below: horn (outdoor horn speakers) or
    full-range (indoor or full-range speakers); left out, the node above decides (horn at
    the top)."""
    districts: list[DistrictSpec] = []
    """Districts and their communes (before 1 July 2025)."""
    communes: list[CommuneSpec] = []
    """Communes directly under the province (no district)."""


class FleetFile(_Strict):
    """config/fleet.yaml."""

    province: ProvinceSpec
    """The province (or centrally governed city) this controller serves."""


def json_schema() -> dict[str, Any]:
    """JSON Schema of the fleet file, for editors (see controller.playlist.write_schemas)."""
    schema = FleetFile.model_json_schema()
    schema["title"] = "Loa fleet (administrative tree and speaker clusters)"
    return schema


# --- the fleet --------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """A node of the administrative tree. parent is None for the province only."""

    id: str
    name: str
    kind: Kind
    code: str | None
    parent: str | None
    tags: tuple[str, ...] = ()
    voice: str | None = None  # as written on this node; Fleet.node_voice() inherits
    audio_profile: str = DEFAULT_PROFILE  # its own, or the nearest node's above


@dataclass(frozen=True)
class Cluster:
    """A speaker cluster. node: the commune or village it sits in; commune: its commune.

    tags: its own tags and those of every node above it, sorted. audio_profile: its own,
    or the nearest node's above it.
    """

    id: str
    name: str
    node: str
    commune: str
    lat: float | None
    lon: float | None
    tags: tuple[str, ...]
    audio_profile: str = DEFAULT_PROFILE


class UnknownTargetError(KeyError):
    """A target names no node, cluster or tag of the fleet."""

    def __init__(self, target: str, message: str) -> None:
        super().__init__(target)
        self.target = target
        self.message = message

    def __str__(self) -> str:
        return self.message


class AmbiguousTargetError(UnknownTargetError):
    """A target is a name that fits several places."""


class Fleet:
    """The tree and its clusters, with target resolution. Immutable once built."""

    def __init__(self, nodes: dict[str, Node], clusters: dict[str, Cluster]) -> None:
        self.nodes = nodes
        self.clusters = clusters
        provinces = [n for n in nodes.values() if n.parent is None]
        if len(provinces) != 1:
            raise ValueError(
                _("a fleet has exactly one province, not {n}", n=len(provinces))
            )
        self.province = provinces[0]
        self._children: dict[str, list[str]] = {n: [] for n in nodes}
        for n in nodes.values():
            if n.parent is not None:
                self._children[n.parent].append(n.id)
        self._direct: dict[str, list[str]] = {n: [] for n in nodes}
        for c in clusters.values():
            self._direct[c.node].append(c.id)
        self._under: dict[str, frozenset[str]] = {}
        self._collect(self.province.id)
        self._tags: dict[str, frozenset[str]] = {}
        for c in clusters.values():
            for tag in c.tags:
                self._tags[tag] = self._tags.get(tag, frozenset()) | {c.id}
        self._codes = {n.code: n.id for n in nodes.values() if n.code}
        # Names as written (marks kept) and folded (marks dropped), each also without
        # the place's prefix (xã, ấp...), to the ids they may mean.
        self._names: list[dict[str, list[str]]] = [{}, {}, {}, {}]
        for ident, name in [*((n.id, n.name) for n in nodes.values()),
                            *((c.id, c.name) for c in clusters.values())]:
            bare = without_prefix(name)
            keys = [exact(name), bare, fold(name), fold(bare) if bare else None]
            for table, key in zip(self._names, keys, strict=True):
                if key and ident not in table.setdefault(key, []):
                    table[key].append(ident)

    def _collect(self, node_id: str) -> frozenset[str]:
        found = set(self._direct[node_id])
        for child in self._children[node_id]:
            found |= self._collect(child)
        self._under[node_id] = frozenset(found)
        return self._under[node_id]

    # --- lookups ------------------------------------------------------------------------

    def node(self, id: str) -> Node:
        try:
            return self.nodes[id]
        except KeyError:
            raise UnknownTargetError(id, self._unknown(id, N_("node"))) from None

    @property
    def tags(self) -> list[str]:
        """Every tag carried by at least one cluster."""
        return sorted(self._tags)

    def children(self, node_id: str) -> list[str]:
        """The node ids directly under a node, sorted."""
        self.node(node_id)
        return sorted(self._children[node_id])

    def clusters_in(self, node_id: str) -> list[str]:
        """Sorted ids of the clusters under a node; a cluster id names just itself."""
        if node_id in self.clusters:
            return [node_id]
        self.node(node_id)
        return sorted(self._under[node_id])

    def groups_of(self, cluster_id: str) -> list[str]:
        """The node ids above a cluster, nearest first: village?, commune, district?, province."""
        cluster = self._cluster(cluster_id)
        out: list[str] = []
        at: str | None = cluster.node
        while at is not None:
            out.append(at)
            at = self.nodes[at].parent
        return out

    def by_profile(self, cluster_ids: Iterable[str]) -> dict[str, list[str]]:
        """The clusters grouped by audio profile: {profile: sorted cluster ids}, profiles
        sorted by name."""
        found: dict[str, list[str]] = {}
        for cid in sorted(set(cluster_ids)):
            found.setdefault(self._cluster(cid).audio_profile, []).append(cid)
        return dict(sorted(found.items()))

    def commune_of(self, cluster_id: str) -> Node:
        return self.nodes[self._cluster(cluster_id).commune]

    def communes(self) -> list[Node]:
        return sorted((n for n in self.nodes.values() if n.kind == "commune"), key=lambda n: n.id)

    # --- voices -------------------------------------------------------------------------

    def node_voice(self, node_id: str) -> str | None:
        """The voice of a node or cluster: its own, else the nearest one above it."""
        at: str | None = self.clusters[node_id].node if node_id in self.clusters else node_id
        while at is not None:
            node = self.node(at)
            if node.voice:
                return node.voice
            at = node.parent
        return None

    def common_ancestor(self, cluster_ids: Iterable[str]) -> str:
        """The lowest node above every one of these clusters (the province if none)."""
        common: list[str] | None = None
        for cid in cluster_ids:
            chain = list(reversed(self.groups_of(cid)))  # province first
            if common is None:
                common = chain
            else:
                i = 0
                while i < min(len(common), len(chain)) and common[i] == chain[i]:
                    i += 1
                common = common[:i]
        return common[-1] if common else self.province.id

    def voice_for(self, cluster_ids: Iterable[str]) -> str | None:
        """The voice an announcement to these clusters is spoken with.

        One recording goes to every targeted cluster, so one voice speaks it: the
        clusters' own voice when they all have the same, else the voice of their lowest
        common ancestor (a district or the province: the voice that speaks for all of
        them). None: the fleet names no voice there (the speech default applies).
        """
        clusters = list(cluster_ids)
        voices = {self.node_voice(cid) for cid in clusters}
        if len(voices) == 1:
            return voices.pop()
        return self.node_voice(self.common_ancestor(clusters)) if clusters else None

    def _cluster(self, cluster_id: str) -> Cluster:
        try:
            return self.clusters[cluster_id]
        except KeyError:
            raise UnknownTargetError(
                cluster_id, self._unknown(cluster_id, N_("cluster"))
            ) from None

    # --- targets ------------------------------------------------------------------------

    def lookup(self, target: str) -> str:
        """The id (or tag:<tag>, or all) a target means; UnknownTargetError if none,
        AmbiguousTargetError if it is a name that fits several places.

        In turn: all, tag:<tag>, a node or cluster id, a node's statistics code, a name
        as written (case and spacing aside), the same without its prefix (Tân Bình for
        Xã Tân Bình), then both without the marks (xa tan binh); the first that fits
        exactly one place wins.
        """
        if target == ALL or target in self.nodes or target in self.clusters:
            return target
        if target.startswith(TAG_PREFIX):
            tag = target.removeprefix(TAG_PREFIX)
            if tag in self._tags:
                return target
            close = suggest(tag, self._tags)
            hint = _("; did you mean '{tag}'?", tag=f"{TAG_PREFIX}{close}") if close else ""
            raise UnknownTargetError(
                target, _("no cluster carries the tag {tag!r}{hint}", tag=tag, hint=hint)
            )
        written = target.strip()
        if written in self._codes:
            return self._codes[written]
        keys = [exact(written), exact(written), fold(written), fold(written)]
        for table, key in zip(self._names, keys, strict=True):
            found = table.get(key) if key else None
            if found and len(found) == 1:
                return found[0]
            if found:
                raise AmbiguousTargetError(target, self._ambiguous(target, found))
        raise UnknownTargetError(target, self._unknown(target, N_("target")))

    def target_problem(self, target: str) -> str | None:
        """None if target names something in this fleet, else what is wrong with it."""
        try:
            self.lookup(target)
        except UnknownTargetError as exc:
            return exc.message
        return None

    def _where(self, ident: str) -> str:
        """A place's name and what it is in, for telling places of one name apart."""
        if ident in self.clusters:
            cluster = self.clusters[ident]
            return f"{cluster.name}, {self.nodes[cluster.node].name}"
        node = self.nodes[ident]
        parent = self.nodes[node.parent].name if node.parent else ""
        return f"{node.name}, {parent}" if parent else node.name

    def _ambiguous(self, target: str, found: list[str]) -> str:
        places = [f"{ident} ({self._where(ident)})" for ident in sorted(found)]
        choice = ", ".join(places[:-1]) + _(" or ") + places[-1]
        return _(
            "{target!r} fits {n} places; did you mean {choice}? Write its id or "
            "its full name", target=target, n=len(found), choice=choice,
        )

    def _unknown(self, name: str, what: str) -> str:
        pool = list(self.nodes) + list(self.clusters)
        close = suggest(name, pool)
        if close is None:
            folded = self._names[2]
            spoken = suggest(fold(name), folded)
            close = folded[spoken][0] if spoken and len(folded[spoken]) == 1 else None
        if close is not None:
            return _("unknown {what} {name!r}; did you mean {close!r}?", what=_(what),
                     name=name, close=close)
        return _(
            "unknown {what} {name!r}: write a node or cluster id, a statistics code or a "
            "name from the fleet file, '{prefix}<tag>', or '{all}'", what=_(what), name=name,
            prefix=TAG_PREFIX, all=ALL,
        )

    def _expand(self, target: str) -> frozenset[str]:
        target = self.lookup(target)
        if target == ALL:
            return frozenset(self.clusters)
        if target.startswith(TAG_PREFIX):
            return self._tags[target.removeprefix(TAG_PREFIX)]
        if target in self.clusters:
            return frozenset([target])
        return self._under[target]

    def resolve(self, targets: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
        """Sorted ids of the clusters the targets name, less those exclude names.

        Raises UnknownTargetError (a KeyError) for a name the fleet does not know; its
        message suggests the closest known name.
        """
        if isinstance(targets, str):  # one name, not its letters
            targets = [targets]
        if isinstance(exclude, str):
            exclude = [exclude]
        chosen: set[str] = set()
        for target in targets:
            chosen |= self._expand(target)
        for target in exclude:
            chosen -= self._expand(target)
        return sorted(chosen)

    def cover(self, cluster_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Split a set of clusters into whole groups plus leftover clusters.

        Groups are the largest nodes all of whose clusters are in the set (so one
        publish per group replaces one per cluster); clusters under no such node are
        left over. Since the nodes form a tree, taking the largest such nodes gives the
        fewest publishes. A node holding a single cluster is not worth a group: that
        cluster is returned as a leftover instead. Both lists are sorted.
        """
        wanted = set(cluster_ids)
        for cid in wanted:
            self._cluster(cid)
        groups: list[str] = []
        leftovers: list[str] = []
        pending = [self.province.id]
        while pending:
            node_id = pending.pop()
            under = self._under[node_id]
            if not under or under.isdisjoint(wanted):
                continue
            if under <= wanted:
                if len(under) > 1:
                    groups.append(node_id)
                else:
                    leftovers.extend(under)
                continue
            leftovers.extend(c for c in self._direct[node_id] if c in wanted)
            pending.extend(self._children[node_id])
        return sorted(groups), sorted(leftovers)

    def walk(self) -> Iterator[Node]:
        """Every node, parents before children, siblings by id."""
        pending = [self.province.id]
        while pending:
            node = self.nodes[pending.pop(0)]
            yield node
            pending[:0] = sorted(self._children[node.id])


# --- loading ----------------------------------------------------------------------------


class _Builder:
    """Turns a validated FleetFile into nodes and clusters, collecting duplicate ids."""

    def __init__(self, locations: LocationMap, voices: Iterable[str]) -> None:
        self.locations = locations
        self.voices = sorted(voices)
        self.nodes: dict[str, Node] = {}
        self.clusters: dict[str, Cluster] = {}
        self.seen: dict[str, NodePath] = {}
        self.problems: list[Problem] = []

    def _claim(self, ident: str, path: NodePath) -> bool:
        first = self.seen.get(ident)
        if first is not None:
            line = self.locations.value((*first, "id")).line
            self.problems.append(
                self.locations.problem(
                    (*path, "id"),
                    _("id {ident!r} is already used at line {line}; every node and cluster "
                      "needs its own id", ident=ident, line=line),
                )
            )
            return False
        self.seen[ident] = path
        return True

    def node(
        self,
        spec: ProvinceSpec | DistrictSpec | CommuneSpec | VillageSpec,
        kind: Kind,
        parent: Node | None,
        path: NodePath,
    ) -> Node | None:
        if not self._claim(spec.id, path):
            return None
        inherited = parent.tags if parent else ()
        voice = getattr(spec, "voice", None)
        if voice is not None and voice not in self.voices:
            close = suggest(voice, self.voices)
            hint = _("did you mean {close!r}? ", close=close) if close else ""
            self.problems.append(self.locations.problem(
                (*path, "voice"),
                _("no voice {voice!r}: {hint}write one of {voices}, or define "
                  "it under speech.voices in the controller config", voice=voice, hint=hint,
                  voices=", ".join(self.voices)),
            ))
        above = parent.audio_profile if parent else DEFAULT_PROFILE
        node = Node(
            id=spec.id,
            name=spec.name,
            kind=kind,
            code=spec.code,
            parent=parent.id if parent else None,
            tags=tuple(sorted({*inherited, *spec.tags})),
            voice=voice,
            audio_profile=spec.audio_profile or above,
        )
        self.nodes[node.id] = node
        return node

    def cluster(self, spec: ClusterSpec, at: Node, commune: Node, path: NodePath) -> None:
        if (spec.lat is None) != (spec.lon is None):
            self.problems.append(
                self.locations.problem(path, _("write both lat and lon, or neither"))
            )
        if not self._claim(spec.id, path):
            return
        self.clusters[spec.id] = Cluster(
            id=spec.id,
            name=spec.name,
            node=at.id,
            commune=commune.id,
            lat=spec.lat,
            lon=spec.lon,
            tags=tuple(sorted({*at.tags, *spec.tags})),
            audio_profile=spec.audio_profile or at.audio_profile,
        )

    def commune(self, spec: CommuneSpec, parent: Node, path: NodePath) -> None:
        commune = self.node(spec, "commune", parent, path)
        if commune is None:
            return
        for i, c in enumerate(spec.clusters):
            self.cluster(c, commune, commune, (*path, "clusters", i))
        for i, v in enumerate(spec.villages):
            vpath = (*path, "villages", i)
            village = self.node(v, "village", commune, vpath)
            if village is None:
                continue
            for j, c in enumerate(v.clusters):
                self.cluster(c, village, commune, (*vpath, "clusters", j))

    def province(self, spec: ProvinceSpec) -> None:
        root = ("province",)
        province = self.node(spec, "province", None, root)
        assert province is not None  # the first id is never a duplicate
        for i, d in enumerate(spec.districts):
            dpath = (*root, "districts", i)
            district = self.node(d, "district", province, dpath)
            if district is None:
                continue
            for j, c in enumerate(d.communes):
                self.commune(c, district, (*dpath, "communes", j))
        for i, c in enumerate(spec.communes):
            self.commune(c, province, (*root, "communes", i))
        if not spec.districts and not spec.communes:
            self.problems.append(
                self.locations.problem(
                    root, _("the province has no communes: add `communes:` or `districts:`")
                )
            )


def load_fleet(path: Path, voices: Iterable[str] | None = None) -> Fleet:
    """Load and check a fleet file; raise ConfigError listing every problem.

    voices: the voice names a node may name (the built-in ones if not given; pass the
    controller config's, controller.voices.catalogue, when it defines more).
    """
    data, locations = load_yaml(path)
    spec = validate(FleetFile, data, locations)
    if isinstance(spec, list):
        raise ConfigError(spec)
    builder = _Builder(locations, BUILTIN if voices is None else voices)
    builder.province(spec.province)
    if builder.problems:
        raise ConfigError(builder.problems)
    return Fleet(builder.nodes, builder.clusters)
