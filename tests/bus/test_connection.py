"""`citycast.bus.connection` against a real nats-server, through a relay that records the byte stream both ways:
when `settle` returns, the server has answered a PING sent after every command the client was given before, which
one nats-py `flush()` does not promise (its PING overtakes the commands still pending); `retire` hands over what
was still on its way to a subscription, which nats-py's `unsubscribe()` throws away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.msg import Msg

from citycast.bus.connection import retire, settle
from citycast.bus.server import EmbeddedNats

MESSAGES = 2000


class RecordingRelay:
    """A TCP relay in front of the server for one client, keeping each chunk forwarded as ("up" | "down", bytes)
    in order. `hold()` keeps what the server sends until the client's next UNSUB, then hands it over before the
    UNSUB goes on: messages that were on their way when the client gave up interest, as on a slow link."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.chunks: list[tuple[str, bytes]] = []
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.held: list[bytes] | None = None
        self.client_w: asyncio.StreamWriter | None = None

    def hold(self) -> None:
        self.held = []

    async def _pipe(self, way: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if way == "down" and self.held is not None:
                    self.held.append(data)
                    continue
                if way == "up" and self.held is not None and b"UNSUB" in data and self.client_w is not None:
                    held, self.held = self.held, None
                    self.client_w.write(b"".join(held))
                    await self.client_w.drain()
                self.chunks.append((way, data))
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.client_w = client_w
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.port)
        for task in (
            asyncio.create_task(self._pipe("up", client_r, server_w)),
            asyncio.create_task(self._pipe("down", server_r, client_w)),
        ):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"nats://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()

    def answered_after_the_last(self, command: bytes) -> bool:
        """Whether the server has answered a PING the client sent after the last `command`: the server handles a
        connection's commands in order, so it has handled that one too."""
        up = b"".join(data for way, data in self.chunks if way == "up")
        down = b"".join(data for way, data in self.chunks if way == "down")
        ping = up.find(b"PING\r\n", up.rfind(command))
        return ping >= 0 and down.count(b"PONG\r\n") >= up.count(b"PING\r\n", 0, ping + 6)


@pytest.fixture
async def relay(nats_server: EmbeddedNats) -> AsyncIterator[tuple[RecordingRelay, str]]:
    relay = RecordingRelay(int(nats_server.url.rsplit(":", 1)[1]))
    url = await relay.start()
    yield relay, url
    await relay.stop()


async def test_settle_returns_after_the_server_answered_behind_every_pending_publish(
    relay: tuple[RecordingRelay, str],
) -> None:
    recorder, url = relay
    nc = await nats.connect(url)
    try:
        for n in range(MESSAGES):  # no await yields here: all of it waits in nats-py's pending buffer
            await nc.publish("burst", f"{n:06d}".encode())
        await settle(nc)
        up = b"".join(data for way, data in recorder.chunks if way == "up")
        assert up.count(b"PUB burst") == MESSAGES
        assert recorder.answered_after_the_last(f"{MESSAGES - 1:06d}".encode())
    finally:
        await nc.close()


async def test_settle_returns_after_the_server_holds_a_new_subscription(relay: tuple[RecordingRelay, str]) -> None:
    recorder, url = relay
    nc = await nats.connect(url)
    try:

        async def ignore(msg: Msg) -> None:
            pass

        await nc.subscribe("audio", cb=ignore)
        await settle(nc)
        assert recorder.answered_after_the_last(b"SUB audio")
    finally:
        await nc.close()


async def test_retire_hands_over_what_was_still_on_its_way(
    nats_server: EmbeddedNats, relay: tuple[RecordingRelay, str]
) -> None:
    """Messages published before the client retires its connection, delayed on the way (the relay holds them until
    the client's UNSUB), all reach the subscription's callback; with `unsubscribe()` in its place none would."""
    recorder, url = relay
    old = await nats.connect(url)
    publisher = await nats.connect(nats_server.url)
    heard: list[bytes] = []

    async def on_msg(msg: Msg) -> None:
        heard.append(msg.data)

    try:
        sub = await old.subscribe("audio", cb=on_msg)
        await settle(old)
        recorder.hold()
        for n in range(100):
            await publisher.publish("audio", f"{n:03d}".encode())
        await settle(publisher)  # the server has routed them all to `old`; the relay holds them
        await retire(old, sub)
        assert heard == [f"{n:03d}".encode() for n in range(100)]
        assert old.is_closed
    finally:
        await publisher.close()
