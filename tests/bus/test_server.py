from __future__ import annotations

import asyncio
import socket

import nats
import pytest

from citycast.bus.server import EmbeddedNats, NatsServerError, find_nats_server, free_port


def test_finds_the_wheels_binary() -> None:
    assert find_nats_server().endswith("nats-server")


def test_explicit_binary_must_exist() -> None:
    with pytest.raises(NatsServerError, match="not an executable"):
        find_nats_server("/nonexistent/nats-server")


def test_starts_serves_and_stops(tmp_path: object) -> None:
    port = free_port()
    server = EmbeddedNats(port=port)
    server.start()
    try:

        async def roundtrip() -> bytes:
            nc = await nats.connect(server.url)
            sub = await nc.subscribe("x")
            await nc.publish("x", b"hello")
            msg = await sub.next_msg(timeout=2)
            js = nc.jetstream()
            await js.add_stream(name="probe", subjects=["probe.>"])  # JetStream is on
            await nc.close()
            return msg.data

        assert asyncio.run(roundtrip()) == b"hello"
    finally:
        server.stop()
    assert server.pid is None


def test_refuses_a_taken_port_with_a_clear_message() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(NatsServerError, match="already in use"):
            EmbeddedNats(port=port).start()
