"""The Icecast setting (hub/icecast): where every address is also streamed for web and radio listeners.

Viewers see whether it is on and how each mount is doing; admins set or clear it. The source password is
write-only: kept when a change leaves it out, never returned.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from citycast.hub.api.deps import Admin, Ctx, Viewer, record
from citycast.hub.api.schemas import AUTH_ERRORS
from citycast.hub.icecast.control import IcecastControl, IcecastSetting, load_setting, store_setting

router = APIRouter(tags=["settings"], responses=AUTH_ERRORS)


class IcecastIn(BaseModel):
    enabled: bool
    url: str | None = Field(None, max_length=300, description="http://[USER@]HOST[:PORT][/PREFIX]")
    password: str | None = Field(None, max_length=200, description="The source password; omitted: unchanged.")
    public: bool = False


class IcecastOut(BaseModel):
    enabled: bool
    url: str | None
    user: str | None
    password_set: bool
    public: bool
    running: bool  # False: set, but this API runs without the hub's streaming side (tests, tools)
    mounts: list[dict[str, Any]]


def _control(request: Request) -> IcecastControl | None:
    control = getattr(request.app.state, "icecast", None)
    return control if isinstance(control, IcecastControl) else None


def _out(request: Request, stored: IcecastSetting | None) -> IcecastOut:
    control = _control(request)
    if control is not None:
        return IcecastOut(**control.status(), running=control.service is not None)
    opts = stored.options() if stored is not None else None
    return IcecastOut(
        enabled=stored is not None,
        url=None if opts is None else f"http://{opts.server.host}:{opts.server.port}{opts.server.prefix}",
        user=None if opts is None else opts.server.user,
        password_set=stored is not None,
        public=bool(stored and stored.public),
        running=False,
        mounts=[],
    )


@router.get("/api/settings/icecast", response_model=IcecastOut)
async def get_icecast(_: Viewer, request: Request, ctx: Ctx) -> IcecastOut:
    """Whether addresses go to an Icecast server, where, and each mount's state (connected, errors, title)."""
    with ctx.db.session() as s:
        stored = load_setting(s)
    return _out(request, stored)


@router.put("/api/settings/icecast", response_model=IcecastOut)
async def put_icecast(body: IcecastIn, request: Request, user: Admin, ctx: Ctx) -> IcecastOut:
    """Stream every address to an Icecast server (or stop). Takes effect at once; the hub keeps trying a server
    that refuses or is down, and the mounts' `error` says why."""
    with ctx.db.session() as s:
        old = load_setting(s)
    setting: IcecastSetting | None = None
    if body.enabled:
        if not body.url:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "an Icecast URL is needed to turn it on")
        password = body.password if body.password is not None else (old.password if old is not None else "")
        setting = IcecastSetting(body.url, password, body.public)
        try:
            options = setting.options()
        except ValueError as e:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from None
    with ctx.db.session() as s:
        store_setting(s, setting)
        detail = {"enabled": body.enabled, "url": body.url, "public": body.public}
        record(s, request, user, "settings.update", "icecast", detail)  # never the password
    control = _control(request)
    if control is not None:
        await control.apply(options if setting is not None else None)
    return _out(request, setting)
