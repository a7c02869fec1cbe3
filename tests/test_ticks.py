"""Pollers sleeping to a shared grid wake on the same instants, whatever phase they started at."""

from __future__ import annotations

import asyncio

from citycast.ticks import sleep_to_grid


def _phase(t: float, period: float) -> float:
    """Distance of `t` from the nearest multiple of `period`."""
    r = t % period
    return min(r, period - r)


async def test_a_sleep_ends_on_the_next_grid_point() -> None:
    loop = asyncio.get_running_loop()
    for offset in (0.0, 0.013, 0.031):
        await asyncio.sleep(offset)
        before = loop.time()
        await sleep_to_grid(0.04)
        after = loop.time()
        assert after - before <= 0.04 + 0.005  # never more than one period (plus the loop's lateness)
        assert _phase(after, 0.04) < 0.005


async def test_pollers_of_dividing_periods_share_their_wake_ups() -> None:
    loop = asyncio.get_running_loop()
    woke: dict[str, list[float]] = {"fast": [], "slow": []}

    async def poll(name: str, period: float, count: int) -> None:
        await asyncio.sleep(0.017 if name == "slow" else 0.0)  # started at different phases
        for _ in range(count):
            await sleep_to_grid(period)
            woke[name].append(loop.time())

    # The fast one polls past the slow one's last wake-up: four slow periods from a later start can end one grid
    # point beyond eight fast ones (a CI run failed so, 49 ms from the fast one's last).
    await asyncio.gather(poll("fast", 0.05, 12), poll("slow", 0.1, 4))
    for t in woke["slow"]:  # every slow wake-up is one of the fast one's (apart, they would be 17 ms off)
        assert min(abs(t - f) for f in woke["fast"]) < 0.005
