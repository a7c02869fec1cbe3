"""Enrolment: a new loudspeaker box trades its one-time token for NATS credentials.

The box makes its own nkey pair and sends only the public key; the hub signs a user JWT for that key with the
site's permissions. The seed never leaves the box, and the token (of which only the hash is stored) works once,
for 24 hours. A revoked site has no token until an admin issues a new one.
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import Response
from sqlalchemy import select

from citycast.bus.authority import site_inbox_prefix
from citycast.bus.jwt import KeyKind, is_public_key
from citycast.bus.tls import fingerprint
from citycast.hub.api.deps import Ctx, FailureLimiter, record, remote_of, utc
from citycast.hub.api.schemas import EnrolIn, EnrolOut, ErrorOut
from citycast.hub.api.sites import revoke_key
from citycast.hub.auth.sessions import token_hash
from citycast.hub.db.models import RevokedKey, Site, Zone, utcnow

log = logging.getLogger(__name__)
router = APIRouter(tags=["sites"])

PEM = "application/x-pem-file"
BAD_TOKEN = "unknown, used or expired enrolment token: ask an admin for a new one"


@router.get("/api/transport")
async def transport(ctx: Ctx) -> dict[str, object]:
    """Whether this hub's wire is protected, for the console's banner (also on the login page, so no login):
    `insecure` when the operator ran it with --insecure; the CA fingerprint the enrolment tokens carry."""
    return {
        "insecure": ctx.insecure,
        "ca_fingerprint": fingerprint(ctx.hub_ca_pem) if ctx.hub_ca_pem else None,
    }


@router.get(
    "/api/enrol/ca",
    response_class=Response,
    responses={
        200: {"content": {PEM: {"schema": {"type": "string"}}}, "description": "The CA certificate (PEM)"},
        404: {"model": ErrorOut, "content": {"application/json": {}}},
    },
)
async def hub_ca(ctx: Ctx) -> Response:
    """The hub's TLS CA (PEM, public). An enrolling site accepts it only if it has the fingerprint its token
    carries, and then trusts no other certificate for this hub's HTTPS and NATS."""
    if not ctx.hub_ca_pem:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "this hub runs without TLS (--insecure)")
    return Response(ctx.hub_ca_pem, media_type=PEM)


@router.post(
    "/api/enrol",
    response_model=EnrolOut,
    responses={
        400: {"model": ErrorOut},
        401: {"model": ErrorOut},
        409: {"model": ErrorOut},
        429: {"model": ErrorOut},
        502: {"model": ErrorOut},
        503: {"model": ErrorOut},
    },
)
async def enrol(body: EnrolIn, request: Request, ctx: Ctx) -> EnrolOut:
    limiter: FailureLimiter = request.app.state.enrol_limiter
    remote = remote_of(request)
    limiter.check(remote, time.monotonic())
    # The token as shown to an admin is SECRET.FINGERPRINT; a site sends the secret alone, a hand-made request
    # may send both, and the fingerprint is no secret.
    secret = body.token.partition(".")[0]
    if ctx.authority is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this hub runs without a NATS authority: no enrolment")
    if not is_public_key(body.nkey_public, KeyKind.USER):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "nkey_public must be an nkeys user public key (56 characters starting with U)"
        )
    now = utcnow()
    with ctx.db.session() as s:
        site = s.scalar(select(Site).where(Site.enrol_token_hash == token_hash(secret)))
        expires = utc(site.enrol_expires_at) if site is not None else None
        if site is None or expires is None or expires <= now:
            limiter.failed(remote, time.monotonic())
            record(s, request, None, "site.enrol_failed", "", {"reason": "bad token"})
            failed = True
        else:
            failed = False
    if failed:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, BAD_TOKEN)

    with ctx.db.session() as s:
        site = s.scalar(select(Site).where(Site.enrol_token_hash == token_hash(secret)))
        if site is None:  # used by a concurrent request in between
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, BAD_TOKEN)
        revoked = s.scalar(select(RevokedKey.id).where(RevokedKey.nkey_public == body.nkey_public))
        if revoked is not None:
            raise HTTPException(status.HTTP_409_CONFLICT, "this key was revoked: enrol with a newly made key")
        owner = s.scalar(select(Site.name).where(Site.nkey_public == body.nkey_public, Site.id != site.id))
        if owner is not None:
            raise HTTPException(status.HTTP_409_CONFLICT, "this key belongs to another site: make a new key")
        try:
            user_jwt = ctx.authority.mint_site_jwt(site.name, body.nkey_public, ctx.subjects)
        except ValueError as e:
            raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from e
        # A box enrolling again with a new key replaces its old identity: the old key must stop working.
        old_key = site.nkey_public if site.nkey_public != body.nkey_public and site.revoked_at is None else None
        if old_key is not None:
            s.add(RevokedKey(nkey_public=old_key, revoked_at=now))
        site.nkey_public = body.nkey_public
        site.enrolled_at = now
        site.revoked_at = None
        site.enrol_token_hash = None  # one use
        site.enrol_expires_at = None
        record(s, request, None, "site.enrol", f"site:{site.name}", {"nkey_public": body.nkey_public})
        name = site.name
        zone = s.get(Zone, site.zone_id) if site.zone_id is not None else None
        city_servers = list(zone.city_servers or []) if zone is not None else []
    ctx.fleet.known([name])
    if old_key is not None:
        try:
            await revoke_key(ctx, old_key)
        except HTTPException as e:
            # The site is enrolled and the old key is revoked in the database (the server learns at its next
            # start); failing the enrolment now would leave the box with nothing.
            log.warning("site %s: old key not revoked on the live server: %s", name, e.detail)
    await ctx.addresses.refresh_sites([name])
    return EnrolOut(
        site=name,
        prefix=ctx.subjects.prefix,
        nats_urls=list(ctx.public_nats_urls) or [ctx.nats_url],
        user_jwt=user_jwt,
        trusted_keys=list(ctx.trusted_keys_hex),
        delay_ms=ctx.delay_ms,
        time_subject=ctx.subjects.time(),
        inbox_prefix=site_inbox_prefix(name),
        hub_ca=ctx.hub_ca_pem,
        city_servers=city_servers,
    )
