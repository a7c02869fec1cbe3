"""A broker restart: the site reconnects by itself and plays again, in sync, with no help."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import nats
import pytest
from tests.helpers import let_time_pass, wait_until

from citycast.bus.server import EmbeddedNats, free_port
from citycast.clock.local import SystemClock
from citycast.hub.timeserver import TimeService
from citycast.ingest.broadcaster import Broadcaster
from citycast.media.keys import generate_private_key
from citycast.media.sinks import TimedSink
from citycast.media.sources import ToneSource
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects
from citycast.site import agent as agent_module
from citycast.site.agent import SiteAgent, SiteConfig


async def _speak(url: str, signer: FrameSigner, seconds: float) -> None:
    nc = await nats.connect(url)
    caster = Broadcaster(nc, channel=1, signer=signer, clock=SystemClock().now_ns)
    await caster.run(itertools.islice(ToneSource(440).blocks(), round(seconds * 50)))
    await nc.close()


async def _scenario(tmp: Path) -> tuple[int, int, str]:
    port = free_port()
    server = EmbeddedNats(port=port, workdir=tmp / "n1")
    server.start()
    key = generate_private_key()
    signer = FrameSigner(key)
    service = TimeService(server.url, Subjects())
    await service.start()
    cfg = SiteConfig(name="s1", nats_url=server.url, trusted_keys=[key.public_key()], delay_ns=150_000_000)
    agent = SiteAgent(cfg, TimedSink(block=480))
    await agent.start()
    await wait_until(lambda: agent.broadcast_now() is not None, "the site to sync", timeout=20)
    await _speak(server.url, signer, 1.0)
    await wait_until(lambda: agent.engine.stats.decoded >= 40, "the first second played", timeout=10)
    before = agent.engine.stats.decoded
    server.stop()  # the broker goes away...
    await let_time_pass(2.0)  # ...for a while: the site notices and keeps trying
    server = EmbeddedNats(port=port, workdir=tmp / "n2")  # ...and comes back on the same address
    server.start()
    await wait_until(lambda: agent.nc is not None and agent.nc.is_connected, "the site to reconnect", timeout=30)
    await asyncio.sleep(1.0)  # its subscriptions and clock sync re-established (the agent exposes no event for it)
    await _speak(server.url, signer, 1.0)
    await wait_until(lambda: agent.engine.stats.decoded >= before + 40, "the second second played", timeout=10)
    after = agent.engine.stats.decoded
    state = agent.engine.state.value
    await agent.stop()
    await service.stop()
    server.stop()
    return before, after, state


def test_site_reconnects_after_a_broker_restart_and_plays_again(tmp_path: Path) -> None:
    before, after, state = asyncio.run(_scenario(tmp_path))
    assert before >= 40  # it played the first second
    assert after - before >= 40  # and the second one, after the restart
    assert state in ("playing", "fallback", "idle")


class _BrokenSink:
    sample_rate = 48_000
    xruns = 0

    async def run(self, renderer: object) -> None:
        await asyncio.sleep(0.2)
        raise OSError("the sound card went away")


def test_a_sink_that_never_works_leaves_the_agent_running_and_saying_why(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent outlives a dead output (its bus, clock and reports go on; see test_sink_recovery for the way
    back); only `done`/`duration_s` end a run."""
    monkeypatch.setattr(agent_module, "SINK_RETRY_FIRST_S", 0.1)
    key = generate_private_key()
    cfg = SiteConfig(name="s1", nats_url=nats_server.url, trusted_keys=[key.public_key()], clock_mode="system")
    agent = SiteAgent(cfg, _BrokenSink())
    asyncio.run(agent.run_until(duration_s=2.0))
    assert agent.sink_failures >= 3 and agent.sink_error == "the sound card went away"
    assert agent.telemetry().sink_error == "the sound card went away"
