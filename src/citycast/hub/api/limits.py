"""What a stranger's connection may cost the hub before anyone knows who it is.

Two layers, both in front of every route:

- `BodyLimit` (ASGI middleware): a request body larger than its route allows is answered **413** with a JSON
  error *before* it is read: at once when Content-Length says so, and as soon as a streamed (chunked) body
  passes the limit, without reading or buffering the rest. A body that has not fully arrived within
  `body_timeout_s` of the request's head is answered **408** (a slow-body "slowloris").
- `guarded_http_protocol` (uvicorn's HTTP protocol, subclassed): a connection must finish each request head
  within `head_timeout_s` or it is closed (uvicorn itself waits forever for a trickled head), and one client
  address holds at most `max_per_client` connections (trusted proxies excepted: they carry everyone).

Together with uvicorn's own `limit_concurrency` and `timeout_keep_alive` (set in `hub.runtime`), a flood of idle,
slow or oversized requests costs bounded memory and time, and an ordinary request is still served.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_BODY_LIMIT = 64 * 1024
# The browser's SDP offer may be 64 000 characters (golive.MAX_SDP_CHARS), JSON-escaped inside the body.
# A CAP message may carry its audio inline (derefUri, base64): hub/cap/parse.py takes up to 1 MB.
ROUTE_BODY_LIMITS: dict[str, int] = {"/api/golive/offer": 256 * 1024, "/api/cap": 1_000_000}
BODY_TIMEOUT_S = 30.0
HEAD_TIMEOUT_S = 10.0
MAX_CONNECTIONS_PER_CLIENT = 64
# Open connections (and running requests) in all, past which uvicorn answers 503: far above what a city's
# operators and sites need, far below what exhausts the process's file descriptors or memory.
LIMIT_CONCURRENCY = 1000
KEEP_ALIVE_S = 5


class BodyLimit:
    """Refuse request bodies over the route's limit before reading them (see the module's docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default: int = DEFAULT_BODY_LIMIT,
        routes: dict[str, int] | None = None,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.default = default
        self.routes = dict(ROUTE_BODY_LIMITS if routes is None else routes)
        self.body_timeout_s = body_timeout_s

    def limit_for(self, path: str) -> int:
        return self.routes.get(path, self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = _content_length(scope["headers"])
        if length == -1:
            await _answer(send, 400, "the Content-Length header is not a number")
            return
        if length is not None and length > limit:
            await _answer(send, 413, _too_large(limit, length))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        received = 0
        body_done = False
        started = False  # the app began its answer
        refused = False  # we answered instead of the app: what it sends from now on goes nowhere

        async def refuse(status: int, detail: str) -> Message:
            nonlocal refused
            if not started and not refused:
                refused = True
                await _answer(send, status, detail)
            # To the app the client is gone: it stops reading and whatever it answers is dropped.
            return {"type": "http.disconnect"}

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if refused:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return await refuse(408, f"the request body did not arrive within {self.body_timeout_s:.0f} s")
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    return await refuse(413, _too_large(limit, None))
                body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


def _too_large(limit: int, length: int | None) -> str:
    said = f" (Content-Length {length})" if length is not None else ""
    return f"the request body is too large{said}: this route takes at most {limit} bytes"


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The declared length; None if absent; -1 if it is not a number."""
    for name, value in headers:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) <= 18 else -1
    return None


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    # Connection: close, since the unread rest of the body must not be parsed as the next request.
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def guarded_http_protocol(
    *,
    head_timeout_s: float = HEAD_TIMEOUT_S,
    max_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
    exempt: Iterable[str] = (),
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline on each request head and a cap on connections per client
    address (`exempt`: addresses not capped, e.g. trusted reverse proxies). A new class per server, so its
    per-client counts are that server's alone."""
    per_client: dict[str, int] = {}
    exempt_set = frozenset(exempt)

    class GuardedHttpProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _counted: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else ""
            if host not in exempt_set:
                if per_client.get(host, 0) >= max_per_client:
                    transport.abort()  # refused before a byte is read; connection_lost uncounts nothing
                    return
                per_client[host] = per_client.get(host, 0) + 1
                self._counted = host
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            if self._counted is not None:
                left = per_client.get(self._counted, 1) - 1
                if left > 0:
                    per_client[self._counted] = left
                else:
                    per_client.pop(self._counted, None)
                self._counted = None
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head_timer is None:
                self._arm_head_timer()

        def on_headers_complete(self) -> None:
            self._disarm_head_timer()
            super().on_headers_complete()

        def _arm_head_timer(self) -> None:
            self._disarm_head_timer()
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_too_slow)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedHttpProtocol


def uvicorn_limits(trusted_proxies: Iterable[str]) -> dict[str, Any]:
    """The keyword arguments for `uvicorn.Config` that bound slow and many connections."""
    return {
        "http": guarded_http_protocol(exempt=trusted_proxies),
        "limit_concurrency": LIMIT_CONCURRENCY,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "h11_max_incomplete_event_size": 16 * 1024,
    }
