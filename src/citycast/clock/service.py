"""The time service over NATS: a responder that stamps requests, and a client that keeps an estimator fed.

Wire format (request/reply on one subject):

- request: any payload of at most 64 bytes (clients send their t1 as 8 bytes, big-endian i64; the responder
  does not read it); larger requests are ignored;
- reply: 16 bytes, ``t2`` (request received) and ``t3`` (reply sent), big-endian i64 nanoseconds of the
  responder's clock.

A responder may serve its own *estimate* of the broadcast clock (``clock=lambda: est.to_broadcast(...)``), so
sites sync to a responder near them (one per city, beside the leafnode) which itself syncs to the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable
from typing import Any

from citycast.clock.estimator import ClockEstimator
from citycast.clock.local import Clock

log = logging.getLogger(__name__)

_REPLY = struct.Struct(">qq")
_REQUEST = struct.Struct(">q")
MAX_REQUEST_BYTES = 64


class TimeResponder:
    """Answers time requests on `subject` with (t2, t3) read from `clock`.

    `ready`, if given, gates the service: while it returns False requests go unanswered (a city responder
    that is not yet synced to the hub should not hand out its raw local clock).
    """

    def __init__(
        self,
        nc: Any,
        subject: str,
        clock: Callable[[], int],
        *,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self._nc = nc
        self.subject = subject
        self._clock = clock
        self._ready = ready
        self._sub: Any = None
        self.answered = 0
        self.ignored = 0

    async def start(self) -> None:
        if self._sub is None:
            self._sub = await self._nc.subscribe(self.subject, cb=self._on_request)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_request(self, msg: Any) -> None:
        t2 = self._clock()
        try:
            if not msg.reply or len(msg.data) > MAX_REQUEST_BYTES or (self._ready and not self._ready()):
                self.ignored += 1
                return
            t3 = self._clock()
            await msg.respond(_REPLY.pack(t2, t3))
            self.answered += 1
        except Exception:  # a bad request or a closing connection must never take the responder down
            self.ignored += 1
            log.debug("time request not answered", exc_info=True)


class ClockSync:
    """Runs NTP-style exchanges against a `TimeResponder` and feeds a `ClockEstimator`.

    Timeouts and errors are counted in `failures` and retried; they never end the task.
    """

    def __init__(
        self,
        nc: Any,
        subject: str,
        clock: Clock,
        estimator: ClockEstimator | None = None,
        *,
        timeout_s: float = 1.0,
        retry_interval_s: float = 1.0,
    ) -> None:
        self._nc = nc
        self.subject = subject
        self.clock = clock
        self.estimator = estimator if estimator is not None else ClockEstimator()
        self.timeout_s = timeout_s
        self.retry_interval_s = retry_interval_s
        self.last_rtt_ns: int | None = None
        self.exchanges = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"clock-sync:{self.subject}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def exchange(self) -> bool:
        """One exchange; True if it produced a sample."""
        clock = self.clock
        t1 = clock.now_ns()
        try:
            msg = await self._nc.request(self.subject, _REQUEST.pack(t1), timeout=self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # timeout, no responders, reconnecting: count it, try again later
            self.failures += 1
            log.debug("time exchange on %s failed: %r", self.subject, exc)
            return False
        t4 = clock.now_ns()
        data = msg.data
        if len(data) != _REPLY.size:
            self.failures += 1
            return False
        t2, t3 = _REPLY.unpack(data)
        self.exchanges += 1
        self.last_rtt_ns = t4 - t1
        self.estimator.add_sample(t1, t2, t3, t4)
        return True

    async def _run(self) -> None:
        while True:
            ok = await self.exchange()
            interval = self.estimator.next_interval_ns() / 1e9
            if not ok:
                interval = max(interval, self.retry_interval_s)
            await asyncio.sleep(interval)
