from __future__ import annotations

import asyncio
import time

import nats

from citycast.bus.server import EmbeddedNats
from citycast.bus.wire import WireMessage, open_wire
from citycast.clock.local import SkewedClock, SystemClock


async def test_messages_carry_the_kernel_receive_time(nats_server: EmbeddedNats) -> None:
    got: list[WireMessage] = []
    wire = await open_wire(nats_server.url, got.append, SystemClock())
    assert wire.kernel_timestamps
    wire.subscribe("t.>")
    nc = await nats.connect(nats_server.url)
    await nc.flush()
    await asyncio.sleep(0.05)
    before = time.time_ns()
    await nc.publish("t.a", b"one", reply="r.1")
    await nc.publish("t.b", b"x" * 70_000)
    await nc.flush()
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    after = time.time_ns()
    assert [m.subject for m in got] == ["t.a", "t.b"]
    assert got[0].reply == "r.1" and got[0].payload == b"one"
    assert len(got[1].payload) == 70_000
    assert all(before <= m.received_ns <= after for m in got)
    await nc.close()
    wire.close()


async def test_receive_time_is_read_on_the_sites_own_clock(nats_server: EmbeddedNats) -> None:
    skewed = SkewedClock(offset_ns=5_000_000_000, ppm=50.0)
    got: list[WireMessage] = []
    wire = await open_wire(nats_server.url, got.append, skewed)
    wire.subscribe("t")
    wire.publish("t", b"me")  # loops back through the server
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert abs(got[0].received_ns - skewed.now_ns()) < 1_000_000_000
    wire.close()


async def test_server_closing_is_noticed(nats_server: EmbeddedNats) -> None:
    wire = await open_wire(nats_server.url, lambda m: None, SystemClock())
    nats_server.stop()
    await asyncio.wait_for(wire.closed, 10)
