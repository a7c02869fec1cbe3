"""The console's live feed: one snapshot, then the hub's events as they happen.

A client that falls behind gets `{"type": "resync"}` from the event hub instead of a backlog; we answer it with a
fresh snapshot. The session is checked again now and then, so a logout or a disabled account also ends the feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from fastapi import APIRouter, WebSocket, status
from fastapi.encoders import jsonable_encoder
from starlette.websockets import WebSocketDisconnect, WebSocketState

from citycast.hub.api.alerts import load_alerts
from citycast.hub.api.deps import token_of, user_of_token
from citycast.hub.api.sites import all_sites
from citycast.hub.context import HubContext
from citycast.hub.events import Subscription
from citycast.tasks import cancel_and_wait

REAUTH_EVERY_S = 30.0

router = APIRouter()


def snapshot(ctx: HubContext) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "sites": [site.model_dump(mode="json") for site in all_sites(ctx)],
        "addresses": ctx.addresses.live(),
        "alerts": [alert.model_dump(mode="json") for alert in load_alerts(ctx, active=True)],
    }


async def _send(websocket: WebSocket, event: dict[str, Any]) -> None:
    await websocket.send_text(json.dumps(jsonable_encoder(event), separators=(",", ":")))


async def _until_closed(websocket: WebSocket, sub: Subscription) -> None:
    """Read (and ignore) what the client sends, so its close is noticed; then end the subscription."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        sub.close()


@router.websocket("/api/ws")
async def feed(websocket: WebSocket) -> None:
    ctx: HubContext = websocket.app.state.ctx
    token = websocket.query_params.get("token") or token_of(websocket)
    user = user_of_token(ctx, token)
    # Accept, then close with 1008: a browser sees the policy-violation code (a refused handshake is only 1006).
    await websocket.accept()
    if user is None:
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason="not logged in")
        return
    with ctx.events.subscribe() as sub:
        watcher = asyncio.create_task(_until_closed(websocket, sub))
        try:
            await _send(websocket, snapshot(ctx))
            checked = time.monotonic()
            async for event in sub:
                if time.monotonic() - checked > REAUTH_EVERY_S:
                    checked = time.monotonic()
                    if user_of_token(ctx, token) is None:
                        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason="session ended")
                        return
                await _send(websocket, snapshot(ctx) if event.get("type") == "resync" else event)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client went away while we were sending
        finally:
            await cancel_and_wait(watcher)
            if websocket.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await websocket.close()
