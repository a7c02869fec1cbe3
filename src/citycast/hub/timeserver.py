"""The time service a process offers: the hub's own clock, or a city responder's estimate of it."""

from __future__ import annotations

import contextlib
from pathlib import Path

from citycast.clock.estimator import ClockEstimator
from citycast.clock.local import Clock, SystemClock
from citycast.clock.service import ClockSync, EstimatedClock, TimeResponder
from citycast.protocol.subjects import Subjects


class TimeService:
    """With `upstream` unset this is the broadcast clock itself (the hub). With an upstream subject it is a city
    responder: it syncs to the hub over the long-haul link and serves its estimate to the sites near it, so the
    link's asymmetry shifts a whole city together instead of skewing its sites apart. Until its own estimate has
    converged it stays silent rather than hand the sites a wrong clock."""

    def __init__(
        self,
        url: str,
        subjects: Subjects,
        *,
        zone: str | None = None,
        upstream: str | None = None,
        creds: Path | None = None,
        upstream_inbox_prefix: str | None = None,
    ) -> None:
        self.local = SystemClock()
        self.sync: ClockSync | None = None
        if upstream is not None:
            # The city's sites track whatever this responder serves; a clock that changes rate gently (and
            # whose corrections are slewed over minutes, not seconds) is one they all track alike.
            gentle = ClockEstimator(max_slew_ppm=20.0, slew_time_ns=60_000_000_000)
            self.sync = ClockSync(
                url, upstream, self.local, estimator=gentle, creds=creds, inbox_prefix=upstream_inbox_prefix
            )
        served: Clock = self.local if self.sync is None else EstimatedClock(self.sync.estimator, self.local)
        self.responder = TimeResponder(url, subjects.time(zone), served, ready=lambda: self.synced, creds=creds)

    @property
    def synced(self) -> bool:
        return self.sync is None or self.sync.estimator.synced

    async def start(self) -> None:
        if self.sync is not None:
            await self.sync.start()
        await self.responder.start()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.responder.stop()
        if self.sync is not None:
            await self.sync.stop()
