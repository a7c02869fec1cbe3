"""A live source paced by the broadcast clock: one frame per 20 ms on a fixed timestamp grid, heard by a site."""

from __future__ import annotations

import asyncio
import time

import nats
import numpy as np
from nats.aio.msg import Msg
from tests.helpers import let_time_pass, wait_until

from citycast.bus.server import EmbeddedNats
from citycast.ingest.live import LiveBroadcaster
from citycast.media.audio import FRAME_NS, FRAME_SAMPLES
from citycast.media.keys import generate_private_key
from citycast.protocol.frame import FrameSigner, FrameVerifier


class Ramp:
    """A live source that sometimes has nothing (returns a short block, as a caller's lost packet would)."""

    def __init__(self) -> None:
        self.calls = 0

    def next_block(self, now: float) -> np.ndarray:
        self.calls += 1
        if self.calls % 7 == 0:
            return np.zeros(100, np.float32)
        return (0.3 * np.sin(np.arange(FRAME_SAMPLES) * 2 * np.pi * 440 / 48_000)).astype(np.float32)


async def _run(url: str) -> None:
    key = generate_private_key()
    nc = await nats.connect(url)
    got: list[bytes] = []

    async def on_msg(m: Msg) -> None:
        got.append(m.data)

    await nc.subscribe("citycast.audio.5", cb=on_msg)
    live = LiveBroadcaster(nc, channel=5, signer=FrameSigner(key), source=Ramp(), packets_per_message=2)
    t0 = time.monotonic()
    live.start()
    await let_time_pass(1.0)  # a second of live audio: its pacing is what is checked
    await live.stop()
    elapsed = time.monotonic() - t0
    await wait_until(lambda: len(got) >= live.frames, "every published message back at the subscriber", timeout=5)
    await nc.close()
    verifier = FrameVerifier([key.public_key()])
    frames = [verifier.verify(d) for d in got]
    assert live.ts0_ns is not None
    # Every message carries two 20 ms packets, on an unbroken grid from ts0.
    assert all(len(f.packets) == 2 for f in frames)
    assert [f.ts_ns for f in frames] == [live.ts0_ns + i * 2 * FRAME_NS for i in range(len(frames))]
    assert [f.seq for f in frames] == list(range(0, 2 * len(frames), 2))
    # Paced in real time: about 50 packets a second, not a burst.
    assert abs(2 * len(frames) - elapsed * 50) <= 6, (len(frames), elapsed)


def test_live_broadcaster_keeps_the_grid(nats_server: EmbeddedNats) -> None:
    asyncio.run(_run(nats_server.url))
