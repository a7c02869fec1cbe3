"""Connecting to NATS the way a box on a bad link must: forever, with back-off."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from citycast.bus.tls import creds_context

log = logging.getLogger(__name__)


async def connect(
    url: str,
    *,
    name: str,
    forever: bool = True,
    creds: Path | None = None,
    inbox_prefix: str | None = None,
    tls: ssl.SSLContext | None = None,
    **options: Any,
) -> Client:
    """Connect, retrying the first connection too (a site may boot before its network), then let nats-py
    reconnect forever. Back-off is jittered so a thousand sites do not return at the same instant.

    `creds` is a NATS creds file (server in JWT mode); `inbox_prefix` is the reply-subject prefix the user's
    permissions allow it to subscribe to (a site's is `_INBOX_site.<site>`).

    TLS: `tls`, else the hub CA the creds file carries (citycast.bus.tls). With either, the TLS handshake comes
    first and the server must hold a certificate of that CA alone; nats-py would otherwise talk plaintext to any
    server whose INFO does not ask for TLS."""
    if tls is None:
        given = options.get("user_credentials")  # callers that pass nats-py's own option get the same rule
        tls = creds_context(creds if creds is not None else Path(given) if isinstance(given, str | Path) else None)
    if tls is not None:
        options["tls"] = tls
        options["tls_handshake_first"] = True
    if creds is not None:
        options["user_credentials"] = str(creds)
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix

    async def disconnected() -> None:
        log.warning("%s: disconnected from NATS", name)

    async def reconnected() -> None:
        log.info("%s: reconnected to NATS", name)

    async def error(e: Exception) -> None:
        log.debug("%s: NATS error: %r", name, e)

    connect_timeout = float(options.pop("connect_timeout", 5.0))
    attempt_s = 3 * (connect_timeout + 1.0) + 5.0  # nats-py tries 3 times when not `forever`
    delay = 0.2
    while True:
        try:
            # nats-py's first connect can wait forever after a failed TLS handshake (it awaits the closing of a
            # transport that start_tls took over), e.g. against a man in the middle: each attempt is bounded here.
            async with asyncio.timeout(attempt_s):
                return await nats.connect(
                    url,
                    name=name,
                    max_reconnect_attempts=-1 if forever else 3,
                    reconnect_time_wait=1.0,
                    allow_reconnect=True,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                    connect_timeout=connect_timeout,
                    **options,
                )
        except Exception as e:  # nats raises several unrelated types for "not there yet"
            if not forever:
                raise
            log.warning("%s: cannot reach NATS at %s (%s); retrying in %.1f s", name, url, e, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 30.0)


async def retire(nc: Client, sub: Subscription | None = None, *, timeout_s: float = 2.0) -> None:
    """Close `nc` (replaced by a fresh connection, or at shutdown) once every message already on its way has been
    handed to its callbacks, never waiting more than `timeout_s` for that. `sub` (the one whose messages matter
    most, e.g. audio) is drained first so that its copies stop before the rest of the connection is drained.

    Never `unsubscribe()` here: nats-py discards what still sits in the subscription's queue, and a frame that
    came only on the old connection, just before the new one subscribed, would be lost (a loaded site lost one
    that way now and then)."""
    with contextlib.suppress(Exception):  # a connection already gone has nothing left to hand over
        async with asyncio.timeout(timeout_s):
            if sub is not None:
                await sub.drain()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
            await nc.drain()
    with contextlib.suppress(Exception):
        await nc.close()


async def settle(nc: Client, timeout_s: int = 5) -> None:
    """Return once the server has processed every command `nc` was given before the call (a SUB, PUBs).

    One `flush()` does not prove that with nats-py 2.16: it writes its PING straight to the socket, ahead of the
    commands still in the client's pending buffer, so the PONG can come back before the server has seen them. The
    flusher that writes them was woken before that PONG could be read, so a second PING goes out after them and
    its PONG comes after the server has processed them."""
    await nc.flush(timeout_s)
    await nc.flush(timeout_s)
