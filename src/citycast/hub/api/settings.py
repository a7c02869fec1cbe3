"""Hub-wide settings: how long recordings are kept, the console map's tile server, and the self-tuning playout
delay ("auto", globally or per channel; hub/delay_tuner.py).

The tile server is an admin's setting on the hub, never a page's query parameter or one browser's choice: the
console loads images from it, and the Content-Security-Policy (`headers.py`) allows exactly that host.
"""

from __future__ import annotations

import json
import logging
import time

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session as DbSession

from citycast.hub.api.deps import Admin, Ctx, Viewer, record
from citycast.hub.api.headers import content_security_policy, tile_source
from citycast.hub.api.schemas import AUTH_ERRORS, SettingsIn, SettingsOut
from citycast.hub.context import HubContext
from citycast.hub.db.models import Setting, utcnow
from citycast.hub.delay_tuner import DelayTuner, TunerSettings
from citycast.hub.recorder import apply_retention
from citycast.protocol.channel import CHANNEL_MAX

log = logging.getLogger(__name__)

DEFAULT_RETENTION_DAYS = 0  # keep every recording until an admin sets a limit (as the runtime reads it)
RETENTION_KEY = "retention_days"
TILE_URL_KEY = "tile_url"
DELAY_AUTO_KEY = "delay_auto"

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


# -- the self-tuning playout delay ----------------------------------------------------------------------------


class DelayAutoIn(BaseModel):
    auto: bool
    channel: int | None = Field(
        default=None, ge=1, le=CHANNEL_MAX, description="this channel only; none: the global switch"
    )


class DelayChannelOut(BaseModel):
    channel: int
    auto: bool
    delay_ms: float = Field(description="D the channel's sites play with now")
    target_delay_ms: float = Field(description="D the current schedule ends at")
    recommended_ms: float | None = Field(description="D the fleet's margins call for (worst lateness + margin)")
    margin_min_ms: float | None = Field(description="the fleet's worst margin over the last seconds")
    changes: int
    margin_history_ms: list[float] = Field(description="the fleet's worst margin, second by second")


class DelayOut(BaseModel):
    auto: bool
    channels: dict[str, bool] = Field(description="channels with their own setting")
    tuning: list[DelayChannelOut]


def load_delay_auto(s: DbSession, tuner: DelayTuner) -> None:
    """Apply the stored switches (at the hub's start). A value that does not parse leaves auto off."""
    row = s.get(Setting, DELAY_AUTO_KEY)
    if row is None:
        return
    try:
        stored = json.loads(row.value)
        tuner.set_auto(bool(stored["auto"]))
        for ch, on in stored["channels"].items():
            tuner.set_auto(bool(on), int(ch))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("the stored delay setting is not used: %s", e)


def _tuner(request: Request, ctx: HubContext) -> DelayTuner:
    tuner = getattr(request.app.state, "delay_tuner", None)
    if not isinstance(tuner, DelayTuner):
        # An API served without the hub's runtime (tests, tools): the switches are still kept; nothing tunes.
        tuner = DelayTuner(TunerSettings(), round(ctx.delay_ms * 1e6))
        with ctx.db.session() as s:
            load_delay_auto(s, tuner)
        request.app.state.delay_tuner = tuner
    return tuner


def _delay_out(tuner: DelayTuner) -> DelayOut:
    switches = tuner.auto_settings()
    return DelayOut(
        auto=bool(switches["auto"]),
        channels={k: bool(v) for k, v in dict(switches["channels"]).items()},  # type: ignore[call-overload]
        tuning=[DelayChannelOut.model_validate(row) for row in tuner.view(time.time_ns())],
    )


@router.get("/api/settings/delay", response_model=DelayOut)
async def get_delay(_: Viewer, request: Request, ctx: Ctx) -> DelayOut:
    """Each channel's D, what the fleet's margins recommend, and whether the hub tunes it ("auto")."""
    return _delay_out(_tuner(request, ctx))


@router.put("/api/settings/delay", response_model=DelayOut)
async def put_delay(body: DelayAutoIn, request: Request, user: Admin, ctx: Ctx) -> DelayOut:
    """Turn "auto" on or off, for every channel or one. With auto on the hub raises D before sites would
    conceal and lowers it when the margin allows; every site of the channel switches at the same sample."""
    tuner = _tuner(request, ctx)
    old = tuner.auto_settings()
    tuner.set_auto(body.auto, body.channel)
    new = tuner.auto_settings()
    with ctx.db.session() as s:
        _put(s, DELAY_AUTO_KEY, json.dumps(new))
        record(s, request, user, "settings.update", DELAY_AUTO_KEY, {"old": old, "new": new})
    return _delay_out(tuner)
