"""Hub-wide settings: how long recordings are kept."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session as DbSession

from citycast.hub.api.deps import Admin, Ctx, Viewer, record
from citycast.hub.api.schemas import AUTH_ERRORS, SettingsIn, SettingsOut
from citycast.hub.db.models import Setting, utcnow
from citycast.hub.recorder import apply_retention

DEFAULT_RETENTION_DAYS = 0  # keep every recording until an admin sets a limit (as the runtime reads it)
RETENTION_KEY = "retention_days"

router = APIRouter(tags=["settings"], responses=AUTH_ERRORS)


def retention_days(s: DbSession) -> int:
    row = s.get(Setting, RETENTION_KEY)
    try:
        return int(row.value) if row is not None else DEFAULT_RETENTION_DAYS
    except ValueError:
        return DEFAULT_RETENTION_DAYS


@router.get("/api/settings", response_model=SettingsOut)
async def get_settings(_: Viewer, ctx: Ctx) -> SettingsOut:
    with ctx.db.session() as s:
        return SettingsOut(retention_days=retention_days(s))


@router.put("/api/settings", response_model=SettingsOut)
async def put_settings(body: SettingsIn, request: Request, user: Admin, ctx: Ctx) -> SettingsOut:
    with ctx.db.session() as s:
        old = retention_days(s)
        row = s.get(Setting, RETENTION_KEY)
        if row is None:
            s.add(Setting(key=RETENTION_KEY, value=str(body.retention_days)))
        else:
            row.value = str(body.retention_days)
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
    return SettingsOut(retention_days=body.retention_days)
