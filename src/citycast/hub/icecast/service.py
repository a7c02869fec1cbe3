"""The hub's Icecast side tap: every mount on a thread and event loop of its own, off the city's audio.

Listeners on Icecast are seconds behind by nature (their players buffer); this is outside the loudspeakers' T + D
budget, and nothing it does may delay them: muxing, MP3 encoding and the sockets to Icecast run on the thread
`hub-icecast` with its own NATS connection. That connection is a listener's: with the hub's JWT accounts it is
the `listener` user, which may subscribe to audio and nothing else (`citycast.bus.authority`), and every frame
is verified against the hub's keys like a site verifies it.

The control loop tells the service what each group carries (`set_programs`, from `follow_addresses`); mounts
appear for a zone created later, and go when a zone is deleted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from nats.aio.client import Client
from sqlalchemy import select

from citycast.bus.authority import NatsAuthority
from citycast.bus.connection import connect
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Zone
from citycast.hub.events import EventHub
from citycast.hub.icecast.creds import LISTENER_INBOX_PREFIX, listener_creds
from citycast.hub.icecast.mux import Mp3Mux, OggOpusMux, StreamMux
from citycast.hub.icecast.program import ALL_GROUP, Program, ZoneInfo, programs, zone_group
from citycast.hub.icecast.source import IcecastServer, StreamInfo
from citycast.hub.icecast.streamer import MountStreamer
from citycast.hub.icecast.timeline import DEFAULT_HOLD_NS
from citycast.media.audio import FRAME_SAMPLES
from citycast.media.codec import OpusEncoder
from citycast.media.keys import PublicKey
from citycast.protocol.frame import FrameVerifier
from citycast.protocol.subjects import Subjects

__all__ = ["IcecastOptions", "IcecastService", "follow_addresses", "start_icecast", "zones_of"]

log = logging.getLogger(__name__)


@dataclass
class IcecastOptions:
    server: IcecastServer
    mp3_groups: frozenset[str] = frozenset({ALL_GROUP})  # groups that also get an .mp3 mount
    mp3_bitrate: int = 64_000
    hold_ns: int = DEFAULT_HOLD_NS
    public: bool = False  # Ice-Public: list the mounts in public directories
    station: str = "citycast"


class IcecastService:
    def __init__(
        self,
        opts: IcecastOptions,
        nats_url: str,
        *,
        creds: Path | None,
        subjects: Subjects,
        trusted: Iterable[PublicKey],
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.opts = opts
        self.nats_url = nats_url
        self.creds = creds
        self.subjects = subjects
        self.verifier = FrameVerifier(list(trusted))
        self.clock = clock
        encoder = OpusEncoder()
        self.opus_head = encoder.extradata
        self.silence = encoder.encode(np.zeros(FRAME_SAMPLES, dtype=np.float32))
        self.streamers: dict[str, MountStreamer] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._titles: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: Client | None = None
        self._http: httpx.AsyncClient | None = None

    # -- life (called from the control loop) ----------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as e:
                ready.set_exception(e)
                loop.close()
                return
            ready.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=main, name="hub-icecast", daemon=True)
        self._thread.start()
        await asyncio.wrap_future(ready)

    async def _open(self) -> None:
        self._nc = await connect(
            self.nats_url, name="hub-icecast", creds=self.creds, inbox_prefix=LISTENER_INBOX_PREFIX
        )
        self._http = httpx.AsyncClient()

    def set_programs(self, groups: Mapping[str, Program], names: Mapping[str, str] | None = None) -> None:
        """What each group carries now (thread-safe; applied on the Icecast loop)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._apply, dict(groups), dict(names or {}))

    def status(self) -> list[dict[str, object]]:
        return [s.status() for s in list(self.streamers.values())]

    async def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._close(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 10.0)

    # -- on the Icecast loop --------------------------------------------------------------------------------
    def _mounts_of(self, group: str) -> list[tuple[str, StreamMux]]:
        mounts: list[tuple[str, StreamMux]] = [(f"{group}.ogg", OggOpusMux(self.opus_head, self.silence))]
        if group in self.opts.mp3_groups:
            mounts.append((f"{group}.mp3", Mp3Mux(self.opts.mp3_bitrate)))
        return mounts

    def _apply(self, groups: dict[str, Program], names: dict[str, str]) -> None:
        assert self._nc is not None and self._http is not None
        for group, program in groups.items():
            for mount, mux in self._mounts_of(group):
                streamer = self.streamers.get(mount)
                if streamer is None:
                    label = names.get(group, group)
                    info = StreamInfo(
                        name=f"{self.opts.station}: {label}",
                        description=f"Addresses on air ({label})",
                        public=self.opts.public,
                        bitrate_kbps=self.opts.mp3_bitrate // 1000 if isinstance(mux, Mp3Mux) else 64,
                    )
                    streamer = MountStreamer(
                        server=self.opts.server,
                        mount=mount,
                        mux=mux,
                        info=info,
                        nc=self._nc,
                        subjects=self.subjects,
                        verifier=self.verifier,
                        clock=self.clock,
                        http=self._http,
                        hold_ns=self.opts.hold_ns,
                    )
                    self.streamers[mount] = streamer
                    self._tasks[mount] = asyncio.get_running_loop().create_task(streamer.run(), name=mount)
                streamer.set_program(program)
        wanted = {m for g in groups for m, _ in self._mounts_of(g)}
        for mount in [m for m in self.streamers if m not in wanted]:
            del self.streamers[mount]
            self._tasks.pop(mount).cancel()  # its source connection closes: Icecast ends the mount

    async def _close(self) -> None:
        from citycast.tasks import cancel_and_wait

        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(*tasks)
        if self._http is not None:
            await self._http.aclose()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._nc.drain()


async def follow_addresses(
    service: IcecastService,
    live: Callable[[], list[dict[str, Any]]],
    zones: Callable[[], list[ZoneInfo]],
    wake: Callable[[], Any] | None = None,
    *,
    every_s: float = 2.0,
) -> None:
    """On the control loop: recompute the groups' programs whenever `wake` (an `EventHub` subscription's
    `get`) returns, and every `every_s` anyway (zones made or renamed raise no address event)."""
    while True:
        try:
            zone_list = await asyncio.to_thread(zones)
            service.set_programs(programs(live(), zone_list), {zone_group(z.id): z.name for z in zone_list})
        except Exception:
            log.exception("icecast: cannot work out what the mounts carry; trying again")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every_s):
                if wake is not None:
                    await wake()
                else:
                    await asyncio.Event().wait()


def zones_of(db: Database) -> list[ZoneInfo]:
    with db.session() as s:
        return [ZoneInfo(z.id, z.name, z.channel) for z in s.scalars(select(Zone).order_by(Zone.id))]


async def start_icecast(
    opts: IcecastOptions,
    *,
    nats_url: str,
    authority: NatsAuthority | None,
    creds: Path | None,
    subjects: Subjects,
    trusted: Iterable[PublicKey],
    db: Database,
    live: Callable[[], list[dict[str, Any]]],
    events: EventHub,
) -> tuple[IcecastService, asyncio.Task[None]]:
    """The hub's wiring: a listener's creds under the hub's accounts (else the hub's own, on an operator's NATS),
    the service started, and the control-loop task that keeps its programs current."""
    if authority is not None:
        creds = await asyncio.to_thread(listener_creds, authority, subjects)
    service = IcecastService(opts, nats_url, creds=creds, subjects=subjects, trusted=trusted)
    await service.start()
    sub = events.subscribe()

    async def follow() -> None:
        try:
            await follow_addresses(service, live, lambda: zones_of(db), sub.get)
        finally:
            sub.close()

    return service, asyncio.create_task(follow(), name="icecast-programs")
