"""The fleet at a glance, and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

from citycast.hub.api.deps import Ctx, Viewer
from citycast.hub.api.exposure import require_metrics_reader
from citycast.hub.api.schemas import ErrorOut, FleetOut
from citycast.hub.db.models import Site
from citycast.hub.fleet import STATES
from citycast.hub.metrics import render_metrics

router = APIRouter(tags=["fleet"])


@router.get("/api/fleet", response_model=FleetOut, responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}})
async def fleet_summary(_: Viewer, ctx: Ctx) -> FleetOut:
    with ctx.db.session() as s:
        total = int(s.scalar(select(func.count()).select_from(Site)) or 0)
        names = set(s.scalars(select(Site.name)))
    by_state = dict.fromkeys(STATES, 0)
    known = 0
    for name in names:
        view = ctx.fleet.site(name)
        if view is not None:
            by_state[str(view["state"])] = by_state.get(str(view["state"]), 0) + 1
            known += 1
    by_state["offline"] += total - known  # created or enrolled, never heard from
    return FleetOut(
        by_state=by_state, sites_total=total, on_air=ctx.addresses.live(), sites_reached=ctx.addresses.sites_reached()
    )


@router.get(
    "/metrics",
    response_class=Response,
    tags=["metrics"],
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        401: {"model": ErrorOut, "description": "Not logged in and no scrape token (unless --public-metrics)"},
    },
    dependencies=[Depends(require_metrics_reader)],
)
async def metrics(ctx: Ctx) -> Response:
    return Response(
        render_metrics(
            ctx.fleet,
            ctx.telemetry_counters,
            sites_reached=ctx.addresses.sites_reached,
            sip=ctx.sip_counters,
            insecure=ctx.insecure,
        ),
        media_type=CONTENT_TYPE_LATEST,
    )
