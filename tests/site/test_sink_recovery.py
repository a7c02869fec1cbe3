"""An audio output that fails (a sound card unplugged) is reported at once and retried: the agent keeps its bus and
clock, says why it is silent, and plays again by itself once the output is back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from tests.helpers import wait_until

from citycast.bus.connection import settle
from citycast.bus.server import EmbeddedNats, free_port
from citycast.media.keys import generate_private_key
from citycast.media.sinks import Renderer, SinkError, TimedSink
from citycast.protocol.subjects import Subjects
from citycast.protocol.telemetry import Telemetry
from citycast.site import agent as agent_module
from citycast.site.agent import SiteAgent, SiteConfig


class FlakySoundCard(TimedSink):
    """A real timed sink whose device is missing for its first `missing` opens, then dies once after playing."""

    def __init__(self, missing: int, dies_after_s: float) -> None:
        super().__init__(block=480)
        self.missing = missing
        self.dies_after_s = dies_after_s
        self.opens = 0

    async def run(self, renderer: Renderer) -> None:
        self.opens += 1
        if self.opens <= self.missing:
            raise SinkError("cannot open 'USB DAC': device unavailable")
        if self.opens == self.missing + 1:
            async with asyncio.timeout(self.dies_after_s):
                await super().run(renderer)
            return  # not reached: the output never ends by itself
        await super().run(renderer)


async def test_failing_output_is_reported_retried_and_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "SINK_RETRY_FIRST_S", 0.2)
    monkeypatch.setattr(agent_module, "SINK_HEALTHY_AFTER_S", 0.5)
    server = EmbeddedNats(port=free_port(), workdir=tmp_path / "nats")
    server.start()
    reports: list[Telemetry] = []
    nc = await nats.connect(server.url)
    try:

        async def on_report(msg: nats.aio.msg.Msg) -> None:
            reports.append(Telemetry.from_json(msg.data))

        await nc.subscribe(Subjects().telemetry("s1"), cb=on_report)
        await settle(nc)
        sink = FlakySoundCard(missing=2, dies_after_s=1.5)
        cfg = SiteConfig(name="s1", nats_url=server.url, trusted_keys=[generate_private_key().public_key()],
                         delay_ns=150_000_000, clock_mode="system", telemetry_interval_s=0.2)  # fmt: skip
        agent = SiteAgent(cfg, sink)
        await agent.start()
        try:
            # Missing twice, plays, dies (TimeoutError: its error text is empty, its type is the reason), plays.
            await wait_until(
                lambda: sink.opens >= 4 and agent.sink_error is None and sink.blocks > 150,
                "the sink to reopen and play again",
                timeout=20,
                detail=lambda: (sink.opens, agent.sink_error, sink.blocks),
            )
            assert agent.sink_task is not None and not agent.sink_task.done()
            assert agent.sink_failures == 3

            def recovery_reported() -> bool:
                errors = [r.sink_error for r in reports]
                return "TimeoutError" in errors and errors[-1] is None

            # Telemetry goes out on its own period: wait for the report that follows the recovery.
            await wait_until(recovery_reported, "telemetry saying the output works again", timeout=10)
        finally:
            await agent.stop()
        errors = [r.sink_error for r in reports]
        assert "cannot open 'USB DAC': device unavailable" in errors and "TimeoutError" in errors
        first_bad = errors.index("cannot open 'USB DAC': device unavailable")
        assert errors[-1] is None and None in errors[first_bad:]  # reported working again, twice over
    finally:
        await nc.close()
        server.stop()
