"""Zones: named groups of sites sharing a fill channel, and volume/mute for all of a zone's sites at once."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from citycast.hub.api.deps import Admin, Ctx, Operator, PathId, Viewer, not_found, record
from citycast.hub.api.schemas import AUTH_ERRORS, ControlIn, ErrorOut, OkOut, ZoneControlOut, ZoneIn, ZoneOut, ZonePatch
from citycast.hub.context import HubContext
from citycast.hub.db.models import Site, Zone

router = APIRouter(tags=["zones"], responses=AUTH_ERRORS)


def zone_out(z: Zone) -> ZoneOut:
    return ZoneOut(
        id=z.id,
        name=z.name,
        channel=z.channel,
        color=z.color,
        volume=z.volume,
        muted=z.muted,
        city_servers=list(z.city_servers or []),
        chime=z.chime,
        start_lead_ms=z.start_lead_ms or 0,
    )


def _check_chime(ctx: HubContext, chime: str | None) -> str | None:
    """The chime to store: None for none; a library file must exist (it is read at every address)."""
    if not chime:
        return None
    if chime.startswith("file:") and not (ctx.media_dir / chime[5:]).is_file():
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"no media file {chime[5:]!r} for the chime")
    return chime


def _check_unique(s: DbSession, name: str | None, channel: int | None, zone_id: int | None = None) -> None:
    if name is not None:
        other = s.scalar(select(Zone.id).where(Zone.name == name, Zone.id != (zone_id or -1)))
        if other is not None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"a zone named {name!r} already exists")
    if channel is not None:
        owner = s.scalar(select(Zone.name).where(Zone.channel == channel, Zone.id != (zone_id or -1)))
        if owner is not None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"channel {channel} is already zone {owner!r}'s")


def _site_names(s: DbSession, zone_id: int) -> list[str]:
    return list(s.scalars(select(Site.name).where(Site.zone_id == zone_id).order_by(Site.name)))


@router.get("/api/zones", response_model=list[ZoneOut])
async def list_zones(_: Viewer, ctx: Ctx) -> list[ZoneOut]:
    with ctx.db.session() as s:
        return [zone_out(z) for z in s.scalars(select(Zone).order_by(Zone.name))]


@router.post("/api/zones", response_model=ZoneOut, status_code=201, responses={409: {"model": ErrorOut}})
async def create_zone(body: ZoneIn, request: Request, user: Admin, ctx: Ctx) -> ZoneOut:
    with ctx.db.session() as s:
        _check_unique(s, body.name, body.channel)
        zone = Zone(
            name=body.name,
            channel=body.channel,
            color=body.color,
            city_servers=list(body.city_servers),
            chime=_check_chime(ctx, body.chime),
            start_lead_ms=body.start_lead_ms,
        )
        s.add(zone)
        s.flush()
        record(s, request, user, "zone.create", f"zone:{zone.name}", body.model_dump())
        return zone_out(zone)


@router.patch(
    "/api/zones/{zone_id}", response_model=ZoneOut, responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}}
)
async def update_zone(zone_id: PathId, body: ZonePatch, request: Request, user: Admin, ctx: Ctx) -> ZoneOut:
    with ctx.db.session() as s:
        zone = s.get(Zone, zone_id)
        if zone is None:
            raise not_found("zone", zone_id)
        _check_unique(s, body.name, body.channel, zone.id)
        changes = body.model_dump(exclude_none=True)
        if "chime" in changes:
            changes["chime"] = _check_chime(ctx, body.chime)
        channel_changed = body.channel is not None and body.channel != zone.channel
        for key, value in changes.items():
            setattr(zone, key, value)
        record(s, request, user, "zone.update", f"zone:{zone.name}", changes)
        out = zone_out(zone)
        names = _site_names(s, zone.id) if channel_changed else []
    if names:
        await ctx.addresses.refresh_sites(names)  # their fill channel moved
    return out


@router.delete("/api/zones/{zone_id}", response_model=OkOut, responses={404: {"model": ErrorOut}})
async def delete_zone(zone_id: PathId, request: Request, user: Admin, ctx: Ctx) -> OkOut:
    with ctx.db.session() as s:
        zone = s.get(Zone, zone_id)
        if zone is None:
            raise not_found("zone", zone_id)
        names = _site_names(s, zone.id)
        for site in s.scalars(select(Site).where(Site.zone_id == zone.id)):
            site.zone_id = None
        s.delete(zone)
        record(s, request, user, "zone.delete", f"zone:{zone.name}", {"sites": len(names)})
    if names:
        await ctx.addresses.refresh_sites(names)
    return OkOut()


@router.post(
    "/api/zones/{zone_id}/control",
    response_model=ZoneControlOut,
    responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)
async def control_zone(zone_id: PathId, body: ControlIn, request: Request, user: Operator, ctx: Ctx) -> ZoneControlOut:
    if body.empty:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "give volume, muted or fallback")
    with ctx.db.session() as s:
        zone = s.get(Zone, zone_id)
        if zone is None:
            raise not_found("zone", zone_id)
        body.apply_to(zone)
        names: list[str] = []
        for site in s.scalars(select(Site).where(Site.zone_id == zone.id).order_by(Site.name)):
            body.apply_to(site)
            names.append(site.name)
        record(
            s,
            request,
            user,
            "zone.control",
            f"zone:{zone.name}",
            body.model_dump(exclude_none=True) | {"sites": len(names)},
        )
    if names:
        await ctx.addresses.refresh_sites(names)
    return ZoneControlOut(zone_id=zone_id, sites=names, volume=body.volume, muted=body.muted)
