"""The CAP service and its feed poller as a hub runs them: feeds from the command line (`--cap-feed`) and from
the settings (the console), polled until the hub stops."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from citycast.hub.cap.feeds import FeedPoller
from citycast.hub.cap.service import CapAddresses, CapService
from citycast.hub.db.engine import Database
from citycast.tasks import cancel_and_wait


class CapAlerts:
    def __init__(self, db: Database, addresses: CapAddresses, cli_feeds: list[str]) -> None:
        self.service = CapService(db, addresses)
        self.cli_feeds = list(cli_feeds)
        self.poller = FeedPoller(self.service.receive, self._feeds, self._poll_s, self.service.http)
        self._task: asyncio.Task[None] | None = None

    def _feeds(self) -> list[str]:
        return [*self.cli_feeds, *self.service.settings().feeds]

    def _poll_s(self) -> float:
        return self.service.settings().poll_s

    def feeds_status(self) -> list[dict[str, Any]]:
        return [st.as_dict() for st in self.poller.status.values()]

    def start(self, stop: asyncio.Event) -> None:
        self._task = asyncio.create_task(self.poller.run(stop))

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        with contextlib.suppress(Exception):
            await self.service.close()
