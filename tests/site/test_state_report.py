"""A change of playing state is reported at once, not at the next telemetry period: after a cut the console (and
a drill's resync time) sees a site playing again one round trip after it does."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import nats
from tests.helpers import wait_until

from citycast.bus.server import EmbeddedNats, free_port
from citycast.clock.local import SystemClock
from citycast.ingest.broadcaster import Broadcaster
from citycast.media.keys import PrivateKey, generate_private_key
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
        await nc.flush()
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


async def _speak(url: str, key: PrivateKey, frames: int) -> None:
    nc = await nats.connect(url)
    try:
        caster = Broadcaster(nc, channel=1, signer=FrameSigner(key), clock=SystemClock().now_ns, packets_per_message=4)
        await caster.run(itertools.islice(ToneSource(440).blocks(), frames))
    finally:
        await nc.close()


async def test_a_playing_site_with_nothing_to_report_wakes_only_for_its_blocks(tmp_path: Path) -> None:
    """The sink looks for news after its blocks: the reporter no longer wakes the loop ten times a second on a box
    where every wake-up of Python costs more than the work it does (docs/benchmarks.md, "Wake-ups")."""
    server = EmbeddedNats(port=free_port(), workdir=tmp_path / "nats")
    server.start()
    key = generate_private_key()
    nc = await nats.connect(server.url)
    agent: SiteAgent | None = None
    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    select = selector.select
    wakes = [0]

    def counting_select(timeout: float | None = None) -> object:
        if timeout is None or timeout > 0:  # the loop goes to sleep (a zero timeout only polls between callbacks)
            wakes[0] += 1
        return select(timeout)

    try:
        cfg = SiteConfig(name="s1", nats_url=server.url, trusted_keys=[key.public_key()], delay_ns=200_000_000,
                         clock_mode="system", telemetry_interval_s=PERIOD_S, watch_desired=False)  # fmt: skip
        agent = SiteAgent(cfg, TimedSink(block=2400))  # 20 blocks a second
        await agent.start()
        # The speaker runs on a loop of its own: only the site's wake-ups are counted.
        speaking = asyncio.ensure_future(asyncio.to_thread(asyncio.run, _speak(server.url, key, frames=250)))
        await wait_until(lambda: agent is not None and agent.engine.state.value == "playing", "playing", timeout=10)
        await asyncio.sleep(0.5)
        selector.select = counting_select
        t0 = loop.time()
        await asyncio.sleep(2.0)
        per_s = wakes[0] / (loop.time() - t0)
        selector.select = select
        await speaking
        # 20 blocks, 12.5 messages (4 packets each), the clock map's 4 a second and the bus's own: 38 measured;
        # the reporter's own poll made it 47.5.
        assert per_s < 43, per_s
    finally:
        selector.select = select
        if agent is not None:
            await agent.stop()
        await nc.close()
        server.stop()
