"""Concealed frames are said in the site's log with their kind and time: the console counts them, but matching a
glitch to its cause (a path that came back, a stalled process) needs to know when and whether the frames were late
or never came."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from pathlib import Path
from typing import Any

import nats
import pytest
from tests.helpers import wait_until

from citycast.bus.connection import settle
from citycast.bus.server import EmbeddedNats, free_port
from citycast.clock.local import SystemClock
from citycast.ingest.broadcaster import Broadcaster
from citycast.media.keys import generate_private_key
from citycast.media.sinks import TimedSink
from citycast.media.sources import ToneSource
from citycast.protocol.frame import FrameSigner
from citycast.site.agent import SiteAgent, SiteConfig

LOST = range(40, 43)  # frames that never reach the site


class LossyBus:
    """The broadcaster's side of the bus, losing three frames in the middle of the address."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.sent = 0

    async def publish(self, subject: str, data: bytes) -> None:
        self.sent += 1
        if self.sent - 1 not in LOST:
            await self.nc.publish(subject, data)

    async def flush(self) -> None:
        await settle(self.nc)


async def test_lost_frames_are_logged_with_their_kind(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = EmbeddedNats(port=free_port(), workdir=tmp_path / "nats")
    server.start()
    key = generate_private_key()
    nc = await nats.connect(server.url)
    agent: SiteAgent | None = None
    try:
        cfg = SiteConfig(name="s1", nats_url=server.url, trusted_keys=[key.public_key()], delay_ns=150_000_000,
                         clock_mode="system", telemetry_interval_s=0.5)  # fmt: skip
        agent = SiteAgent(cfg, TimedSink(block=480))
        await agent.start()
        caplog.set_level(logging.WARNING, logger="citycast.site.agent")
        caster = Broadcaster(LossyBus(nc), channel=1, signer=FrameSigner(key), clock=SystemClock().now_ns)  # type: ignore[arg-type]
        await caster.run(itertools.islice(ToneSource(440).blocks(), 100))
        await wait_until(lambda: agent is not None and agent.engine.stats.concealed >= len(LOST), "the gap played")
        await wait_until(lambda: "frames concealed" in caplog.text, "the loss in the log", timeout=5)
        line = next(r.getMessage() for r in caplog.records if "frames concealed" in r.getMessage())
        assert line.startswith(f"s1: {len(LOST)} frames concealed (0 underruns, 0 late)"), line
        assert "least margin" in line
        # The timed sink asks for each block its queue (about 20 ms) ahead of its play time.
        lead = re.search(r"the sink asks for audio (-?[\d.]+) ms ahead of play", line)
        assert lead is not None and 5.0 <= float(lead.group(1)) <= 200.0, line
        await asyncio.sleep(1.2)  # two more reports: the same loss is not said again
        assert sum("frames concealed" in r.getMessage() for r in caplog.records) == 1
    finally:
        if agent is not None:
            await agent.stop()
        await nc.close()
        server.stop()
