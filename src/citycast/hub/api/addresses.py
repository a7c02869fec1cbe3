"""Addresses: what can go on air (sources), what went on air (history), start and stop."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from citycast.hub.api.deps import Ctx, Operator, PathId, Viewer, not_found, record, utc
from citycast.hub.api.schemas import AUTH_ERRORS, AddressIn, AddressOut, ErrorOut, OnAirOut, SourceOut
from citycast.hub.context import HubContext
from citycast.hub.db.models import Address, Recording

router = APIRouter(tags=["addresses"], responses=AUTH_ERRORS)


def address_out(a: Address, recording_id: int | None) -> AddressOut:
    return AddressOut(
        id=a.id,
        title=a.title,
        source=a.source,
        speaker=a.speaker,
        priority=a.priority,
        channel=a.channel,
        zone_ids=list(a.zone_ids or []),
        status=a.status.value,
        started_at=utc(a.started_at) or a.started_at,
        ended_at=utc(a.ended_at),
        end_reason=a.end_reason,
        sites_reached=a.sites_reached,
        recording_id=recording_id,
        schedule_id=a.schedule_id,
    )


def _recording_ids(s: DbSession, address_ids: list[int]) -> dict[int, int]:
    if not address_ids:
        return {}
    rows = s.execute(
        select(Recording.address_id, Recording.id).where(Recording.address_id.in_(address_ids)).order_by(Recording.id)
    )
    return {aid: rid for aid, rid in rows if aid is not None}


def load_address(ctx: HubContext, address_id: int) -> AddressOut:
    with ctx.db.session() as s:
        a = s.get(Address, address_id)
        if a is None:
            raise not_found("address", address_id)
        return address_out(a, _recording_ids(s, [a.id]).get(a.id))


@router.get("/api/sources", response_model=list[SourceOut])
async def list_sources(_: Viewer, ctx: Ctx) -> list[SourceOut]:
    return [SourceOut(id=x["id"], label=x["label"]) for x in ctx.addresses.sources()]


@router.get("/api/addresses", response_model=list[AddressOut])
async def list_addresses(_: Viewer, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[AddressOut]:
    with ctx.db.session() as s:
        rows = list(s.scalars(select(Address).order_by(Address.started_at.desc(), Address.id.desc()).limit(limit)))
        recs = _recording_ids(s, [a.id for a in rows])
        return [address_out(a, recs.get(a.id)) for a in rows]


@router.get("/api/addresses/live", response_model=list[OnAirOut])
async def on_air(_: Viewer, ctx: Ctx) -> list[OnAirOut]:
    """What is on air now, from the address manager (not the database): status per zone pre-emption, sites
    reached so far, and the broadcast time of the first sample once the hub's own broadcast has begun."""
    return [OnAirOut.model_validate(a) for a in ctx.addresses.live()]


@router.post("/api/addresses", response_model=AddressOut, status_code=201, responses={422: {"model": ErrorOut}})
async def start_address(body: AddressIn, request: Request, user: Operator, ctx: Ctx) -> AddressOut:
    try:
        address_id = await ctx.addresses.start(
            title=body.title,
            source=body.source,
            zone_ids=body.zone_ids,
            priority=body.priority,
            speaker=user.username,
            user_id=user.id,
            duration_s=body.duration_s,
        )
    except ValueError as e:
        with ctx.db.session() as s:
            record(s, request, user, "address.start_failed", body.title, body.model_dump() | {"error": str(e)})
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from e
    with ctx.db.session() as s:
        record(s, request, user, "address.start", f"address:{address_id}", body.model_dump())
    return load_address(ctx, address_id)


@router.post("/api/addresses/{address_id}/stop", response_model=AddressOut, responses={404: {"model": ErrorOut}})
async def stop_address(address_id: PathId, request: Request, user: Operator, ctx: Ctx) -> AddressOut:
    try:
        await ctx.addresses.stop(address_id, f"stopped by {user.username}")
    except KeyError:
        raise not_found("address", address_id) from None
    with ctx.db.session() as s:
        record(s, request, user, "address.stop", f"address:{address_id}")
    return load_address(ctx, address_id)
