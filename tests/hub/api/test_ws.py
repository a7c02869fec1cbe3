"""The console's live feed against a stranger: a real WebSocket client (websockets) at the real API over HTTP.

A page of another site opening the feed with the operator's cookie (cross-site WebSocket hijacking) is refused
at the handshake; a token in the URL opens nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from tests.helpers import Api
from websockets.exceptions import InvalidStatus

from citycast.hub.db.models import Role


async def _first(ws: Any) -> dict[str, Any]:
    async with asyncio.timeout(5):
        return dict(json.loads(await ws.recv()))


async def _refused_at_handshake(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url, **kwargs) as ws:
            await _first(ws)  # only reached if the hub let it in: the stranger would read the snapshot
    return refused.value.response.status_code


async def test_a_foreign_origin_is_refused_even_with_the_operators_cookie(api: Api) -> None:
    await api.as_role(Role.admin)
    cookie = {"Cookie": f"citycast_session={api.tokens['admin']}"}
    port = api.base_url.rsplit(":", 1)[1]
    for origin in (
        "http://evil.example",
        f"http://127.0.0.1.evil.example:{port}",  # a look-alike host
        "http://127.0.0.1:1",  # the same host, another port: another origin
        "null",  # a sandboxed iframe or a file: page
    ):
        assert await _refused_at_handshake(api.ws_url, origin=origin, additional_headers=cookie) == 403, origin
    # A bearer header does not make a foreign page welcome either.
    bearer = {"Authorization": f"Bearer {api.tokens['admin']}"}
    assert await _refused_at_handshake(api.ws_url, origin="http://evil.example", additional_headers=bearer) == 403
    # A cookie without Origin is not a browser's request, and only a browser holds the cookie.
    assert await _refused_at_handshake(api.ws_url, additional_headers=cookie) == 403
    assert api.ctx.events.subscribers == 0
    # The console's own page gets its snapshot.
    async with websockets.connect(api.ws_url, origin=api.base_url, additional_headers=cookie) as ws:
        assert (await _first(ws))["type"] == "snapshot"


async def test_an_origin_the_operator_allowed_gets_in(api: Api) -> None:
    await api.as_role(Role.viewer)
    cookie = {"Cookie": f"citycast_session={api.tokens['viewer']}"}
    api.ctx.allowed_origins = ["https://console.example"]
    async with websockets.connect(api.ws_url, origin="https://console.example", additional_headers=cookie) as ws:
        assert (await _first(ws))["type"] == "snapshot"
    assert await _refused_at_handshake(api.ws_url, origin="https://other.example", additional_headers=cookie) == 403


async def test_a_token_in_the_url_opens_nothing(api: Api) -> None:
    await api.as_role(Role.admin)
    token = api.tokens["admin"]
    # From the hub's own origin (as a leaked link would be used) and from no origin at all.
    for origin in (api.base_url, None):
        try:
            async with websockets.connect(f"{api.ws_url}?token={token}", origin=origin) as ws:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    got = await _first(ws)
                    pytest.fail(f"a token in the URL was taken: {got.get('type')}")
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        except InvalidStatus as e:
            assert e.response.status_code == 403
    # The same token as a bearer header (a program, no Origin) is the way in.
    bearer = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(api.ws_url, additional_headers=bearer) as ws:
        assert (await _first(ws))["type"] == "snapshot"
