"""The console's live feed: one snapshot, then the hub's events as they happen.

A client that falls behind gets `{"type": "resync"}` from the event hub instead of a backlog; we answer it with a
fresh snapshot. The session is checked again now and then, so a logout or a disabled account also ends the feed.

Who may connect: a browser page of the hub's own origin (or one the operator allowed) with its session cookie, or
a program with `Authorization: Bearer <token>`. Never a token in the URL (URLs end up in proxy logs and browser
history). A browser always sends `Origin` with a WebSocket, and a page of another site gets the operator's
cookie sent along (cross-site WebSocket hijacking), so a foreign Origin is refused before the handshake whatever
it carries. A request without Origin is not a browser's: it is let in only with a bearer header, which a page
cannot set on a WebSocket.
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
from citycast.hub.api.deps import COOKIE_NAME, user_of_token
from citycast.hub.api.headers import origin_allowed
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


def _credential(websocket: WebSocket, ctx: HubContext) -> tuple[str | None, str]:
    """(token, why not) for this handshake; a reason refuses it before it is accepted."""
    scheme, _, value = websocket.headers.get("authorization", "").partition(" ")
    bearer = value.strip() if scheme.lower() == "bearer" and value.strip() else None
    origin = websocket.headers.get("origin")
    if origin is None:
        return (bearer, "") if bearer else (None, "no Origin: a program must send Authorization: Bearer")
    if not origin_allowed(origin, websocket.headers.get("host"), ctx.allowed_origins):
        return None, "origin not allowed"
    return bearer or websocket.cookies.get(COOKIE_NAME) or None, ""


@router.websocket("/api/ws")
async def feed(websocket: WebSocket) -> None:
    ctx: HubContext = websocket.app.state.ctx
    token, refused = _credential(websocket, ctx)
    if refused:
        # Before accepting: the handshake fails (HTTP 403), so a foreign page learns nothing, not even a snapshot.
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason=refused)
        return
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
