"""The console's "Go live" page: a speaker sends a WebRTC offer with their PIN and goes on air from the browser.

The `GoLive` service is made on first use around the hub's address manager and kept on the app (the runtime
may instead put one there at start, `app.state.golive`, to close its sessions at shutdown); a session's media
runs on the address manager's media plane when it has one. Its PIN guard is the
app's (`app.state.pin_guard`), the one the PINs page unlocks. The PIN's source is `remote_of(request)`: the peer's
address, or the X-Forwarded-For of a trusted proxy (uvicorn's `forwarded_allow_ips`), never a header from anyone
else.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from citycast.hub.api.deps import Ctx, Speaker, record, remote_of
from citycast.hub.api.pins import pin_guard_of
from citycast.hub.api.schemas import AUTH_ERRORS, ErrorOut, Strict
from citycast.hub.golive import GoLive, GoLiveError

router = APIRouter(tags=["golive"], responses=AUTH_ERRORS)


class OfferIn(Strict):
    sdp: Annotated[str, Field(min_length=1, max_length=64_000, description="The browser's SDP offer")]
    type: Annotated[str, Field(pattern="^offer$", description='Always "offer"')] = "offer"
    pin: Annotated[str, Field(min_length=1, max_length=64, description="The speaker's PIN")]
    title: Annotated[str | None, Field(default=None, max_length=200)] = None


class AnswerOut(BaseModel):
    sdp: str
    type: str
    address_id: int
    sites_reached: int
    message: str = Field(description='"Live to N sites"')


class StatusOut(BaseModel):
    live: bool
    on_air: bool = Field(description="Live and the browser's audio is arriving")
    address_id: int | None
    title: str | None
    sites_reached: int
    level_dbfs: float = Field(description="RMS of what went on air over the last 200 ms")
    connection: str
    ended_reason: str | None
    underruns: int


class StopOut(BaseModel):
    stopped: bool
    address_id: int | None


def golive_of(request: Request, ctx: Ctx) -> GoLive:
    service: GoLive | None = getattr(request.app.state, "golive", None)
    if service is None:
        addresses: Any = ctx.addresses
        if not all(hasattr(addresses, a) for a in ("nc", "signer", "subjects", "channel_of", "get")):
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this hub cannot take live audio from a browser")
        service = GoLive(
            addresses,
            ctx.db,
            ctx.fleet,
            publish=ctx.events.publish,
            guard=pin_guard_of(request),
            media=getattr(addresses, "media", None),  # the address manager's media plane, if it has one
        )
        request.app.state.golive = service
    return service


def _sites(n: int) -> str:
    return f"live to {n} site{'s' if n != 1 else ''}"


@router.post(
    "/api/golive/offer",
    response_model=AnswerOut,
    responses={
        400: {"model": ErrorOut},
        409: {"model": ErrorOut},
        429: {"model": ErrorOut},
        503: {"model": ErrorOut},
    },
)
async def offer(body: OfferIn, request: Request, user: Speaker, ctx: Ctx) -> AnswerOut:
    service = golive_of(request, ctx)
    remote = remote_of(request)
    try:
        answer, session = await service.offer(
            user_id=user.id,
            username=user.username,
            sdp=body.sdp,
            sdp_type=body.type,
            pin=body.pin,
            title=body.title,
            remote=remote,
        )
    except GoLiveError as e:
        headers = {"Retry-After": str(math.ceil(e.retry_after))} if e.retry_after else None
        raise HTTPException(e.status, e.message, headers) from None
    assert session.address_id is not None
    with ctx.db.session() as s:
        record(s, request, user, "golive.start", f"address:{session.address_id}", {"title": session.title})
    return AnswerOut(
        sdp=answer.sdp,
        type=answer.type,
        address_id=session.address_id,
        sites_reached=session.sites,
        message=_sites(session.sites).capitalize(),
    )


@router.get("/api/golive/status", response_model=StatusOut)
async def golive_status(request: Request, user: Speaker, ctx: Ctx) -> StatusOut:
    return StatusOut(**golive_of(request, ctx).status(user.id))


@router.post("/api/golive/stop", response_model=StopOut)
async def stop(request: Request, user: Speaker, ctx: Ctx) -> StopOut:
    session = await golive_of(request, ctx).stop(user.id)
    if session is None:
        return StopOut(stopped=False, address_id=None)
    with ctx.db.session() as s:
        record(s, request, user, "golive.stop", f"address:{session.address_id}")
    return StopOut(stopped=True, address_id=session.address_id)
