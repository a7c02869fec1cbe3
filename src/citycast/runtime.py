"""Running an asyncio main the way a service must: uvloop when present, SIGTERM/SIGINT stop it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T | None:
    """Run `main`; a signal cancels it so its `finally` blocks close files and connections."""

    async def wrapper() -> T | None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, lambda: task.cancel() if task else None)
        try:
            return await main
        except asyncio.CancelledError:
            return None

    try:
        import uvloop

        return uvloop.run(wrapper())
    except ImportError:
        return asyncio.run(wrapper())
