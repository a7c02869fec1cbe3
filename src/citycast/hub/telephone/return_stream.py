"""What the caller hears: queued prompts, else silence, plus the talkback site's microphone under a limiter,
encoded with the call's codec and sent as RTP every 20 ms from the answer on.

A continuous stream keeps NAT bindings open and lets the caller's jitter buffer settle. Where it may go (the
latch) and how fast at most (the send budget) is the call media's business: `send` is handed the bytes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from citycast.hub.telephone.limiter import Limiter
from citycast.hub.telephone.talkback_feed import TalkbackFeed
from citycast.media.audio import FRAME_SAMPLES
from citycast.media.render import Samples
from citycast.rtp.codecs import Encoder
from citycast.rtp.packet import RtpPacket
from citycast.tasks import cancel_and_wait

if TYPE_CHECKING:
    from citycast.hub.talkback import TalkbackTap

FRAME_S = 0.02  # the return stream's packet period


class ReturnStream:
    """What the caller hears: queued prompts, else silence, plus the talkback site's microphone when
    `talkback` names one, limited, encoded and sent as RTP every 20 ms."""

    def __init__(
        self,
        encoder: Encoder,
        payload_type: int,
        send: Callable[[bytes], None],
        talkback: Callable[[], TalkbackTap | None] | None = None,
    ) -> None:
        self.encoder = encoder
        self.payload_type = payload_type
        self.send = send
        self.talkback = talkback  # set when the call goes live
        self.limiter = Limiter()
        self._feed: TalkbackFeed | None = None
        self._cursor: int | None = None
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.packets = 0
        self.octets = 0
        self._queue: deque[Samples] = deque()
        self._current = np.zeros(0, np.float32)
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        self._first = True

    def play(self, pcm: Samples) -> None:
        self._queue.append(pcm)
        self._drained.clear()

    def clear(self) -> None:
        self._queue.clear()
        self._current = np.zeros(0, np.float32)
        self._drained.set()

    async def played(self) -> None:
        await self._drained.wait()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rtp-return")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    def _block(self) -> Samples:
        """The next 20 ms the caller hears."""
        block = self._prompt_block()
        tap = self.talkback() if self.talkback is not None else None
        if tap is None:
            self._feed = self._cursor = None
            return block
        if self._feed is None or self._feed.tap is not tap:
            self._feed, self._cursor = TalkbackFeed.of(tap), None
        mic, self._cursor = self._feed.read(self._cursor)
        if mic.size != FRAME_SAMPLES:
            mic = np.pad(mic[:FRAME_SAMPLES], (0, max(0, FRAME_SAMPLES - mic.size)))
        return self.limiter.process(block + mic)

    def _prompt_block(self) -> Samples:
        while self._current.size < FRAME_SAMPLES and self._queue:
            self._current = np.concatenate([self._current, self._queue.popleft()])
        if self._current.size == 0:
            self._drained.set()
            return np.zeros(FRAME_SAMPLES, np.float32)
        block = self._current[:FRAME_SAMPLES]
        self._current = self._current[FRAME_SAMPLES:]
        if block.size < FRAME_SAMPLES:
            block = np.concatenate([block, np.zeros(FRAME_SAMPLES - block.size, np.float32)])
        if self._current.size == 0 and not self._queue:
            self._drained.set()
        return block

    async def _run(self) -> None:
        pacer = Pacer(time.monotonic())
        while True:
            delay, skipped = pacer.next(time.monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
            # Late ticks are skipped, never sent in a burst; the RTP clock still moves on by their duration so the
            # caller's jitter buffer sees a gap, not a time warp.
            self.ts = (self.ts + skipped * self.encoder.timestamp_step()) & 0xFFFFFFFF
            for payload in self.encoder.encode(self._block()):
                pkt = RtpPacket(
                    payload_type=self.payload_type,
                    seq=self.seq,
                    timestamp=self.ts,
                    ssrc=self.ssrc,
                    payload=payload,
                    marker=self._first,
                )
                self._first = False
                self.seq = (self.seq + 1) & 0xFFFF
                self.ts = (self.ts + self.encoder.timestamp_step()) & 0xFFFFFFFF
                self.packets += 1
                self.octets += len(payload)
                self.send(pkt.build())


class Pacer:
    """One tick every `period` from `t0`, sans-IO: `next(now)` gives how long to sleep before the next tick and
    how many ticks were missed (skipped, so a late loop never sends a burst)."""

    def __init__(self, t0: float, period: float = FRAME_S) -> None:
        self.t0 = t0
        self.period = period
        self.n = 0

    def next(self, now: float) -> tuple[float, int]:
        self.n += 1
        due = self.t0 + self.n * self.period
        if now - due < self.period:
            return max(0.0, due - now), 0
        skipped = int((now - due) // self.period)
        self.n += skipped
        return 0.0, skipped
