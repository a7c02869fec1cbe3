"""Sites: the loudspeakers. Their records, enrolment tokens, revocation, and volume/mute.

A site's row is joined with its live view from the fleet (state, levels, counters) so one list feeds the map.
"""

from __future__ import annotations

import datetime as dt
import shlex

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from citycast.bus.tls import fingerprint
from citycast.hub.api.deps import Admin, Ctx, Operator, PathId, Viewer, not_found, record, utc
from citycast.hub.api.schemas import (
    AUTH_ERRORS,
    ControlIn,
    EnrolTokenOut,
    ErrorOut,
    OkOut,
    RevokeOut,
    SiteIn,
    SiteOut,
    SitePatch,
)
from citycast.hub.auth.sessions import new_token, token_hash
from citycast.hub.context import HubContext
from citycast.hub.db.models import RevokedKey, Site, Zone, utcnow
from citycast.hub.fleet import FleetState

ENROL_TOKEN_TTL = dt.timedelta(hours=24)
LIVE_FIELDS = (
    "sink_error",
    "channel",
    "level_rms_dbfs",
    "level_peak_dbfs",
    "buffer_ms",
    "sync_error_ms",
    "underruns",
    "concealed",
    "rejected",
    "last_seen_s",
    "paths",
)

router = APIRouter(tags=["sites"], responses=AUTH_ERRORS)


def site_out(site: Site, fleet: FleetState) -> SiteOut:
    live = fleet.site(site.name) or {}
    return SiteOut(
        id=site.id,
        name=site.name,
        label=site.label,
        lat=site.lat,
        lon=site.lon,
        zone_id=site.zone_id,
        zone=site.zone.name if site.zone is not None else None,
        volume=site.volume,
        muted=site.muted,
        fallback=site.fallback or "default",
        enrolled=site.enrolled_at is not None and site.revoked_at is None,
        revoked=site.revoked_at is not None,
        state=str(live.get("state") or "offline"),
        **{k: live.get(k) for k in LIVE_FIELDS},
    )


def all_sites(ctx: HubContext) -> list[SiteOut]:
    with ctx.db.session() as s:
        return [site_out(site, ctx.fleet) for site in s.scalars(select(Site).order_by(Site.name))]


def _get_site(s: DbSession, site_id: int) -> Site:
    site = s.get(Site, site_id)
    if site is None:
        raise not_found("site", site_id)
    return site


def _take_zone_sound(s: DbSession, site: Site) -> None:
    """A site joining a zone plays at the zone's volume and mute: a muted zone stays silent when it grows."""
    zone = s.get(Zone, site.zone_id) if site.zone_id is not None else None
    if zone is not None:
        site.volume, site.muted = zone.volume, zone.muted


def _check_zone(s: DbSession, zone_id: int | None) -> None:
    if zone_id is not None and s.get(Zone, zone_id) is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"zone {zone_id} does not exist")


def _issue_token(site: Site, now: dt.datetime) -> str:
    """A new one-time enrolment token; only its hash is kept, and it replaces any earlier one."""
    token = new_token()
    site.enrol_token_hash = token_hash(token)
    site.enrol_expires_at = now + ENROL_TOKEN_TTL
    return token


def _enrol_out(request: Request, site: Site, token: str, fleet: FleetState) -> EnrolTokenOut:
    ctx: HubContext = request.app.state.ctx
    hub = ctx.enrol_url or str(request.base_url).rstrip("/")
    if ctx.hub_ca_pem:
        # The site will trust the hub whose CA has this fingerprint, and no other (citycast.site.enrol).
        token = f"{token}.{fingerprint(ctx.hub_ca_pem)}"
    return EnrolTokenOut(
        site=site_out(site, fleet),
        enrol_token=token,
        enrol_command=f"citycast site --enrol {shlex.quote(hub)} {shlex.quote(token)}",
        expires_at=utc(site.enrol_expires_at) or utcnow(),
    )


async def revoke_key(ctx: HubContext, nkey_public: str) -> None:
    """Revoke a site key on the live NATS server. The DB row (RevokedKey) is the caller's; this is the push."""
    if ctx.authority is None:
        return
    try:
        await ctx.authority.revoke(nkey_public, ctx.nats_url)
    except Exception as e:
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY,
            f"the key is marked revoked, but the NATS server did not confirm it: {e}"[:500],
        ) from e


def _mark_revoked(s: DbSession, site: Site, now: dt.datetime) -> str | None:
    """Void the site's credentials in the database; returns the key to revoke on the server, if any."""
    key = site.nkey_public
    site.revoked_at = now
    site.enrol_token_hash = None
    site.enrol_expires_at = None
    if key is not None and s.scalar(select(RevokedKey.id).where(RevokedKey.nkey_public == key)) is None:
        s.add(RevokedKey(nkey_public=key, revoked_at=now))
    return key


@router.get("/api/sites", response_model=list[SiteOut])
async def list_sites(_: Viewer, ctx: Ctx) -> list[SiteOut]:
    return all_sites(ctx)


@router.post(
    "/api/sites",
    response_model=EnrolTokenOut,
    status_code=201,
    responses={409: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)
async def create_site(body: SiteIn, request: Request, user: Admin, ctx: Ctx) -> EnrolTokenOut:
    with ctx.db.session() as s:
        if s.scalar(select(Site.id).where(Site.name == body.name)) is not None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"a site named {body.name!r} already exists")
        _check_zone(s, body.zone_id)
        site = Site(name=body.name, label=body.label, lat=body.lat, lon=body.lon, zone_id=body.zone_id)
        _take_zone_sound(s, site)
        token = _issue_token(site, utcnow())
        s.add(site)
        s.flush()
        s.refresh(site)  # loads the zone relationship
        record(s, request, user, "site.create", f"site:{site.name}", body.model_dump())
        out = _enrol_out(request, site, token, ctx.fleet)
    await ctx.addresses.refresh_sites([body.name])
    return out


@router.post("/api/sites/{site_id}/token", response_model=EnrolTokenOut, responses={404: {"model": ErrorOut}})
async def new_enrol_token(site_id: PathId, request: Request, user: Admin, ctx: Ctx) -> EnrolTokenOut:
    with ctx.db.session() as s:
        site = _get_site(s, site_id)
        token = _issue_token(site, utcnow())
        record(s, request, user, "site.token", f"site:{site.name}")
        return _enrol_out(request, site, token, ctx.fleet)


@router.post(
    "/api/sites/{site_id}/revoke",
    response_model=RevokeOut,
    responses={404: {"model": ErrorOut}, 502: {"model": ErrorOut}},
)
async def revoke_site(site_id: PathId, request: Request, user: Admin, ctx: Ctx) -> RevokeOut:
    with ctx.db.session() as s:
        site = _get_site(s, site_id)
        key = _mark_revoked(s, site, utcnow())
        record(s, request, user, "site.revoke", f"site:{site.name}", {"nkey_public": key})
        out = RevokeOut(site=site_out(site, ctx.fleet), nkey_public=key)
    if key is not None:
        await revoke_key(ctx, key)
    return out


@router.post(
    "/api/sites/{site_id}/control",
    response_model=SiteOut,
    responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)
async def control_site(site_id: PathId, body: ControlIn, request: Request, user: Operator, ctx: Ctx) -> SiteOut:
    if body.empty:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "give volume, muted or fallback")
    with ctx.db.session() as s:
        site = _get_site(s, site_id)
        body.apply_to(site)
        record(s, request, user, "site.control", f"site:{site.name}", body.model_dump(exclude_none=True))
        out = site_out(site, ctx.fleet)
    await ctx.addresses.refresh_sites([out.name])
    return out


@router.patch(
    "/api/sites/{site_id}",
    response_model=SiteOut,
    responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)
async def update_site(site_id: PathId, body: SitePatch, request: Request, user: Admin, ctx: Ctx) -> SiteOut:
    # zone_id: null moves the site out of its zone; leaving the field out keeps the zone.
    changes = body.model_dump(exclude_unset=True)
    for key in ("label", "lat", "lon"):
        if key in changes and changes[key] is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{key} cannot be null")
    with ctx.db.session() as s:
        site = _get_site(s, site_id)
        if "zone_id" in changes:
            _check_zone(s, changes["zone_id"])
        zone_moved = "zone_id" in changes and changes["zone_id"] != site.zone_id
        for key, value in changes.items():
            setattr(site, key, value)
        if zone_moved:
            _take_zone_sound(s, site)
        s.flush()
        s.refresh(site)
        record(s, request, user, "site.update", f"site:{site.name}", changes)
        out = site_out(site, ctx.fleet)
    if zone_moved:
        await ctx.addresses.refresh_sites([out.name])
    return out


@router.delete(
    "/api/sites/{site_id}", response_model=OkOut, responses={404: {"model": ErrorOut}, 502: {"model": ErrorOut}}
)
async def delete_site(site_id: PathId, request: Request, user: Admin, ctx: Ctx) -> OkOut:
    """Deleting an enrolled site also revokes its key: the box must not keep its access to the bus."""
    with ctx.db.session() as s:
        site = _get_site(s, site_id)
        name = site.name
        key = _mark_revoked(s, site, utcnow()) if site.revoked_at is None else None
        s.delete(site)
        record(s, request, user, "site.delete", f"site:{name}", {"nkey_public": key})
    ctx.fleet.forget(name)
    if key is not None:
        await revoke_key(ctx, key)
    return OkOut()


class TalkbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: bool


class TalkbackOut(BaseModel):
    site: str | None
    frames: int


@router.post(
    "/api/sites/{site_id}/talkback",
    response_model=TalkbackOut,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
)
async def talkback(site_id: PathId, body: TalkbackIn, request: Request, user: Operator, ctx: Ctx) -> TalkbackOut:
    """Open (or close) talkback: hear this site's microphone, mixed into a live caller's return audio. One site at
    a time; the site stops sending by itself when the hub stops renewing the request."""
    if ctx.talkback is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "talkback is not available on this hub (it needs the hub's bus)")
    with ctx.db.session() as s:
        site = _get_site(s, site_id)
        name = site.name
        record(s, request, user, "site.talkback", f"site:{name}", {"on": body.on})
    if body.on:
        try:
            await ctx.talkback.open(name)
        except ValueError as e:
            raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    elif ctx.talkback.current is not None and ctx.talkback.current.site == name:
        await ctx.talkback.close()
    st = ctx.talkback.status()
    return TalkbackOut(site=st["site"], frames=st["frames"])


@router.get("/api/talkback", response_model=TalkbackOut)
async def talkback_status(_: Viewer, ctx: Ctx) -> TalkbackOut:
    """Which site's microphone the hub is listening to now (none: `site` is null)."""
    if ctx.talkback is None:
        return TalkbackOut(site=None, frames=0)
    st = ctx.talkback.status()
    return TalkbackOut(site=st["site"], frames=st["frames"])
