"""Keeping the garbage collector's bursts short on a box with a small share of a core.

A site's process holds tens of thousands of objects that live as long as it does: modules, classes, numpy's and
nats-py's internals, the agent itself. CPython's full collection walks all of them: about 12 ms of a core here
right after start-up, in one burst. A board that gives a site 10-25 % of a core gets 2-5 ms of every 20 ms frame
under a CPU quota, so such a burst holds the renderer past its block's deadline: the late blocks the quota
benchmark found even at 25 % (docs/benchmarks.md, "On a small board's CPU budget"). Once the agent has started,
those objects are collected once and moved out of the collector's reach (`gc.freeze`); full collections then walk
only what was made since. Objects made later are collected as before, so nothing the agent drops is kept.
"""

from __future__ import annotations

import gc


def settle() -> int:
    """Collect once, then freeze what survived. Returns how many objects the collector will no longer walk."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
