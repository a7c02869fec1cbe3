"""CAP alerts from the authorities: the endpoint they post to (an operator's session, or a per-feed API key in
`X-CAP-Key`), the alerts received and what became of them (for the console's map), the feeds' status, and the
CAP settings (feeds, poll interval, repeats, signatures, authority certificates, API keys)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from cryptography import x509
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from citycast.hub.api.deps import Admin, Ctx, FailureLimiter, Viewer, record, remote_of, token_of, user_of_token, utc
from citycast.hub.api.schemas import AUTH_ERRORS, ErrorOut
from citycast.hub.auth.roles import allows
from citycast.hub.cap import settings as cap_settings
from citycast.hub.cap.service import CapService
from citycast.hub.cap.settings import MAX_POLL_S, MIN_POLL_S
from citycast.hub.context import HubContext
from citycast.hub.db.models import CapAlert, Role, User

router = APIRouter(tags=["cap"], responses=AUTH_ERRORS)
KEY_HEADER = "x-cap-key"
KEY_FAILURES_PER_MINUTE = 10


class CapOutcomeOut(BaseModel):
    outcome: str
    detail: str
    alert_id: int | None
    address_id: int | None
    sites: list[str]
    stopped: list[int]


class CapAlertOut(BaseModel):
    id: int
    sender: str | None
    identifier: str | None
    sent: str | None
    msg_type: str
    status: str
    received_at: str
    origin: str
    outcome: str
    detail: str
    headline: str
    priority: str | None
    address_id: int | None
    sites: list[str]
    area: dict[str, Any] | None
    expires_at: str | None
    signed: bool


class CapSettingsIn(BaseModel):
    feeds: list[Annotated[str, Field(pattern=r"^https?://", max_length=500)]] = Field(
        default_factory=list, max_length=20
    )
    poll_s: float = Field(30.0, ge=MIN_POLL_S, le=MAX_POLL_S)
    repeats: int = Field(2, ge=1, le=10)
    require_signature: bool = False
    authority_certs: list[Annotated[str, Field(max_length=20_000)]] = Field(default_factory=list, max_length=10)


class CapSettingsOut(CapSettingsIn):
    api_keys: list[str]  # names only: a key is shown once, when made
    feeds_status: list[dict[str, Any]]


class CapKeyIn(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")


class CapKeyOut(BaseModel):
    name: str
    key: str


def cap_service(ctx: HubContext) -> CapService:
    if ctx.cap is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "CAP alerts are not running on this hub")
    return ctx.cap


async def cap_sender(request: Request, ctx: Ctx) -> tuple[User | None, str]:
    """An operator's session, or a per-feed API key: (the user or None, where the message came from)."""
    limiter: FailureLimiter = request.app.state.__dict__.setdefault(
        "cap_key_limiter", FailureLimiter(limit=KEY_FAILURES_PER_MINUTE, window_s=60.0)
    )
    remote = remote_of(request)
    key = request.headers.get(KEY_HEADER)
    if key is None:
        user = await asyncio.to_thread(user_of_token, ctx, token_of(request))
        if user is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "log in as an operator, or send a CAP API key in X-CAP-Key"
            )
        if not allows(user.role, Role.operator):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the operator role (you are {user.role})")
        return user, f"api:{user.username}"
    # Counted as a failure before it is checked and forgiven if right, so parallel guesses cannot all slip
    # under the limit (as logins).
    limiter.check(remote, time.monotonic())
    limiter.failed(remote, time.monotonic())
    name = (await asyncio.to_thread(cap_service(ctx).settings)).key_name(key)
    if name is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown CAP API key")
    limiter.forgive(remote)
    return None, f"key:{name}"


Sender = Annotated[tuple[User | None, str], Depends(cap_sender)]


@router.post(
    "/api/cap",
    response_model=CapOutcomeOut,
    responses={422: {"model": ErrorOut}, 429: {"model": ErrorOut}, 503: {"model": ErrorOut}},
    openapi_extra={"requestBody": {"content": {"application/cap+xml": {"schema": {"type": "string"}}}}},
)
async def post_cap(request: Request, sender: Sender, ctx: Ctx) -> CapOutcomeOut:
    """Take one CAP 1.2 message (the body, as XML). A refused message (malformed, invalid, a bad signature) is
    a 422 with the reason; a duplicate, an expired alert or one outside every site is a 200 saying so."""
    user, origin = sender
    out = await cap_service(ctx).receive(await request.body(), origin, user, remote_of(request))
    if out.outcome == "refused":
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, out.detail)
    return CapOutcomeOut(**out.__dict__)


def _alert_out(a: CapAlert) -> CapAlertOut:
    received, expires = utc(a.received_at), utc(a.expires_at)
    return CapAlertOut(
        id=a.id,
        sender=a.sender,
        identifier=a.identifier,
        sent=a.sent,
        msg_type=a.msg_type,
        status=a.status,
        received_at=received.isoformat() if received else "",
        origin=a.origin,
        outcome=a.outcome,
        detail=a.detail,
        headline=a.headline,
        priority=a.priority,
        address_id=a.address_id,
        sites=list(a.sites or []),
        area=a.area,
        expires_at=expires.isoformat() if expires else None,
        signed=a.signed,
    )


@router.get("/api/cap/alerts", response_model=list[CapAlertOut])
async def list_cap_alerts(_: Viewer, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[CapAlertOut]:
    with ctx.db.session() as s:
        rows = s.scalars(select(CapAlert).order_by(CapAlert.received_at.desc(), CapAlert.id.desc()).limit(limit))
        return [_alert_out(a) for a in rows]


def _settings_out(ctx: HubContext, st: cap_settings.CapSettings) -> CapSettingsOut:
    feeds = ctx.cap_feeds_status() if ctx.cap_feeds_status is not None else []
    return CapSettingsOut(
        feeds=st.feeds,
        poll_s=st.poll_s,
        repeats=st.repeats,
        require_signature=st.require_signature,
        authority_certs=st.authority_certs,
        api_keys=[k.name for k in st.api_keys],
        feeds_status=feeds,
    )


@router.get("/api/cap/settings", response_model=CapSettingsOut)
async def get_cap_settings(_: Admin, ctx: Ctx) -> CapSettingsOut:
    with ctx.db.session() as s:
        return _settings_out(ctx, cap_settings.load(s))


@router.put("/api/cap/settings", response_model=CapSettingsOut, responses={422: {"model": ErrorOut}})
async def put_cap_settings(body: CapSettingsIn, request: Request, user: Admin, ctx: Ctx) -> CapSettingsOut:
    for pem in body.authority_certs:
        try:
            x509.load_pem_x509_certificate(pem.encode())
        except ValueError:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, "an authority certificate is not PEM X.509"
            ) from None
    with ctx.db.session() as s:
        st = cap_settings.load(s)
        st.feeds, st.poll_s, st.repeats = body.feeds, body.poll_s, body.repeats
        st.require_signature, st.authority_certs = body.require_signature, body.authority_certs
        cap_settings.save(s, st)
        record(s, request, user, "cap.settings", "cap", body.model_dump(exclude={"authority_certs"}))
        return _settings_out(ctx, st)


@router.post("/api/cap/keys", response_model=CapKeyOut, status_code=201)
async def make_cap_key(body: CapKeyIn, request: Request, user: Admin, ctx: Ctx) -> CapKeyOut:
    """A new API key for one feed or sender (replacing one of the same name); shown this once."""
    with ctx.db.session() as s:
        st = cap_settings.load(s)
        key = st.new_key(body.name)
        cap_settings.save(s, st)
        record(s, request, user, "cap.key_create", f"cap-key:{body.name}")
    return CapKeyOut(name=body.name, key=key)


@router.delete("/api/cap/keys/{name}", status_code=204)
async def delete_cap_key(name: str, request: Request, user: Admin, ctx: Ctx) -> None:
    with ctx.db.session() as s:
        st = cap_settings.load(s)
        st.api_keys = [k for k in st.api_keys if k.name != name]
        cap_settings.save(s, st)
        record(s, request, user, "cap.key_delete", f"cap-key:{name}")
