"""The time service a process offers: the hub's own clock, or a city responder's estimate of it."""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.client import Client

from citycast.bus.subjects import Subjects
from citycast.clock.estimator import ClockEstimator
from citycast.clock.local import SystemClock
from citycast.clock.service import ClockSync, TimeResponder


class TimeService:
    """With `upstream` unset this is the broadcast clock itself (the hub). With an upstream subject it is a city
    responder: it syncs to the hub over the long-haul link and serves its estimate to the sites near it, so the
    link's asymmetry shifts a whole city together instead of skewing its sites apart."""

    def __init__(self, nc: Client, subjects: Subjects, *, zone: str | None = None, upstream: str | None = None) -> None:
        self.local = SystemClock()
        self.sync: ClockSync | None = None
        if upstream is not None:
            self.sync = ClockSync(nc, upstream, self.local, estimator=ClockEstimator())
        self.responder = TimeResponder(nc, subjects.time(zone), self._now)
        self._waiter: asyncio.Task[None] | None = None

    def _now(self) -> int:
        if self.sync is None:
            return self.local.now_ns()
        return self.sync.estimator.to_broadcast(self.local.now_ns())

    @property
    def synced(self) -> bool:
        return self.sync is None or self.sync.estimator.synced

    async def start(self) -> None:
        if self.sync is None:
            await self.responder.start()
            return
        await self.sync.start()
        self._waiter = asyncio.create_task(self._serve_once_synced())

    async def _serve_once_synced(self) -> None:
        # Answering before our own estimate has converged would hand the sites a wrong clock.
        while not self.synced:
            await asyncio.sleep(0.1)
        await self.responder.start()

    async def stop(self) -> None:
        if self._waiter is not None:
            self._waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._waiter
        with contextlib.suppress(Exception):
            await self.responder.stop()
        if self.sync is not None:
            await self.sync.stop()
