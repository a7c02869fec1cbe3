"""The media plane: its own thread and loop, its own NATS connection, cancellation crossing the loops."""

from __future__ import annotations

import asyncio
import threading

import pytest
from tests.helpers import wait_until

from citycast.bus.server import EmbeddedNats
from citycast.hub.media_plane import MediaPlane, MediaPlaneError


async def test_runs_on_its_own_thread_and_publishes(nats_server: EmbeddedNats) -> None:
    plane = MediaPlane(nats_server.url)
    await plane.start()
    try:
        assert plane.thread is not None and plane.thread is not threading.current_thread()

        async def where() -> str:
            return threading.current_thread().name

        assert await plane.run(where()) == "hub-media"
        got: list[bytes] = []

        async def sub_and_pub() -> None:
            ev = asyncio.Event()

            async def cb(msg: object) -> None:
                got.append(msg.data)  # type: ignore[attr-defined]
                ev.set()

            await plane.nc.subscribe("t.x", cb=cb)
            await plane.nc.publish("t.x", b"hello")
            async with asyncio.timeout(5):
                await ev.wait()

        await plane.run(sub_and_pub())
        assert got == [b"hello"]
    finally:
        await plane.stop()
    assert plane.thread is None


async def test_cancelling_the_caller_cancels_on_the_media_loop(nats_server: EmbeddedNats) -> None:
    plane = MediaPlane(nats_server.url)
    await plane.start()
    started, ended = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)  # until cancelled
        finally:
            ended.set()

    try:
        task = asyncio.create_task(plane.run(forever()))
        await wait_until(started.is_set, "the coroutine to run on the media loop")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ended.is_set()
    finally:
        await plane.stop()


async def test_a_control_loop_busy_with_blocking_work_does_not_stall_the_media_loop(
    nats_server: EmbeddedNats,
) -> None:
    plane = MediaPlane(nats_server.url)
    await plane.start()
    try:

        async def ticks() -> float:
            loop = asyncio.get_running_loop()
            worst, last = 0.0, loop.time()
            for _ in range(50):
                await asyncio.sleep(0.01)
                now = loop.time()
                worst, last = max(worst, now - last - 0.01), now
            return worst

        fut = asyncio.wrap_future(plane.submit(ticks()))
        # The control loop itself is blocked for 300 ms in pure Python: only the GIL is shared.
        deadline = asyncio.get_running_loop().time() + 0.3
        while asyncio.get_running_loop().time() < deadline:
            sum(range(1000))
        worst = await fut
        assert worst < 0.1, f"the media loop stalled {worst * 1e3:.0f} ms while the control loop was busy"
    finally:
        await plane.stop()


async def test_not_started_is_a_clear_error() -> None:
    plane = MediaPlane("nats://127.0.0.1:1")
    with pytest.raises(MediaPlaneError):
        _ = plane.nc
