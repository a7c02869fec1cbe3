"""The hub side of desired state: one KV bucket, one key per site, written only when a value changes."""

from __future__ import annotations

import contextlib
import logging

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from citycast.bus.desired import DesiredState, desired_bucket
from citycast.bus.subjects import Subjects

log = logging.getLogger(__name__)


class DesiredStore:
    def __init__(self, nc: Client, subjects: Subjects) -> None:
        self.nc = nc
        self.bucket = desired_bucket(subjects)
        self._kv: KeyValue | None = None
        self._written: dict[str, DesiredState] = {}
        self.writes = 0

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
            state = await self.get(key)
            if state is not None:
                self._written[key] = state

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("DesiredStore.open() was not awaited")
        return self._kv

    async def get(self, site: str) -> DesiredState | None:
        try:
            entry = await self.kv.get(site)
        except (NotFoundError, KeyError):
            return None
        if entry.value is None:
            return None
        try:
            return DesiredState.from_json(entry.value)
        except ValueError as e:
            log.warning("desired state of %s is unreadable (%s); it will be rewritten", site, e)
            return None

    async def put(self, site: str, state: DesiredState) -> bool:
        """Write if different from what was written; True when written."""
        if self._written.get(site) == state:
            return False
        await self.kv.put(site, state.to_json())
        self._written[site] = state
        self.writes += 1
        return True

    async def delete(self, site: str) -> None:
        self._written.pop(site, None)
        with contextlib.suppress(NotFoundError):
            await self.kv.delete(site)
