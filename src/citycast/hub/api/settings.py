"""Hub-wide settings: how long recordings are kept, and the console map's tile server.

The tile server is an admin's setting on the hub, never a page's query parameter or one browser's choice: the
console loads images from it, and the Content-Security-Policy (`headers.py`) allows exactly that host.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session as DbSession

from citycast.hub.api.deps import Admin, Ctx, Viewer, record
from citycast.hub.api.headers import content_security_policy, tile_source
from citycast.hub.api.schemas import AUTH_ERRORS, SettingsIn, SettingsOut
from citycast.hub.context import HubContext
from citycast.hub.db.models import Setting, utcnow
from citycast.hub.recorder import apply_retention

log = logging.getLogger(__name__)

DEFAULT_RETENTION_DAYS = 0  # keep every recording until an admin sets a limit (as the runtime reads it)
RETENTION_KEY = "retention_days"
TILE_URL_KEY = "tile_url"

router = APIRouter(tags=["settings"], responses=AUTH_ERRORS)


def retention_days(s: DbSession) -> int:
    row = s.get(Setting, RETENTION_KEY)
    try:
        return int(row.value) if row is not None else DEFAULT_RETENTION_DAYS
    except ValueError:
        return DEFAULT_RETENTION_DAYS


def tile_url(s: DbSession) -> str:
    """The stored tile URL, or "" if none (or if what is stored no longer passes the check)."""
    row = s.get(Setting, TILE_URL_KEY)
    if row is None or not row.value:
        return ""
    try:
        tile_source(row.value)
    except ValueError as e:
        log.warning("the stored tile URL is not used: %s", e)
        return ""
    return row.value


class ConsolePolicy:
    """The console's Content-Security-Policy, kept in step with the tile setting: read from the database at the
    first response, then replaced whenever an admin changes the setting (no query per response)."""

    def __init__(self, ctx: HubContext) -> None:
        self.ctx = ctx
        self._policy: str | None = None

    def __call__(self) -> str:
        if self._policy is None:
            with self.ctx.db.session() as s:
                self._policy = content_security_policy(tile_url(s))
        return self._policy

    def tiles_changed(self, url: str) -> None:
        self._policy = content_security_policy(url)


def _put(s: DbSession, key: str, value: str) -> None:
    row = s.get(Setting, key)
    if row is None:
        s.add(Setting(key=key, value=value))
    else:
        row.value = value


@router.get("/api/settings", response_model=SettingsOut)
async def get_settings(_: Viewer, ctx: Ctx) -> SettingsOut:
    with ctx.db.session() as s:
        return SettingsOut(retention_days=retention_days(s), tile_url=tile_url(s))


@router.put("/api/settings", response_model=SettingsOut)
async def put_settings(body: SettingsIn, request: Request, user: Admin, ctx: Ctx) -> SettingsOut:
    with ctx.db.session() as s:
        old = retention_days(s)
        _put(s, RETENTION_KEY, str(body.retention_days))
        # A shorter retention takes effect now, not at the next daily sweep.
        deleted = apply_retention(s, ctx.recordings_dir, body.retention_days, utcnow())
        record(
            s,
            request,
            user,
            "settings.update",
            RETENTION_KEY,
            {"old": old, "new": body.retention_days, "recordings_deleted": deleted},
        )
        old_tiles = tile_url(s)
        tiles = old_tiles if body.tile_url is None else body.tile_url
        if tiles != old_tiles:
            _put(s, TILE_URL_KEY, tiles)
            record(s, request, user, "settings.update", TILE_URL_KEY, {"old": old_tiles, "new": tiles})
    policy = getattr(request.app.state, "console_policy", None)
    if isinstance(policy, ConsolePolicy):
        policy.tiles_changed(tiles)
    return SettingsOut(retention_days=body.retention_days, tile_url=tiles)
