"""A change of playing state is reported at once, not at the next telemetry period: after a cut the console (and
a drill's resync time) sees a site playing again one round trip after it does."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import nats
from tests.helpers import wait_until

from citycast.bus.connection import settle
from citycast.bus.server import EmbeddedNats, free_port
from citycast.clock.local import SystemClock
from citycast.ingest.broadcaster import Broadcaster
from citycast.media.keys import generate_private_key
from citycast.media.sinks import TimedSink
from citycast.media.sources import ToneSource
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects
from citycast.protocol.telemetry import Telemetry
from citycast.site.agent import SiteAgent, SiteConfig

PERIOD_S = 30.0  # far longer than the test: every report it sees was sent for a change of state


async def test_state_changes_are_reported_within_a_fraction_of_a_second(tmp_path: Path) -> None:
    server = EmbeddedNats(port=free_port(), workdir=tmp_path / "nats")
    server.start()
    key = generate_private_key()
    reports: list[tuple[float, str]] = []
    nc = await nats.connect(server.url)
    agent: SiteAgent | None = None
    try:

        async def on_report(msg: nats.aio.msg.Msg) -> None:
            reports.append((time.monotonic(), Telemetry.from_json(msg.data).state))

        await nc.subscribe(Subjects().telemetry("s1"), cb=on_report)
        await settle(nc)
        cfg = SiteConfig(name="s1", nats_url=server.url, trusted_keys=[key.public_key()], delay_ns=150_000_000,
                         clock_mode="system", telemetry_interval_s=PERIOD_S)  # fmt: skip
        agent = SiteAgent(cfg, TimedSink(block=480))
        await agent.start()
        caster = Broadcaster(nc, channel=1, signer=FrameSigner(key), clock=SystemClock().now_ns)
        speaking = asyncio.ensure_future(caster.run(itertools.islice(ToneSource(440).blocks(), 100)))
        seen: dict[str, float] = {}

        def state_seen(state: str) -> bool:
            assert agent is not None
            if agent.engine.state.value == state:
                seen.setdefault(state, time.monotonic())
            return any(s == state for _, s in reports)

        await wait_until(lambda: state_seen("playing"), "a report saying the site plays", timeout=10)
        await speaking
        await wait_until(lambda: any(s != "playing" for _, s in reports[-1:]) and state_seen(reports[-1][1]),
                         "a report saying the site stopped playing", timeout=10)  # fmt: skip
        sent_playing = next(t for t, s in reports if s == "playing")
        assert sent_playing - seen["playing"] < 0.5, reports
        assert len(reports) <= 4, reports  # changes only, not a report per poll
    finally:
        if agent is not None:
            await agent.stop()
        await nc.close()
        server.stop()
