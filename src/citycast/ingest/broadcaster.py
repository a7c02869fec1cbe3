"""Ingest: a PCM source becomes signed Opus frames on the bus, stamped with the broadcast clock."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from nats.aio.client import Client

from citycast.ingest.pacing import FramePacer
from citycast.media.codec import OpusEncoder
from citycast.media.render import Samples
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    channel: int
    stream: int
    ts0_ns: int
    messages: int = 0
    packets: int = 0
    late_publishes: int = 0  # messages that left more than 5 ms after they were due
    max_publish_lag_ns: int = 0
    encode_ns: int = 0
    sign_ns: int = 0
    lookahead_samples: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "channel": self.channel,
            "stream": self.stream,
            "ts0_ns": self.ts0_ns,
            "messages": self.messages,
            "packets": self.packets,
            "late_publishes": self.late_publishes,
            "max_publish_lag_ms": self.max_publish_lag_ns / 1e6,
            "encode_us_per_packet": self.encode_ns / max(1, self.packets) / 1e3,
            "sign_us_per_message": self.sign_ns / max(1, self.messages) / 1e3,
            "lookahead_samples": self.lookahead_samples,
            **self.extra,
        }


class Broadcaster:
    """Publishes one source on one channel, paced in real time by the broadcast clock."""

    def __init__(
        self,
        nc: Client,
        *,
        channel: int,
        signer: FrameSigner,
        clock: Callable[[], int],
        subjects: Subjects | None = None,
        packets_per_message: int = 1,
        bitrate: int = 64_000,
    ) -> None:
        if not 1 <= packets_per_message <= 4:
            raise ValueError("packets per message must be 1..4")
        self.nc = nc
        self.channel = channel
        self.signer = signer
        self.clock = clock
        self.subject = (subjects or Subjects()).audio(channel)
        self.packets_per_message = packets_per_message
        self.encoder = OpusEncoder(bitrate=bitrate)

    async def run(
        self,
        blocks: Iterator[Samples],
        *,
        ts0_ns: int | None = None,
        max_packets: int | None = None,
        on_start: Callable[[IngestReport], None] | None = None,
        on_publish: Callable[[int], None] | None = None,
        captured_ns: Callable[[], int | None] | None = None,
    ) -> IngestReport:
        """`on_publish(lag_ns)` is told, after each message, how late it left against its schedule.

        A live source (line-in) passes `captured_ns`, which tells, right after a block was taken, when that
        block's first sample was captured on the broadcast clock. Each frame is then stamped with its capture
        time to within one frame (`FramePacer.live_seq`): the stream starts at the first block's capture time,
        not on a grid ahead of now, which would only add delay. The report counts `skipped_frames` (audio the
        card never delivered), `dropped_blocks` and the `max_stamp_error_ms` against capture time.
        """
        it = iter(blocks)

        async def take() -> Samples | None:
            if captured_ns is None:
                return next(it, None)
            # a sound card's blocks come when it has them: wait for one off the loop, which keeps serving
            return await asyncio.to_thread(next, it, None)

        first = await take()
        captured = captured_ns() if captured_ns is not None and first is not None else None
        if ts0_ns is not None:
            ts0 = ts0_ns
        elif captured is not None:
            ts0 = captured
        else:
            ts0 = FramePacer.aligned_start(self.clock(), margin_ns=50_000_000)
        pacer = FramePacer(ts0, self.packets_per_message)
        report = IngestReport(
            channel=self.channel,
            stream=random.getrandbits(32),
            ts0_ns=ts0,
            lookahead_samples=self.encoder.lookahead_samples,
        )
        if on_start:
            on_start(report)
        seq = 0
        pending: list[bytes] = []
        stamp_error = skipped = dropped = 0

        async def taken() -> AsyncIterator[Samples]:
            pcm = first
            while pcm is not None:
                yield pcm
                pcm = await take()

        async for pcm in taken():
            if captured_ns is not None and (at := captured_ns()) is not None:
                slot = pacer.live_seq(seq + len(pending), at)
                if slot is None:
                    dropped += 1
                    report.extra["dropped_blocks"] = dropped
                    continue
                if slot != seq + len(pending):
                    if pending:  # a message holds consecutive packets: send what came before the gap
                        await self._publish(report, pacer, seq, pending, on_publish)
                        seq += len(pending)
                        pending = []
                    skipped += slot - seq
                    report.extra["skipped_frames"] = skipped
                    seq = slot
                stamp_error = max(stamp_error, abs(pacer.ts_of(slot) - at))
                report.extra["max_stamp_error_ms"] = stamp_error / 1e6
            t = time.perf_counter_ns()
            pending.append(self.encoder.encode(pcm))
            report.encode_ns += time.perf_counter_ns() - t
            if len(pending) < self.packets_per_message:
                continue
            await self._publish(report, pacer, seq, pending, on_publish)
            seq += len(pending)
            pending = []
            if max_packets is not None and seq >= max_packets:
                break
        if pending:
            await self._publish(report, pacer, seq, pending, on_publish)
        await self.nc.flush()
        return report

    async def _publish(
        self,
        report: IngestReport,
        pacer: FramePacer,
        seq: int,
        packets: list[bytes],
        on_publish: Callable[[int], None] | None = None,
    ) -> None:
        due = pacer.due_ns(seq, len(packets))
        wait = (due - self.clock()) / 1e9
        if wait > 0:
            await asyncio.sleep(wait)
        else:  # a live source is never ahead of its schedule: still let the bus's flusher run
            await asyncio.sleep(0)
        t = time.perf_counter_ns()
        data = self.signer.sign(
            channel=self.channel, stream=report.stream, seq=seq, ts_ns=pacer.ts_of(seq), packets=packets
        )
        report.sign_ns += time.perf_counter_ns() - t
        await self.nc.publish(self.subject, data)
        lag = self.clock() - due
        report.max_publish_lag_ns = max(report.max_publish_lag_ns, lag)
        if on_publish is not None:
            on_publish(lag)
        if lag > 5_000_000:
            report.late_publishes += 1
        report.messages += 1
        report.packets += len(packets)
