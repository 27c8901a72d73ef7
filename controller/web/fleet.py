"""The fleet pages: every cluster of the user's part of the fleet, and each cluster's page.

/fleet lists the clusters with their state and health (controller.fleet_view), filtered
by commune and state with a plain GET form (no script needed), above a map drawn from
the clusters' coordinates on the server (controller.fleet_view.plain_map: no tiles, no
network). /fleet/<cluster> shows one cluster and its latest events. Anyone signed in
sees the clusters of their own scope; others are not found.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from controller.fleet_view import STATES, fleet_view, plain_map
from controller.web.pages import Ctx, SignedIn, _error, _render

router = APIRouter(include_in_schema=False)
EVENTS_SHOWN = 50


@router.get("/fleet")
def fleet_page(request: Request, ctx: Ctx, found: SignedIn) -> Response:
    reach = ctx.service.reach(found[1])
    clusters = fleet_view(ctx.service.store, ctx.service.fleet(), datetime.now(UTC), reach)
    communes = sorted({(c.commune, c.commune_name) for c in clusters}, key=lambda c: c[1])
    commune = request.query_params.get("commune") or ""
    state = request.query_params.get("state") or ""
    shown = [
        c for c in clusters
        if (not commune or c.commune == commune) and (not state or c.state == state)
    ]
    counts = {s: sum(1 for c in clusters if c.state == s) for s in STATES}
    return _render(
        request, "fleet.html", found, clusters=shown, all_count=len(clusters),
        communes=communes, commune=commune, state=state, states=STATES, counts=counts,
        map=plain_map(shown), map_tiles=ctx.map_tiles, map_attribution=ctx.map_attribution,
    )


@router.get("/fleet/{cluster_id}")
def cluster_page(request: Request, ctx: Ctx, found: SignedIn, cluster_id: str) -> Response:
    if cluster_id not in ctx.service.reach(found[1]):
        return _error(request, found, 404, "not_found")
    views = fleet_view(ctx.service.store, ctx.service.fleet(), datetime.now(UTC), [cluster_id])
    if not views:
        return _error(request, found, 404, "not_found")
    cluster = views[0]
    events = ctx.service.store.history.recent_events(cluster_id, EVENTS_SHOWN)
    return _render(request, "cluster.html", found, c=cluster, events=events)
