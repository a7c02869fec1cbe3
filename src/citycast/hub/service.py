"""The hub process as far as the media core needs it: the broadcast clock's time service on the bus."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from citycast.bus.authority import CITY_TIME_INBOX_PREFIX
from citycast.hub.db.engine import DatabaseError
from citycast.hub.runtime import ADMIN_PASSWORD_FILE, Hub, HubOptions
from citycast.hub.timeserver import TimeService
from citycast.protocol.subjects import Subjects

__all__ = ["HubOptions", "run_full_hub", "run_hub"]


async def run_hub(
    nats_url: str,
    *,
    prefix: str = "citycast",
    zone: str | None = None,
    upstream: bool = False,
    duration: float | None = None,
    creds: Path | None = None,
    peers: Sequence[str] = (),
    memory: Path | None = None,
) -> None:
    """A city's time responder (`citycast city`): with `creds` (from a city bundle) it runs under the hub's
    accounts, its upstream sync replying on the inbox its NATS user may use."""
    subjects = Subjects(prefix)
    service = TimeService(
        nats_url,
        subjects,
        zone=zone,
        upstream=subjects.time() if upstream else None,
        creds=creds,
        upstream_inbox_prefix=CITY_TIME_INBOX_PREFIX if creds else None,
        peers=peers,
        memory=memory,
    )
    await service.start()
    try:
        if duration is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(duration)
    finally:
        await service.stop()


async def run_full_hub(opts: HubOptions, console: Console, *, duration: float | None = None) -> None:
    """`citycast serve`: the whole hub until SIGINT/SIGTERM (or `duration`)."""
    try:
        hub = Hub(opts)
        await hub.start()
    except DatabaseError as e:
        raise ValueError(str(e)) from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, hub.request_stop)
    console.print(f"[bold]citycast hub[/]: console and API at {hub.http_url}  (NATS {hub.nats_url})")
    if hub.https_url and hub.tls is not None:
        console.print(f"HTTPS (enrolment) at {hub.https_url}, CA fingerprint {hub.tls.fingerprint()}")
    if opts.insecure:
        console.print("[bold red]--insecure[/]: NATS and HTTP are plaintext; the console and /metrics say so")
    if hub.admin_password:
        console.print(
            f"first start: log in as [bold]admin[/] with password [bold]{hub.admin_password}[/] "
            f"(also in {opts.data_dir / ADMIN_PASSWORD_FILE}; change it in the console)"
        )
    try:
        await hub.serve_forever(duration)
    finally:
        await hub.stop()
