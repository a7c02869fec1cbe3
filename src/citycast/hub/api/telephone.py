"""The telephone at a glance: where speakers call, who is on, whether the trunk (the public number) is registered."""

from __future__ import annotations

from fastapi import APIRouter

from citycast.hub.api.deps import Ctx, Viewer
from citycast.hub.api.schemas import AUTH_ERRORS, TelephoneOut

router = APIRouter(tags=["telephone"], responses=AUTH_ERRORS)


@router.get("/api/telephone", response_model=TelephoneOut)
async def telephone_status(_: Viewer, ctx: Ctx) -> TelephoneOut:
    if ctx.telephone_status is None:
        return TelephoneOut(enabled=False)
    return TelephoneOut(enabled=True, **ctx.telephone_status())
