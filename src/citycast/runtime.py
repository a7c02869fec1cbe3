"""Running an asyncio main the way a service must: uvloop when present, SIGTERM/SIGINT/SIGHUP stop it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run(main: Coroutine[Any, Any, T]) -> T | None:
    """Run `main`; a signal cancels it so its `finally` blocks close files and connections.

    A signal that comes while the loop is still being made (uvloop's import, the loop's set-up) is held and
    stops the process as cleanly: systemd may stop a unit it has only just started."""
    held: list[int] = []
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            previous[sig] = signal.signal(sig, lambda signum, _frame: held.append(signum))

    async def wrapper() -> T | None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, lambda: task.cancel() if task else None)
        if held:
            main.close()
            return None
        try:
            return await main
        except asyncio.CancelledError:
            return None

    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(wrapper())
        return uvloop.run(wrapper())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
