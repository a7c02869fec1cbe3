"""The hub side of desired state: kept in a KV bucket (it survives hub restarts), handed to sites over plain NATS.

Sites never touch JetStream. Any JetStream call lets its caller choose where the server sends the answer (a push
consumer's deliver subject, a request's reply subject), and the server may send anywhere in the account: a site's
credentials could have aimed its own desired-state entry at an audio or command subject. So the hub publishes
each change on `desired.<site>` (a site may subscribe to its own only) and answers `desired-get.<site>` requests
(a site may ask for its own only) with the current value, and only to that site's own inbox.

Each message carries the KV revision in a header, so a site never takes an older value (an answer to a get that
crossed a newer publish) for a newer one.

A publish can be lost on the way without the site's own connection ever dropping: after a hub restart the city's
leafnode is back before the site's interest has crossed it again, and the new address's desired state goes
nowhere. The site would learn it at its next refresh, a minute later. So the hub also reads every site's report:
a site that says it plays another channel than the one wished for it is sent its desired state again (`nudge`, at
most once every 2 s per site; a site that already has that revision ignores it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import BucketNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from citycast.protocol.desired import REVISION_HEADER, DesiredState, desired_bucket
from citycast.protocol.subjects import Subjects

log = logging.getLogger(__name__)

_ANY_INBOX = "_INBOX"
NUDGE_INTERVAL_NS = 2_000_000_000


class DesiredStore:
    """`reply_prefix(site)`, when given (a hub in JWT mode), is the only inbox prefix a site's get is answered on;
    without it any inbox is (a bus without per-site users has no one to tell apart)."""

    def __init__(self, nc: Client, subjects: Subjects, *, reply_prefix: Callable[[str], str] | None = None) -> None:
        self.nc = nc
        self.subjects = subjects
        self.bucket = desired_bucket(subjects)
        self.reply_prefix = reply_prefix
        self._kv: KeyValue | None = None
        self._written: dict[str, tuple[DesiredState, int]] = {}  # site -> (state, KV revision)
        self._sub: Subscription | None = None
        self.writes = 0
        self.answered = 0
        self.refused = 0  # get requests with a reply subject that is not the asking site's inbox
        self.nudges = 0  # desired states sent again to a site that reported another channel
        self._nudged: dict[str, int] = {}  # site -> when it was last sent again
        self._sending: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        js = self.nc.jetstream()
        try:
            self._kv = await js.key_value(self.bucket)
        except (BucketNotFoundError, NotFoundError):
            # history 1: a site needs only the latest wish; older ones are noise.
            self._kv = await js.create_key_value(bucket=self.bucket, history=1, description="citycast desired state")
        # Learn what is already there, so a hub restart rewrites nothing that is already right.
        try:
            keys = await self._kv.keys()
        except (NoKeysError, NotFoundError):  # an empty bucket says "no keys" this way
            keys = []
        for key in keys:
            got = await self._read(key)
            if got is not None:
                self._written[key] = got
        self._sub = await self.nc.subscribe(self.subjects.desired_get_all(), cb=self._on_get)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("DesiredStore.open() was not awaited")
        return self._kv

    async def _read(self, site: str) -> tuple[DesiredState, int] | None:
        try:
            entry = await self.kv.get(site)
        except (NotFoundError, KeyError):
            return None
        if entry.value is None:
            return None
        try:
            return DesiredState.from_json(entry.value), int(entry.revision or 0)
        except ValueError as e:
            log.warning("desired state of %s is unreadable (%s); it will be rewritten", site, e)
            return None

    async def get(self, site: str) -> DesiredState | None:
        got = await self._read(site)
        return got[0] if got is not None else None

    async def put(self, site: str, state: DesiredState) -> bool:
        """Write if different from what was written, and tell the site; True when written."""
        current = self._written.get(site)
        if current is not None and current[0] == state:
            return False
        payload = state.to_json()
        revision = await self.kv.put(site, payload)
        self._written[site] = (state, revision)
        self.writes += 1
        await self.nc.publish(self.subjects.desired(site), payload, headers={REVISION_HEADER: str(revision)})
        return True

    def nudge(self, site: str, channel: int | None, now_ns: int) -> bool:
        """A site reported playing `channel`: if that is not what was wished for it, send the wish again (True)."""
        current = self._written.get(site)
        if current is None or current[0].channel == channel:
            return False
        if now_ns - self._nudged.get(site, -NUDGE_INTERVAL_NS) < NUDGE_INTERVAL_NS:
            return False
        self._nudged[site] = now_ns
        self.nudges += 1
        state, revision = current
        task = asyncio.get_running_loop().create_task(self._send_again(site, state, revision))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        return True

    async def _send_again(self, site: str, state: DesiredState, revision: int) -> None:
        try:
            await self.nc.publish(
                self.subjects.desired(site), state.to_json(), headers={REVISION_HEADER: str(revision)}
            )
        except Exception as e:  # a closing connection: the next report nudges again
            log.debug("desired state of %s not sent again: %r", site, e)

    async def delete(self, site: str) -> None:
        self._written.pop(site, None)
        self._nudged.pop(site, None)
        with contextlib.suppress(NotFoundError):
            await self.kv.delete(site)

    async def _on_get(self, msg: Msg) -> None:
        site = msg.subject.rsplit(".", 1)[-1]
        prefix = f"{self.reply_prefix(site)}." if self.reply_prefix is not None else _ANY_INBOX
        if not msg.reply or not msg.reply.startswith(prefix):
            self.refused += 1
            log.warning("desired state of %s asked with reply subject %r: not answered", site, (msg.reply or "")[:80])
            return
        current = self._written.get(site)
        try:
            if current is None:
                await self.nc.publish(msg.reply, b"")  # nothing wished for this site yet: an empty answer
            else:
                state, revision = current
                await self.nc.publish(msg.reply, state.to_json(), headers={REVISION_HEADER: str(revision)})
            self.answered += 1
        except Exception as e:  # a closing connection: the site asks again
            log.debug("desired state of %s not answered: %r", site, e)
