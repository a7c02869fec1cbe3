import asyncio
import contextlib
import logging
import time

import pytest
from tests.helpers import let_time_pass, wait_until

from citycast.tasks import cancel_and_wait


async def _loop_on_wait_for(box: list[asyncio.Future[int]]) -> None:
    """A worker in the shape of a sync loop: waits for an answer with a timeout, again and again."""
    while True:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        box.append(fut)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, 1.0)
        await asyncio.sleep(0)


async def test_a_task_that_swallowed_its_cancellation_is_stopped_anyway() -> None:
    box: list[asyncio.Future[int]] = []
    task = asyncio.create_task(_loop_on_wait_for(box))
    await wait_until(lambda: box, "the worker waiting for an answer")
    # The answer and the stop land in the same loop turn: 3.11's wait_for returns the answer, the cancel is lost.
    box[-1].set_result(1)
    task.cancel()
    await let_time_pass(0.05)  # room for the worker to stop, were the cancel not lost
    assert not task.done()  # the hazard is real on this Python
    started = time.monotonic()
    await cancel_and_wait(task)
    assert task.cancelled()
    assert time.monotonic() - started < 2.0


async def test_a_task_that_will_not_stop_is_left_after_the_grace(caplog: pytest.LogCaptureFixture) -> None:
    stubborn_may_end = asyncio.Event()

    async def stubborn() -> None:
        while not stubborn_may_end.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="citycast.tasks"):
        started = time.monotonic()
        await cancel_and_wait(task, grace_s=0.3)
    assert 0.25 < time.monotonic() - started < 2.0
    assert not task.done() and "stubborn" in caplog.text
    stubborn_may_end.set()
    await cancel_and_wait(task)
    assert task.done()


async def test_failures_are_logged_not_raised_and_none_and_self_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise RuntimeError("worker broke")

    async def runs() -> None:
        await asyncio.sleep(10)

    failed = asyncio.create_task(fails())
    running = asyncio.create_task(runs())
    await wait_until(failed.done, "the failing worker to fail")
    with caplog.at_level(logging.WARNING, logger="citycast.tasks"):
        await cancel_and_wait(failed, None, running, asyncio.current_task())
    assert running.cancelled() and "worker broke" in caplog.text


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.5)

    worker = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(worker))
    await asyncio.sleep(0.05)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    await cancel_and_wait(worker)
