"""The broadcaster stamps a live (line-in) block with the time it was captured, not on a grid after it starts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import nats
import numpy as np
from nats.aio.msg import Msg
from tests.helpers import wait_until

from citycast.bus.server import EmbeddedNats
from citycast.ingest.broadcaster import Broadcaster
from citycast.media.audio import FRAME_NS, FRAME_SAMPLES
from citycast.media.keys import generate_private_key
from citycast.media.render import Samples
from citycast.protocol.frame import FrameSigner, FrameVerifier


class CapturedBlocks:
    """Blocks as PulseAudio's input delivers them after it starts (measured: see docs/benchmarks.md): 40 blocks
    in step, then a second in which only every other block arrives (≈ 0.5 s of audio never comes), then steady.
    `capture_ns()` is the capture time of the last block handed out, as `LineInSource.capture_ns` is."""

    def __init__(self, first_ns: int, count: int) -> None:
        self.times: list[int] = []
        t = first_ns
        for k in range(count):
            self.times.append(t)
            t += 2 * FRAME_NS if 40 <= k < 65 else FRAME_NS
        self.last: int | None = None

    def blocks(self) -> Iterator[Samples]:
        for t in self.times:
            self.last = t
            yield np.full(FRAME_SAMPLES, 0.1, np.float32)

    def capture_ns(self) -> int | None:
        return self.last


async def _broadcast(url: str, packets_per_message: int) -> tuple[list[int], list[int], dict[str, object]]:
    key = generate_private_key()
    nc = await nats.connect(url)
    got: list[bytes] = []

    async def on_msg(m: Msg) -> None:
        got.append(m.data)

    await nc.subscribe("citycast.audio.3", cb=on_msg)
    # captured in the past, as a card's blocks always are by the time they are read: nothing waits on the clock
    source = CapturedBlocks(time.time_ns() - 10**9 - 37_000_000, 100)
    caster = Broadcaster(
        nc, channel=3, signer=FrameSigner(key), clock=time.time_ns, packets_per_message=packets_per_message
    )
    report = await caster.run(source.blocks(), captured_ns=source.capture_ns)
    await wait_until(lambda: len(got) == report.messages, timeout=10, what="every message delivered")
    await nc.close()
    verifier = FrameVerifier([key.public_key()])
    stamps = [f.packet_ts(i) for f in map(verifier.verify, got) for i in range(len(f.packets))]
    return stamps, source.times, report.as_dict()


def test_live_blocks_are_stamped_within_a_frame_of_their_capture_time(nats_server: EmbeddedNats) -> None:
    for packets_per_message in (1, 2):
        stamps, captured, report = asyncio.run(_broadcast(nats_server.url, packets_per_message))
        assert len(stamps) == len(captured) == 100
        # the stream starts at the first block's capture time: not on a 100 ms grid at least 50 ms later
        assert stamps[0] == captured[0]
        assert all(abs(s - c) < FRAME_NS for s, c in zip(stamps, captured, strict=True)), [
            (s - c) / 1e6 for s, c in zip(stamps, captured, strict=True)
        ]
        assert stamps == sorted(set(stamps))  # gaps where audio never came, never a stamp used twice
        assert report["skipped_frames"] == 25 and report["max_stamp_error_ms"] < FRAME_NS / 1e6
