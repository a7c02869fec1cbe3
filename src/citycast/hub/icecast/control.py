"""The Icecast setting: where the hub streams (from `serve --icecast` or the console), changed while it runs.

The admin's setting is kept in the database (the `settings` table, key ``icecast``), so it survives a restart;
`serve --icecast` given on the command line wins over it at start. The source password is stored there too (the
hub must present it to Icecast) and never leaves the hub again: the API shows whether one is set, not what.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from citycast.hub.db.models import Setting
from citycast.hub.icecast.service import IcecastOptions, IcecastService
from citycast.hub.icecast.source import parse_icecast_url
from citycast.tasks import cancel_and_wait

__all__ = ["SETTING_KEY", "IcecastControl", "IcecastSetting", "load_setting", "store_setting"]

log = logging.getLogger(__name__)

SETTING_KEY = "icecast"

Starter = Callable[[IcecastOptions], Awaitable[tuple[IcecastService, "asyncio.Task[None]"]]]


@dataclass(frozen=True)
class IcecastSetting:
    url: str
    password: str
    public: bool = False

    def options(self) -> IcecastOptions:
        """Raises ValueError with a message for the admin."""
        return IcecastOptions(parse_icecast_url(self.url, self.password), public=self.public)


def load_setting(s: Session) -> IcecastSetting | None:
    row = s.get(Setting, SETTING_KEY)
    if row is None or not row.value:
        return None
    try:
        data = json.loads(row.value)
        setting = IcecastSetting(str(data["url"]), str(data["password"]), bool(data.get("public", False)))
        setting.options()
    except (ValueError, KeyError, TypeError) as e:
        log.warning("the stored Icecast setting is not used: %s", e)
        return None
    return setting


def store_setting(s: Session, setting: IcecastSetting | None) -> None:
    value = "" if setting is None else json.dumps(setting.__dict__)
    row = s.get(Setting, SETTING_KEY)
    if row is None:
        s.add(Setting(key=SETTING_KEY, value=value))
    else:
        row.value = value


class IcecastControl:
    """Owns the running `IcecastService` (if any) and swaps it for a new setting. Control loop only."""

    def __init__(self, starter: Starter) -> None:
        self._starter = starter
        self._lock = asyncio.Lock()
        self.options: IcecastOptions | None = None
        self.service: IcecastService | None = None
        self._follow: asyncio.Task[None] | None = None

    async def apply(self, options: IcecastOptions | None) -> None:
        async with self._lock:
            await self._stop()
            self.options = options
            if options is not None:
                self.service, self._follow = await self._starter(options)

    async def _stop(self) -> None:
        follow, self._follow = self._follow, None
        if follow is not None:
            await cancel_and_wait(follow)
        service, self.service = self.service, None
        if service is not None:
            await service.stop()

    async def close(self) -> None:
        async with self._lock:
            await self._stop()

    def status(self) -> dict[str, Any]:
        opts = self.options
        return {
            "enabled": opts is not None,
            "url": None if opts is None else f"http://{opts.server.host}:{opts.server.port}{opts.server.prefix}",
            "user": None if opts is None else opts.server.user,
            "password_set": opts is not None and bool(opts.server.password),
            "public": bool(opts and opts.public),
            "mounts": [] if self.service is None else self.service.status(),
        }
