"""Live ingest: audio that arrives in real time (a phone call, a browser) becomes signed frames on a channel.

A file source is paced by the broadcaster; a live source paces itself. Here a clock-driven loop asks the source
for one 20 ms block at each frame's due time (the source conceals what did not arrive), so the frames carry a
timestamp grid that never drifts from the broadcast clock whatever the caller's own clock does.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from nats.aio.client import Client

from citycast.ingest.pacing import FramePacer
from citycast.media.audio import FRAME_NS, FRAME_SAMPLES
from citycast.media.codec import OpusEncoder
from citycast.media.render import Samples
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects
from citycast.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MAX_CATCH_UP = 10  # frames: a loop stalled longer than this skips ahead instead of bursting


class LiveSource(Protocol):
    def next_block(self, now: float) -> Samples:
        """Exactly FRAME_SAMPLES float32 samples for the frame due now (concealment or silence if nothing came)."""
        ...


class LiveBroadcaster:
    """Publishes a live source on one channel until `stop()`. `frames`/`skipped` tell how it went."""

    def __init__(
        self,
        nc: Client,
        *,
        channel: int,
        signer: FrameSigner,
        source: LiveSource,
        clock: Callable[[], int] = time.time_ns,
        subjects: Subjects | None = None,
        packets_per_message: int = 1,
        bitrate: int = 64_000,
        on_block: Callable[[Samples], None] | None = None,
    ) -> None:
        self.nc = nc
        self.channel = channel
        self.signer = signer
        self.source = source
        self.clock = clock
        self.subject = (subjects or Subjects()).audio(channel)
        self.packets_per_message = packets_per_message
        self.encoder = OpusEncoder(bitrate=bitrate)
        self.on_block = on_block
        self.stream = random.getrandbits(32)
        self.frames = 0
        self.skipped = 0
        self.ts0_ns: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"live:{self.channel}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        try:
            await self.nc.flush()
        except Exception as e:  # the bus is gone; nothing left to flush
            log.debug("live %d: flush at stop failed: %s", self.channel, e)

    async def _run(self) -> None:
        ts0 = FramePacer.aligned_start(self.clock(), grid_ns=FRAME_NS, margin_ns=FRAME_NS)
        self.ts0_ns = ts0
        seq = 0
        pending: list[bytes] = []
        while True:
            due = ts0 + (seq + 1) * FRAME_NS  # a block can be taken once its last sample has been "spoken"
            wait = (due - self.clock()) / 1e9
            if wait > 0:
                await asyncio.sleep(wait)
            behind = (self.clock() - due) // FRAME_NS
            if behind > MAX_CATCH_UP:
                # The loop was starved (a long GC, a suspended VM): drop the gap rather than burst old audio.
                seq += int(behind)
                self.skipped += int(behind)
                pending = []
                continue
            block = self.source.next_block(self.clock() / 1e9)
            if len(block) != FRAME_SAMPLES:
                block = _fit(block)
            if self.on_block is not None:
                self.on_block(block)
            pending.append(self.encoder.encode(block))
            if len(pending) < self.packets_per_message:
                seq += 1
                continue
            first = seq + 1 - len(pending)
            data = self.signer.sign(
                channel=self.channel, stream=self.stream, seq=first, ts_ns=ts0 + first * FRAME_NS, packets=pending
            )
            pending = []
            seq += 1
            try:
                await self.nc.publish(self.subject, data)
                self.frames += 1
            except Exception as e:  # a reconnecting bus: this frame is lost, the next ones go out
                log.warning("live %d: publish failed: %s", self.channel, e)


def _fit(block: Samples) -> Samples:
    import numpy as np

    out = np.zeros(FRAME_SAMPLES, np.float32)
    n = min(len(block), FRAME_SAMPLES)
    out[:n] = block[:n]
    return out
