"""Talkback, the hub side: hear the crowd at one chosen site (its microphone), to mix into a caller's return audio.

One site at a time. While open, the hub renews its request (`citycast.protocol.commands.TalkbackCommand` on the
site's command subject) every `renew_s` (the site stops by itself when the renewals stop); frames are accepted only
if signed with that site's own key (from its enrolment).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from sqlalchemy import select

from citycast.bus import jwt
from citycast.bus.jwt import KeyKind
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Site
from citycast.media.audio import FRAME_SAMPLES
from citycast.media.codec import OpusDecoder
from citycast.media.render import Samples
from citycast.protocol.commands import TalkbackCommand
from citycast.protocol.frame import FrameError, FrameVerifier, ReplayWindow
from citycast.protocol.subjects import Subjects
from citycast.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MAX_BUFFER = 48_000  # one second: older microphone audio is dropped, talkback must stay live
PREBUFFER = 3 * FRAME_SAMPLES  # 60 ms, so network jitter does not chop the crowd's sound


class TalkbackTap:
    def __init__(
        self, nc: Client, subjects: Subjects, site: str, public_key: Ed25519PublicKey, *, renew_s: float = 2.0
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.site = site
        self.verifier = FrameVerifier([public_key])
        self.replay = ReplayWindow()
        self.decoder = OpusDecoder()
        self.renew_s = renew_s
        self.frames = 0
        self.rejected = 0
        self._pcm: deque[Samples] = deque()
        self._buffered = 0
        self._primed = False
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.subjects.talkback(self.site), cb=self._on_msg)
        self._task = asyncio.create_task(self._renew(), name=f"talkback-renew:{self.site}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        with contextlib.suppress(Exception):
            await self.nc.publish(self.subjects.commands(self.site), TalkbackCommand(on=False).encode())
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _renew(self) -> None:
        while True:
            try:
                await self.nc.publish(self.subjects.commands(self.site), TalkbackCommand(on=True).encode())
            except Exception as e:  # the bus is reconnecting; the next renewal goes out
                log.debug("talkback %s: renewal failed: %s", self.site, e)
            await asyncio.sleep(self.renew_s)

    async def _on_msg(self, msg: Msg) -> None:
        self.on_frame_bytes(msg.data)

    def on_frame_bytes(self, data: bytes) -> None:
        try:
            frame = self.verifier.verify(data)
        except FrameError:
            self.rejected += 1
            return
        if not self.replay.check_and_mark(frame.stream, frame.seq):
            self.rejected += 1
            return
        for packet in frame.packets:
            pcm = self.decoder.decode(packet)
            self._pcm.append(pcm)
            self._buffered += len(pcm)
        self.frames += 1
        while self._buffered > MAX_BUFFER:
            self._buffered -= len(self._pcm.popleft())

    def next_block(self, n: int = FRAME_SAMPLES) -> Samples:
        """The next `n` samples of the site's microphone (48 kHz), or silence while there is not enough."""
        if not self._primed:
            if self._buffered < PREBUFFER:
                return np.zeros(n, np.float32)
            self._primed = True
        if self._buffered < n:
            self._primed = False
            return np.zeros(n, np.float32)
        parts: list[Samples] = []
        need = n
        while need:
            head = self._pcm[0]
            if len(head) <= need:
                parts.append(self._pcm.popleft())
                need -= len(head)
            else:
                parts.append(head[:need])
                self._pcm[0] = head[need:]
                need = 0
        self._buffered -= n
        return np.concatenate(parts).astype(np.float32, copy=False)


class TalkbackControl:
    """Which site the hub is listening to (at most one)."""

    def __init__(self, nc: Client, subjects: Subjects, db: Database) -> None:
        self.nc = nc
        self.subjects = subjects
        self.db = db
        self.current: TalkbackTap | None = None

    async def open(self, site: str) -> TalkbackTap:
        key = await asyncio.to_thread(self._site_key, site)
        await self.close()
        tap = TalkbackTap(self.nc, self.subjects, site, key)
        await tap.start()
        self.current = tap
        log.info("talkback: listening to %s", site)
        return tap

    async def close(self) -> None:
        tap, self.current = self.current, None
        if tap is not None:
            await tap.stop()

    def status(self) -> dict[str, Any]:
        tap = self.current
        return {"site": tap.site if tap else None, "frames": tap.frames if tap else 0}

    def _site_key(self, site: str) -> Ed25519PublicKey:
        with self.db.session() as s:
            row = s.scalars(select(Site).where(Site.name == site)).one_or_none()
            if row is None:
                raise ValueError(f"no site {site!r}")
            if row.nkey_public is None or row.revoked_at is not None:
                raise ValueError(f"site {site!r} is not enrolled: its microphone cannot be trusted")
            return Ed25519PublicKey.from_public_bytes(jwt.decode_public_key(row.nkey_public, KeyKind.USER))
