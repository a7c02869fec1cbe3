"""The hub's media plane: the city's audio on a thread and event loop of its own.

Everything whose lateness a loudspeaker would hear runs here (the broadcasters, the recorders' bus input, the
time responder, the telephone's RTP), with its own NATS connection. The control plane (HTTP API and console,
database, password and PIN checks, scheduler, fleet monitor) keeps the process's main loop. A slow request
handler, a big query or a flood of logins then delays only the main loop; the media loop is delayed at most by
the GIL, which the interpreter hands over every `SWITCH_INTERVAL_S` (and which Argon2, SQLite and Opus release
while they work).

Crossing between the two loops goes only through this class: `run()` awaits a coroutine on the media loop from
the control loop (a cancellation of the caller cancels it there), `submit()` starts one without waiting,
`call_soon()` runs a plain callable there. Objects created on the media loop (tasks, sockets, the NATS client)
are used only from it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from nats.aio.client import Client

from citycast.bus.connection import connect

log = logging.getLogger(__name__)

T = TypeVar("T")

# The media thread's CPU priority when the process may raise it (root or CAP_SYS_NICE, e.g. systemd's
# CPUSchedulingPriority/AmbientCapabilities): the web side and anything else on the box at nice 0 then wait for it.
MEDIA_NICE = -10

# Python's default (5 ms) lets a busy control thread hold the GIL for 5 ms at a time, a quarter of a frame.
SWITCH_INTERVAL_S = 0.001


class MediaPlaneError(RuntimeError):
    pass


class MediaPlane:
    """A thread running its own event loop (uvloop where present) and its own NATS connection."""

    def __init__(self, nats_url: str, *, creds: Path | None = None, name: str = "hub-media") -> None:
        self.nats_url = nats_url
        self.creds = creds
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: Client | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise MediaPlaneError("the media plane is not started")
        return self._loop

    @property
    def nc(self) -> Client:
        """The media plane's NATS connection: use it only from coroutines running on the media loop."""
        if self._nc is None:
            raise MediaPlaneError("the media plane is not started")
        return self._nc

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def in_media_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    # -- life -----------------------------------------------------------------------------------------------
    async def start(self, timeout_s: float = 30.0) -> None:
        """Start the thread and connect to NATS; returns when the media loop is serving."""
        if self._thread is not None:
            return
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        ready = await asyncio.to_thread(self._ready.wait, timeout_s)
        if self._start_error is not None:
            raise MediaPlaneError(f"the media plane did not start: {self._start_error}") from self._start_error
        if not ready:
            raise MediaPlaneError(f"the media plane did not start within {timeout_s:.0f} s")

    def _main(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MEDIA_NICE)
        except (AttributeError, OSError) as e:  # not permitted: the hash pool still yields to us (nice 19)
            log.info("media plane: cannot raise its CPU priority (%s); running at the process's", e)
        try:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we run on
            loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._connect())
        except BaseException as e:
            self._start_error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _connect(self) -> None:
        self._nc = await connect(self.nats_url, name=self.name, creds=self.creds)

    async def stop(self) -> None:
        """Cancel what still runs on the media loop, drain the NATS connection, end the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or not thread.is_alive():
            return
        with contextlib.suppress(Exception):
            await self.run(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 10.0)
        self._thread = None

    async def _shutdown(self) -> None:
        from citycast.tasks import cancel_and_wait

        me = asyncio.current_task()
        await cancel_and_wait(*(t for t in asyncio.all_tasks() if t is not me))
        if self._nc is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._nc.drain()

    # -- crossing -------------------------------------------------------------------------------------------
    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start `coro` on the media loop; the returned future is safe to use from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the media loop and wait for its result from the calling loop. Cancelling the caller
        cancels the coroutine on the media loop and waits (up to 5 s) until it has really ended there."""
        if self.in_media_thread():
            return await coro
        started, ended = threading.Event(), threading.Event()

        async def tracked() -> T:
            started.set()
            try:
                return await coro
            finally:
                ended.set()

        fut = self.submit(tracked())
        try:
            return await asyncio.shield(asyncio.wrap_future(fut))
        except asyncio.CancelledError:
            fut.cancel()
            # A coroutine cancelled before it ever ran has nothing to wait for.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    while started.is_set() and not ended.is_set():
                        await asyncio.sleep(0.005)
            raise

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a plain callable on the media loop (from any thread)."""
        self.loop.call_soon_threadsafe(fn, *args)
