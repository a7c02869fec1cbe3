from __future__ import annotations

import asyncio

import nats
from nats.aio.msg import Msg
from tests.helpers import wait_until

from citycast.bus.connection import connect
from citycast.bus.direct import DirectClient
from citycast.bus.server import EmbeddedNats


async def test_payloads_reach_the_function_in_order_without_a_task(nats_server: EmbeddedNats) -> None:
    nc = await connect(nats_server.url, name="direct-test", forever=False)
    assert isinstance(nc, DirectClient)
    got: list[bytes] = []
    tasks_before = len(asyncio.all_tasks())
    sub = await nc.subscribe_direct("audio.x", got.append)
    await nc.flush()
    assert len(asyncio.all_tasks()) == tasks_before  # nats-py keeps no per-subscription task for it
    pub = await nats.connect(nats_server.url)
    for i in range(200):
        await pub.publish("audio.x", i.to_bytes(2, "big") + b"\x00" * 300, headers={"k": "v"} if i == 7 else None)
    await pub.flush()
    await wait_until(lambda: len(got) == 200, "200 payloads delivered", timeout=5)
    assert [int.from_bytes(p[:2], "big") for p in got] == list(range(200))
    assert all(len(p) == 302 for p in got)  # headers are not passed on, the payload is whole
    assert nc.stats["in_msgs"] >= 200
    assert sub.pending_msgs == 0  # nothing went through nats-py's own queue
    await pub.close()
    await nc.close()


async def test_a_handler_that_raises_does_not_stop_the_connection(nats_server: EmbeddedNats) -> None:
    nc = await connect(nats_server.url, name="direct-test", forever=False)
    got: list[bytes] = []

    def fragile(data: bytes) -> None:
        if data == b"bad":
            raise ValueError("a frame the handler chokes on")
        got.append(data)

    await nc.subscribe_direct("audio.x", fragile)
    ordinary: list[Msg] = []

    async def on_msg(msg: Msg) -> None:
        ordinary.append(msg)

    await nc.subscribe("ctl.x", cb=on_msg)  # an ordinary subscription on the same connection still works
    await nc.flush()
    pub = await nats.connect(nats_server.url)
    for payload in (b"one", b"bad", b"two", b"bad", b"three"):
        await pub.publish("audio.x", payload)
    await pub.publish("ctl.x", b"command")
    await pub.flush()
    await wait_until(lambda: len(got) == 3 and len(ordinary) == 1, "the good payloads and the command", timeout=5)
    assert got == [b"one", b"two", b"three"]
    assert nc.direct_errors == 2
    assert nc.is_connected
    assert ordinary[0].data == b"command"
    await pub.close()
    await nc.close()


async def test_unsubscribe_stops_delivery(nats_server: EmbeddedNats) -> None:
    nc = await connect(nats_server.url, name="direct-test", forever=False)
    got: list[bytes] = []
    sub = await nc.subscribe_direct("audio.x", got.append)
    await nc.flush()
    pub = await nats.connect(nats_server.url)
    await pub.publish("audio.x", b"before")
    await pub.flush()
    await wait_until(lambda: got == [b"before"], "the first payload", timeout=5)
    await sub.unsubscribe()
    await nc.flush()
    assert nc._direct == {}
    await pub.publish("audio.x", b"after")
    await pub.flush()
    await nc.flush()
    await asyncio.sleep(0.2)
    assert got == [b"before"]
    await pub.close()
    await nc.close()
