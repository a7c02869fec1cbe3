"""One mount: hear a channel on the bus like a site does, keep the mount's timeline, mux, and feed Icecast.

Reconnects forever: a refused or lost source connection is retried after 0.5 s, doubling to 30 s (jittered),
and back to 0.5 s once a connection has held. Every error is kept in `error` for the console and logged once
per distinct text, so a wrong password is said plainly without filling the log every 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable

import av.error
import httpx
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from citycast.hub.icecast.mux import StreamMux
from citycast.hub.icecast.program import Program
from citycast.hub.icecast.source import IcecastError, IcecastServer, SourceConnection, StreamInfo, update_metadata
from citycast.hub.icecast.timeline import DEFAULT_HOLD_NS, MountTimeline
from citycast.protocol.frame import MAX_FRAME_SIZE, FrameError, FrameVerifier, is_fresh
from citycast.protocol.subjects import Subjects
from citycast.protocol.telemetry import frame_rejection

__all__ = ["MountStreamer", "retry_delay"]

log = logging.getLogger(__name__)

TICK_S = 0.04
MAX_AGE_NS = 5_000_000_000


def retry_delay(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before reconnection attempt `attempt` (0-based): 0.5 s doubling to 30 s, ±20 % jitter."""
    return float(min(30.0, 0.5 * 2 ** min(attempt, 10)) * (0.8 + 0.4 * rng()))


class MountStreamer:
    """Runs on the Icecast thread's loop; `set_program` and `run` are called there only."""

    def __init__(
        self,
        *,
        server: IcecastServer,
        mount: str,
        mux: StreamMux,
        info: StreamInfo,
        nc: Client,
        subjects: Subjects,
        verifier: FrameVerifier,
        clock: Callable[[], int],
        http: httpx.AsyncClient,
        hold_ns: int = DEFAULT_HOLD_NS,
    ) -> None:
        self.server = server
        self.mount = mount
        self.mux = mux
        self.info = info
        self.nc = nc
        self.subjects = subjects
        self.verifier = verifier
        self.clock = clock
        self.http = http
        self.timeline = MountTimeline(hold_ns=hold_ns)
        self.program = Program(None, "")
        self._sub: Subscription | None = None
        self._sub_channel: int | None = None
        self._title_sent: str | None = None
        self.connected = False
        self.connections = 0
        self.failures = 0
        self.error: str | None = None
        self.received = 0
        self.rejected: Counter[str] = Counter()
        self._logged_error: str | None = None

    def set_program(self, program: Program) -> None:
        if program.channel != self.program.channel:
            self.timeline.clear()
        self.program = program

    def status(self) -> dict[str, object]:
        return {
            "mount": self.server.mount_path(self.mount),
            "url": self.server.url(self.mount),
            "content_type": self.mux.content_type,
            "channel": self.program.channel,
            "title": self.program.title,
            "connected": self.connected,
            "connections": self.connections,
            "failures": self.failures,
            "error": self.error,
            "packets_played": self.timeline.played,
            "packets_silent": self.timeline.silent,
            "packets_late": self.timeline.late,
            "rejected": dict(self.rejected),
        }

    # -- the bus --------------------------------------------------------------------------------------------
    async def _follow_channel(self) -> None:
        channel = self.program.channel
        if channel == self._sub_channel:
            return
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._sub_channel = channel
        if channel is not None:
            self._sub = await self.nc.subscribe(self.subjects.audio(channel), cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        self.on_frame_bytes(msg.data)

    def on_frame_bytes(self, data: bytes) -> None:
        """Verify one bus message like a site would and queue its packets. Never raises."""
        self.received += 1
        if len(data) > MAX_FRAME_SIZE:
            self.rejected["oversized"] += 1
            return
        try:
            frame = self.verifier.verify(data)
        except FrameError as e:
            self.rejected[frame_rejection(e).value] += 1
            return
        if frame.channel != self.program.channel:
            self.rejected["wrong_channel"] += 1
            return
        if not is_fresh(frame, self.clock(), max_age_ns=MAX_AGE_NS, max_future_ns=MAX_AGE_NS):
            self.rejected["stale"] += 1
            return
        for i, packet in enumerate(frame.packets):
            self.timeline.push(frame.packet_ts(i), packet)

    # -- Icecast --------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Forever: connect, stream, and after any failure wait and connect again. Cancel to stop."""
        attempt = 0
        try:
            while True:
                conn = SourceConnection(self.server, self.mount, self.mux.content_type, self.info)
                try:
                    await self._follow_channel()
                    await conn.open()
                    self.connected = True
                    self.connections += 1
                    attempt = 0
                    self.error = self._logged_error = None
                    log.info("icecast: streaming to %s", self.server.url(self.mount))
                    await self._stream(conn)
                except (IcecastError, av.error.FFmpegError, ValueError) as e:
                    self._failed(str(e))
                except Exception as e:  # anything else (the bus, a bug) must not end the mount for good either
                    log.exception("icecast: %s failed; retrying", self.mount)
                    self._failed(f"{type(e).__name__}: {e}")
                finally:
                    self.connected = False
                    await conn.close()
                await asyncio.sleep(retry_delay(attempt))
                attempt += 1
        finally:
            with contextlib.suppress(Exception):
                self.mux.close()
            if self._sub is not None:
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()

    def _failed(self, error: str) -> None:
        self.failures += 1
        self.error = error
        if error != self._logged_error:
            log.warning("icecast: %s (retrying until it works)", error)
            self._logged_error = error

    async def _stream(self, conn: SourceConnection) -> None:
        # A new connection is a new stream for Icecast: its headers (Ogg: OpusHead/OpusTags) come first.
        self._title_sent = self.program.title
        self.mux.close()
        self.mux.take()  # the end of the stream the lost connection was carrying: not for this one
        self.mux.start(self._title_sent)
        if not self.mux.title_in_stream:
            await self._push_title()
        while True:
            await self._follow_channel()
            if self.program.title != self._title_sent:
                self._title_sent = self.program.title
                if self.mux.title_in_stream:
                    self.mux.start(self._title_sent)  # a new chained stream carrying the new title
                else:
                    await self._push_title()
            for packet in self.timeline.due(self.clock()):
                self.mux.packet(packet)
            await conn.send(self.mux.take())
            await asyncio.sleep(TICK_S)

    async def _push_title(self) -> None:
        try:
            await update_metadata(self.http, self.server, self.mount, self.program.title)
        except IcecastError as e:  # the stream goes on without its title; said once
            if str(e) != self._logged_error:
                log.warning("icecast: %s", e)
                self._logged_error = str(e)
