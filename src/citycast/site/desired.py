"""The site side of desired state: watch this site's key in the KV bucket and hand each new value over.

Not nats-py's `kv.watch`: that creates an unnamed consumer, and the JetStream API subject of an unnamed create
does not say what it reads, so a site allowed to watch its key could have watched every site's. Here the site
creates a push consumer with a name and a filter on its own key, which nats-server puts in the subject
(`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`); the site's NATS user may publish that subject for its own
key only (`citycast.bus.authority.site_permissions`). Nothing else of JetStream is open to it: no stream info,
no consumer info, no deletes (the consumer goes away by itself when nobody listens), no flow control.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header

from citycast.bus.desired import (
    DesiredState,
    DesiredStateError,
    desired_key_subject,
    desired_stream,
)
from citycast.bus.subjects import Subjects

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0  # the server's idle heartbeat on the watch: three missed ones mean the consumer is gone
INACTIVE_S = 60.0  # a watch nobody listens to any more is removed by the server after this


class DesiredWatchLost(RuntimeError):
    pass


class DesiredWatcher:
    """Follows one key for months. The watch is re-created after any error, a reconnection or three missed
    heartbeats, and a new watch starts with the key's latest value, so a site that was away converges on what
    it missed."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        site: str,
        on_change: Callable[[DesiredState], None],
        *,
        retry_s: float = 2.0,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.nc = nc
        self.stream = desired_stream(subjects)
        self.key_subject = desired_key_subject(subjects, site)
        self.site = site
        self.on_change = on_change
        self.retry_s = retry_s
        self.heartbeat_s = heartbeat_s
        self.current: DesiredState | None = None
        self.bad_values = 0
        self.watches = 0  # consumers created so far: 1 in a quiet life, one more per lost watch

    async def run(self) -> None:
        while True:
            sub = None
            try:
                reconnects = self.nc.stats["reconnects"]
                deliver = self.nc.new_inbox()  # under the site's own inbox prefix: the only place it may listen
                sub = await self.nc.subscribe(deliver)
                await self.nc.jetstream().add_consumer(self.stream, self._consumer(deliver))
                self.watches += 1
                await self._follow(sub, reconnects)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # no bucket yet (hub not up), a disconnect, a lost consumer: try again
                log.debug("%s: desired-state watch: %r; retrying", self.site, e)
                await asyncio.sleep(self.retry_s)
            finally:
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()

    def _consumer(self, deliver: str) -> ConsumerConfig:
        return ConsumerConfig(
            name=f"{self.site}-{secrets.token_hex(6)}",
            filter_subject=self.key_subject,
            deliver_subject=deliver,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,  # the latest value first, then every change
            ack_policy=AckPolicy.NONE,
            idle_heartbeat=self.heartbeat_s,
            inactive_threshold=INACTIVE_S,
            mem_storage=True,
            num_replicas=1,
        )

    async def _follow(self, sub: Subscription, reconnects: int) -> None:
        # After a reconnection the consumer may be gone or behind: the caller starts a new one.
        heard = time.monotonic()
        while self.nc.stats["reconnects"] == reconnects:
            try:
                msg = await sub.next_msg(timeout=min(self.retry_s, self.heartbeat_s))
            except nats.errors.TimeoutError:
                if time.monotonic() - heard > 3 * self.heartbeat_s:
                    raise DesiredWatchLost("no heartbeat from the desired-state watch") from None
                continue
            heard = time.monotonic()
            headers = msg.headers or {}
            if headers.get(Header.STATUS.value):
                continue  # an idle heartbeat
            if headers.get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
                continue  # a delete: keep what we have
            self._apply(msg.data)

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
