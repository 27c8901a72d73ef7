"""The fleet as the web app shows it: every cluster's state, health and place, and a map.

What `loa-controller fleet` prints, per cluster, in one record (`ClusterView`): commune,
online or offline since when (and why, when the controller decided it), last seen, what
it plays, the content its plays still to start need and what it holds or is
downloading, relay, free disk, temperature, clock offset (all from its latest
heartbeat), and the last command it refused. Coordinates come from the fleet file.

`plain_map` draws the clusters from their coordinates alone, as an SVG on the server:
a commune is the hull of its clusters, a cluster a dot coloured by its state. It needs
no tile server and no network, so it works where the controller has no internet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller.fleet import Fleet
from controller.holdings import Holdings, content_view, describe_content
from controller.store import Store

STATES = ("online", "offline", "unknown")


@dataclass(frozen=True)
class ClusterView:
    id: str
    name: str
    commune: str
    commune_name: str
    state: str  # online | offline | unknown (never heard from)
    state_since: datetime | None
    state_reason: str | None
    last_seen: datetime | None
    playing: str | None
    content: str  # "3/3 held, 1 downloading 40%", or "-"
    downloading: int
    relay: str | None
    disk_free_gb: float | None
    temp_c: float | None
    clock_offset_s: float | None
    heartbeat_at: datetime | None
    last_rejection: str | None
    last_rejection_at: datetime | None
    last_result: str | None
    lat: float | None
    lon: float | None


def _number(beat: dict[str, Any] | None, key: str) -> float | None:
    value = (beat or {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def fleet_view(
    store: Store, fleet: Fleet, now: datetime, only: Iterable[str] | None = None
) -> list[ClusterView]:
    """Every cluster of the fleet the store knows (only: these), by commune and id."""
    wanted = set(only) if only is not None else None
    rows = [r for r in store.clusters.fleet_rows() if wanted is None or r.id in wanted]
    health = store.clusters.health()
    held = Holdings(store).content_status(now)
    out = []
    for r in rows:
        found = health.get(r.id)
        beat = found.heartbeat if found else None
        content = content_view(held.get(r.id), beat)
        spec = fleet.clusters.get(r.id)
        result = None
        if r.last_result:
            result = f"{r.last_result}: {r.last_result_bulletin or '?'}"
            if r.last_result_reason and r.last_result != "finished":
                result += f" ({r.last_result_reason})"
        disk = _number(beat, "disk_free_bytes")
        out.append(ClusterView(
            id=r.id, name=r.name, commune=r.commune, commune_name=r.commune_name,
            state=r.state if r.state in STATES else "unknown",
            state_since=found.state_at if found else None,
            state_reason=found.state_reason if found and r.state == "offline" else None,
            last_seen=r.last_seen, playing=r.playing, content=describe_content(content),
            downloading=len(content["transfers"]),
            relay=str(beat["relay"]) if beat and beat.get("relay") is not None else None,
            disk_free_gb=disk / 1e9 if disk is not None else None,
            temp_c=_number(beat, "cpu_temp_c"),
            clock_offset_s=_number(beat, "clock_offset_s"),
            heartbeat_at=found.heartbeat_at if found else None,
            last_rejection=r.last_rejection, last_rejection_at=r.last_rejection_at,
            last_result=result,
            lat=spec.lat if spec else None, lon=spec.lon if spec else None,
        ))
    return out


# --- the plain map ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dot:
    cluster: ClusterView
    x: float
    y: float


@dataclass(frozen=True)
class Area:
    commune: str
    name: str
    points: str  # an SVG polygon's points
    label_x: float
    label_y: float


@dataclass
class PlainMap:
    width: int
    height: int
    dots: list[Dot] = field(default_factory=list)
    areas: list[Area] = field(default_factory=list)
    unplaced: list[ClusterView] = field(default_factory=list)  # no coordinates


def _hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The convex hull (Andrew's monotone chain), counter-clockwise."""
    pts = sorted(set(points))
    if len(pts) <= 2:  # a point or a segment is its own hull
        return pts

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def _around(points: Sequence[tuple[float, float]], pad: float) -> list[tuple[float, float]]:
    """A commune's outline: its clusters' hull, grown by pad (a circle of 8 points around
    each cluster first, so one or two clusters make an area too)."""
    ring = [
        (x + pad * math.cos(k * math.pi / 4), y + pad * math.sin(k * math.pi / 4))
        for x, y in points for k in range(8)
    ]
    return _hull(ring)


def plain_map(clusters: Sequence[ClusterView], width: int = 640, height: int = 480,
              margin: int = 30) -> PlainMap:
    """The clusters placed by their coordinates (equirectangular, scaled to fit)."""
    placed = [c for c in clusters if c.lat is not None and c.lon is not None]
    result = PlainMap(width, height, unplaced=[c for c in clusters if c not in placed])
    if not placed:
        return result
    lats = [c.lat for c in placed if c.lat is not None]
    lons = [c.lon for c in placed if c.lon is not None]
    squeeze = math.cos(math.radians(sum(lats) / len(lats)))
    span_x = max((max(lons) - min(lons)) * squeeze, 1e-6)
    span_y = max(max(lats) - min(lats), 1e-6)
    scale = min((width - 2 * margin) / span_x, (height - 2 * margin) / span_y)
    left = (width - span_x * scale) / 2
    top = (height - span_y * scale) / 2

    def xy(lat: float, lon: float) -> tuple[float, float]:
        return (left + (lon - min(lons)) * squeeze * scale,
                top + (max(lats) - lat) * scale)

    by_commune: dict[str, list[tuple[float, float]]] = {}
    names: dict[str, str] = {}
    for c in placed:
        x, y = xy(c.lat or 0.0, c.lon or 0.0)  # placed: both are set
        result.dots.append(Dot(c, round(x, 1), round(y, 1)))
        by_commune.setdefault(c.commune, []).append((x, y))
        names[c.commune] = c.commune_name
    for commune, points in by_commune.items():
        outline = _around(points, 12)
        cx = sum(p[0] for p in points) / len(points)
        cy = min(p[1] for p in points) - 16
        result.areas.append(Area(
            commune, names[commune], " ".join(f"{x:.1f},{y:.1f}" for x, y in outline),
            round(cx, 1), round(max(cy, 10), 1),
        ))
    return result
