"""The site side of desired state: follow what the hub wants of this site, and converge after being away.

The hub publishes each change on `desired.<site>`; the site subscribes to it and also asks `desired-get.<site>`
for the current value at start, after every reconnection (what was published meanwhile was lost) and every
`refresh_s` as a safety net. Values carry the hub's KV revision; an older one (an answer that crossed a newer
publish) never replaces a newer one. The site's NATS user may do exactly this and no more: no JetStream at all
(see citycast.hub.desired for why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from citycast.protocol.desired import REVISION_HEADER, DesiredState, DesiredStateError
from citycast.protocol.subjects import Subjects

log = logging.getLogger(__name__)

REFRESH_S = 60.0


class DesiredWatcher:
    """Follows one site's desired state for months; `on_change` gets each new value once."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        site: str,
        on_change: Callable[[DesiredState], None],
        *,
        retry_s: float = 2.0,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.site = site
        self.on_change = on_change
        self.retry_s = retry_s
        self.refresh_s = refresh_s
        self.current: DesiredState | None = None
        self.revision = -1
        self.bad_values = 0
        self.asked = 0  # get requests answered so far
        self._older_answer: int | None = None  # an answer older than what we have, seen once

    async def run(self) -> None:
        sub: Subscription | None = None
        try:
            while sub is None:
                try:
                    sub = await self.nc.subscribe(self.subjects.desired(self.site), cb=self._on_publish)
                except Exception as e:  # not connected yet: nats-py queues nothing for us, so try again
                    log.debug("%s: cannot subscribe to desired state: %r", self.site, e)
                    await asyncio.sleep(self.retry_s)
            seen_reconnects = -1
            next_refresh = 0.0
            loop = asyncio.get_running_loop()
            while True:
                reconnects = self.nc.stats["reconnects"]
                if reconnects != seen_reconnects or loop.time() >= next_refresh:
                    if await self._ask():
                        seen_reconnects = reconnects
                        next_refresh = loop.time() + self.refresh_s
                    else:
                        await asyncio.sleep(self.retry_s)
                        continue
                await asyncio.sleep(min(self.retry_s, self.refresh_s))
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _ask(self) -> bool:
        try:
            reply = await self.nc.request(self.subjects.desired_get(self.site), b"", timeout=self.retry_s)
        except asyncio.CancelledError:
            raise
        except (nats.errors.Error, TimeoutError, OSError) as e:  # hub not up, no responder, disconnected
            log.debug("%s: desired state not answered: %r", self.site, e)
            return False
        self.asked += 1
        if not reply.data:
            return True
        revision = _revision(reply)
        if revision is not None and revision < self.revision:
            # Either it crossed a newer publish (asking again gives the newer one) or the hub's store was
            # started afresh (asking again gives this one again: then it is the truth).
            if self._older_answer != revision:
                self._older_answer = revision
                return False
            self.revision = -1
        self._older_answer = None
        self._take(reply)
        return True

    async def _on_publish(self, msg: Msg) -> None:
        self._take(msg)

    def _take(self, msg: Msg) -> None:
        revision = _revision(msg)
        try:
            if revision is None:
                raise DesiredStateError(f"no {REVISION_HEADER} header")
            state = DesiredState.from_json(msg.data)
        except (ValueError, DesiredStateError) as e:
            self.bad_values += 1
            log.warning("%s: ignoring a bad desired state: %s", self.site, e)
            return
        if revision <= self.revision:
            return  # already had it, or newer
        self.revision = revision
        if state != self.current:
            self.current = state
            self.on_change(state)


def _revision(msg: Msg) -> int | None:
    try:
        return int((msg.headers or {}).get(REVISION_HEADER, ""))
    except ValueError:
        return None
