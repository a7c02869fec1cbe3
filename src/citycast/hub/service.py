"""The hub process as far as the media core needs it: the broadcast clock's time service on the bus."""

from __future__ import annotations

import asyncio

from citycast.bus.subjects import Subjects
from citycast.hub.timeserver import TimeService


async def run_hub(
    nats_url: str,
    *,
    prefix: str = "citycast",
    zone: str | None = None,
    upstream: bool = False,
    duration: float | None = None,
) -> None:
    subjects = Subjects(prefix)
    service = TimeService(nats_url, subjects, zone=zone, upstream=subjects.time() if upstream else None)
    await service.start()
    try:
        if duration is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(duration)
    finally:
        await service.stop()
