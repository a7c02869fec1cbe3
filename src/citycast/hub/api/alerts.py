"""Alerts raised by the monitor (site offline, underruns, sync error, rejected frames)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from citycast.hub.api.deps import Ctx, Viewer, utc
from citycast.hub.api.schemas import AUTH_ERRORS, AlertOut
from citycast.hub.context import HubContext
from citycast.hub.db.models import Alert, Site

router = APIRouter(tags=["alerts"], responses=AUTH_ERRORS)


def load_alerts(ctx: HubContext, active: bool | None, limit: int = 200) -> list[AlertOut]:
    with ctx.db.session() as s:
        q = select(Alert, Site.name).outerjoin(Site, Alert.site_id == Site.id)
        if active is True:
            q = q.where(Alert.cleared_at.is_(None))
        elif active is False:
            q = q.where(Alert.cleared_at.is_not(None))
        rows = s.execute(q.order_by(Alert.raised_at.desc(), Alert.id.desc()).limit(limit)).all()
        return [
            AlertOut(
                id=a.id,
                site=name,
                kind=a.kind,
                severity=a.severity,
                message=a.message,
                raised_at=utc(a.raised_at) or a.raised_at,
                cleared_at=utc(a.cleared_at),
            )
            for a, name in rows
        ]


@router.get("/api/alerts", response_model=list[AlertOut])
async def list_alerts(
    _: Viewer,
    ctx: Ctx,
    active: Annotated[bool | None, Query(description="true: open alerts only; false: cleared only")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[AlertOut]:
    return load_alerts(ctx, active, limit)
