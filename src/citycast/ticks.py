"""Periodic pollers that share one grid of the event loop's clock, so a process wakes once for all of them.

On a small box a wake-up of a Python process costs far more than what a poller does when it wakes: on this
project's 2-core test machine a bare `asyncio.sleep(0.01)` loop costs 180-230 µs of CPU a turn (a C `nanosleep`
loop 52 µs), mostly the interpreter's memory coming back into cache. A site ran its pollers at their own phases
(the clock map, uplink and time-responder health every 250-500 ms, receipts every second, clock memory): each was
a wake-up of its own. Sleeping to the next multiple of the period on the loop's clock puts every poller whose
period divides another's on the same instants, and in a process of many agents all of them. The state poll (every
100 ms) stays off the grid: at 250 ms on it, the fault drills' sites reported a path's return ~1 s late.
"""

from __future__ import annotations

import asyncio

GRID_S = 0.25  # the site's pollers use this period or a multiple of it


async def sleep_to_grid(period_s: float) -> None:
    """Sleep until the loop's clock next reaches a whole multiple of `period_s` (at most `period_s`)."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(period_s - loop.time() % period_s)
