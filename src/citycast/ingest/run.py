"""`citycast ingest`: connect, stamp, sign and publish one source until it ends."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citycast.bus.authority import INGEST_INBOX_PREFIX
from citycast.bus.connection import connect
from citycast.clock.local import SystemClock
from citycast.ingest.broadcaster import Broadcaster, IngestReport
from citycast.media.sources import LineInSource, Source
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects


@dataclass
class IngestOptions:
    nats_url: str
    channel: int = 1
    prefix: str = "citycast"
    packets_per_message: int = 1
    bitrate: int = 64_000
    seconds: float | None = None
    report_path: Path | None = None
    creds: Path | None = None  # the ingest's NATS credentials when the bus runs in JWT mode (hub: nats-auth/)


async def run_ingest(source: Source, key: Ed25519PrivateKey, opts: IngestOptions) -> IngestReport:
    nc = await connect(
        opts.nats_url,
        name=f"ingest:{opts.channel}",
        forever=False,
        creds=opts.creds,
        inbox_prefix=INGEST_INBOX_PREFIX if opts.creds else None,
    )
    clock = SystemClock()  # ingest runs beside the hub, whose clock *is* the broadcast clock
    if isinstance(source, LineInSource):
        source.clock = clock.now_ns
    caster = Broadcaster(
        nc,
        channel=opts.channel,
        signer=FrameSigner(key),
        clock=clock.now_ns,
        subjects=Subjects(opts.prefix),
        packets_per_message=opts.packets_per_message,
        bitrate=opts.bitrate,
    )
    blocks = source.blocks()
    if opts.seconds is not None:
        blocks = itertools.islice(blocks, round(opts.seconds * 50))

    def write(report: IngestReport, done: bool) -> None:
        if opts.report_path is not None:
            data = {**report.as_dict(), "source": source.description, "done": done}
            opts.report_path.write_text(json.dumps(data, indent=1))

    try:
        captured_ns = source.capture_ns if isinstance(source, LineInSource) else None
        report = await caster.run(blocks, on_start=lambda r: write(r, False), captured_ns=captured_ns)
        write(report, True)
        return report
    finally:
        await nc.drain()
