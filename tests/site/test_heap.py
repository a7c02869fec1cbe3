"""A started site leaves its long-lived objects out of the collector's full passes (site/heap.py)."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from citycast.bus.server import EmbeddedNats
from citycast.media.keys import generate_private_key
from citycast.media.sinks import TimedSink
from citycast.site.agent import SiteAgent, SiteConfig

PROBE = """
import gc, weakref
import citycast.site.agent, citycast.site.run
from citycast.site import heap
tracked = len(gc.get_objects())
frozen = heap.settle()
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made after settling: only the collector frees it
gone = weakref.ref(a)
del a, b
gc.collect()
print(tracked, frozen, len(gc.get_objects()), gone() is None)
"""


def test_settling_freezes_the_start_up_objects_and_later_garbage_is_still_collected() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    tracked, frozen, left, collected = out.stdout.split()
    assert int(frozen) > 0.9 * int(tracked) > 10_000  # the site's modules are tens of thousands of objects
    assert int(left) < 0.05 * int(tracked)  # what a full collection still walks
    assert collected == "True"


async def test_a_started_agent_has_settled_the_heap(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    gc.unfreeze()
    try:
        cfg = SiteConfig(name="s1", nats_url=nats_server.url, trusted_keys=[generate_private_key().public_key()],
                         clock_mode="system")  # fmt: skip
        agent = SiteAgent(cfg, TimedSink(block=480))
        await agent.start()
        assert gc.get_freeze_count() > 10_000
        await agent.stop()
    finally:
        gc.unfreeze()  # the test process's objects go back to the collector
