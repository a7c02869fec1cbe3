"""Stopping background tasks so that a stop always returns.

On Python 3.11 a task can swallow its own cancellation: `asyncio.wait_for` (ours are gone, but nats-py and
others use it) returns the awaited result when the cancel lands in the same loop turn as that result, and the
task's loop simply goes on. `task.cancel(); await task` then waits forever; it hung the CI once. Here a task
that is still running after a cancel is cancelled again, and one that outlives the grace period is logged and
left, so the caller's own shutdown goes on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

_RECANCEL_S = 0.5


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None, grace_s: float = 5.0) -> None:
    """Cancel every given task (None and the calling task are skipped) and wait until each has ended.

    Exceptions the tasks ended with are logged, not raised: a stop must not fail because a worker did.
    A cancellation of the caller itself is not swallowed.
    """
    me = asyncio.current_task()
    pending: set[asyncio.Future[Any]] = {t for t in tasks if t is not None and t is not me and not t.done()}
    for t in tasks:
        if t is not None and t.done():
            _reap(t)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while pending:
        for t in pending:
            t.cancel()
        done, pending = await asyncio.wait(pending, timeout=min(_RECANCEL_S, max(0.0, deadline - loop.time())))
        for t in done:
            _reap(t)
        if pending and loop.time() >= deadline:
            log.warning("%d task(s) did not stop within %.1f s and were left running: %s", len(pending), grace_s,
                        ", ".join(_name(t) for t in pending))  # fmt: skip
            return


def _reap(t: asyncio.Future[Any]) -> None:
    if t.cancelled():
        return
    exc = t.exception()  # retrieved, so asyncio does not warn that nobody looked at it
    if exc is not None:
        log.warning("task %s had ended with %r", _name(t), exc)


def _name(t: asyncio.Future[Any]) -> str:
    return t.get_name() if isinstance(t, asyncio.Task) else repr(t)
