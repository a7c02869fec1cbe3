"""The site side of desired state: watch this site's key in the KV bucket and hand each new value over."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client

from citycast.bus.desired import DesiredState, DesiredStateError, desired_bucket
from citycast.bus.subjects import Subjects

log = logging.getLogger(__name__)


class DesiredWatcher:
    """Follows one key for months. The watch is re-created after any error or reconnection, and a new watch
    starts with the key's latest value, so a site that was away converges on what it missed."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        site: str,
        on_change: Callable[[DesiredState], None],
        *,
        retry_s: float = 2.0,
    ) -> None:
        self.nc = nc
        self.bucket = desired_bucket(subjects)
        self.site = site
        self.on_change = on_change
        self.retry_s = retry_s
        self.current: DesiredState | None = None
        self.bad_values = 0

    async def run(self) -> None:
        while True:
            watcher = None
            try:
                reconnects = self.nc.stats["reconnects"]
                kv = await self.nc.jetstream().key_value(self.bucket)
                watcher = await kv.watch(self.site)
                # After a reconnection the old consumer may be gone or behind: start a new watch, which begins
                # with the key's latest value.
                while self.nc.stats["reconnects"] == reconnects:
                    try:
                        entry = await watcher.updates(timeout=self.retry_s)  # type: ignore[no-untyped-call]
                    except nats.errors.TimeoutError:
                        continue
                    if entry is None or entry.value is None or entry.operation is not None:
                        continue  # end-of-initial-values marker, or a delete: keep what we have
                    self._apply(entry.value)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # no bucket yet (hub not up), a disconnect, a lost consumer: try again
                log.debug("%s: desired-state watch: %r; retrying", self.site, e)
                await asyncio.sleep(self.retry_s)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]

    def _apply(self, value: bytes) -> None:
        try:
            state = DesiredState.from_json(value)
        except DesiredStateError as e:
            self.bad_values += 1
            log.warning("%s: ignoring a bad desired state: %s", self.site, e)
            return
        if state != self.current:
            self.current = state
            self.on_change(state)
