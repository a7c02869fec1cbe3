"""The source connection against servers that misbehave (a raw socket playing a hostile or broken "Icecast"):
every answer becomes a clear `IcecastError` within the timeout, never a hang or a crash; and the request head
carries no line break from an operator's text."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from citycast.hub.icecast.source import (
    IcecastAuthError,
    IcecastError,
    SourceConnection,
    StreamInfo,
    parse_icecast_url,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _against(handler: Handler) -> IcecastError:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = SourceConnection(
        parse_icecast_url(f"http://127.0.0.1:{port}", "pw"), "all.ogg", "audio/ogg", StreamInfo("x\r\nEvil: 1")
    )
    try:
        with pytest.raises(IcecastError) as caught:
            await conn.open(timeout_s=2.0)
        return caught.value
    finally:
        server.close()
        await server.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def test_hostile_or_broken_servers_give_clear_errors() -> None:
    heads: list[bytes] = []

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await _read_head(reader))
        writer.write(b"A" * 40_000)  # no end of headers, ever
        await writer.drain()
        await reader.read()  # until the client gives up and closes

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        await reader.read()  # until the client gives up and closes

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def refuses(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.0 401 Authentication Required\r\n\r\n")
        await writer.drain()

    async def taken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.0 403 Forbidden\r\n\r\n")
        await writer.drain()

    assert "not HTTP" in str(await _against(garbage))
    assert "no answer within 2 s" in str(await _against(silent))
    hung_up = str(await _against(hang_up))
    assert "not HTTP" in hung_up or "reset" in hung_up, hung_up
    assert isinstance(await _against(refuses), IcecastAuthError)
    assert "in use by another source" in str(await _against(taken))
    # The operator's stream name had a line break: it stays inside one header.
    assert b"Ice-Name: x Evil: 1\r\n" in heads[0] and b"\r\nEvil:" not in heads[0]


@pytest.mark.parametrize(
    "url",
    ["https://h", "http://u:pw@h", "http://h?x=1", "http://h:70000", "ftp://h", "http://", "http://h/a%20b"],
)
def test_bad_icecast_urls_are_refused_with_a_reason(url: str) -> None:
    with pytest.raises(ValueError, match="--icecast"):
        parse_icecast_url(url, "pw")
