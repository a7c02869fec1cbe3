"""In-process fan-out of console events to WebSocket clients.

The hub never waits for a browser: each subscriber has a bounded queue, and a subscriber that falls behind (a
tab on a bad link, a laptop asleep) has its backlog thrown away and receives one `{"type": "resync"}` instead,
after which its WebSocket handler sends a fresh snapshot. Call `publish` from the event loop's thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

RESYNC: dict[str, Any] = {"type": "resync"}
DEFAULT_QUEUE = 256


class Subscription:
    """One client's stream of events: `async for event in subscription`, or `await subscription.get()`."""

    def __init__(self, hub: EventHub, maxsize: int) -> None:
        self._hub = hub
        self._maxsize = maxsize
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self.closed = False
        self.dropped = 0  # events thrown away because this client was too slow
        self.resyncs = 0

    def _put(self, event: dict[str, Any]) -> None:
        if len(self._queue) >= self._maxsize:
            self.dropped += len(self._queue)
            self.resyncs += 1
            self._queue.clear()
            self._queue.append(RESYNC)
            # The event that did not fit is dropped too: the snapshot after the resync includes it.
            self.dropped += 1
        else:
            self._queue.append(event)
        self._wake.set()

    async def get(self) -> dict[str, Any]:
        """The next event; raises `StopAsyncIteration` once closed and drained."""
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._queue.popleft()

    def pending(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._hub._subscribers.discard(self)
            self._wake.set()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.get()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EventHub:
    def __init__(self, queue_size: int = DEFAULT_QUEUE) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self.published = 0

    def publish(self, event: dict[str, Any]) -> None:
        """Hand an event to every subscriber; never blocks. Subscribers must treat events as read-only."""
        self.published += 1
        for sub in self._subscribers:
            sub._put(event)

    def subscribe(self, queue_size: int | None = None) -> Subscription:
        sub = Subscription(self, queue_size or self.queue_size)
        self._subscribers.add(sub)
        return sub

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """Ends every subscription (at hub shutdown): their iterators stop after what is queued."""
        for sub in list(self._subscribers):
            sub.close()
