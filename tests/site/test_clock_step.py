"""A hostile time responder steps a synced site back an hour, then replays a genuine hour-old frame.

Real nats-server, a real `TimeResponder` serving a clock the attacker sets, a real `SiteAgent` syncing over the bus
and playing into a timed sink; the recording is a frame the trusted key really signed, stamped an hour ago, as
anyone who listened to the bus yesterday holds it. Before the step guard the estimator re-locked on −3600 s and
the recording passed freshness and the replay window: yesterday's emergency played again.
"""

from __future__ import annotations

import time

import nats
import numpy as np
from tests.helpers import SetClock, let_time_pass, wait_until

from citycast.bus.connection import settle
from citycast.bus.server import EmbeddedNats
from citycast.clock.estimator import StepGuard
from citycast.clock.service import TimeResponder
from citycast.media.codec import OpusEncoder
from citycast.media.keys import generate_private_key
from citycast.media.sinks import TimedSink
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects
from citycast.protocol.telemetry import Telemetry
from citycast.site.agent import SiteAgent, SiteConfig

S = 1_000_000_000
HOUR = 3600 * S


async def test_a_stepped_clock_is_refused_and_an_hour_old_frame_never_plays(nats_server: EmbeddedNats) -> None:
    url = nats_server.url
    key = generate_private_key()
    signer = FrameSigner(key)
    packet = OpusEncoder().encode(np.zeros(960, np.float32))

    attacker = SetClock()  # the responder's clock, which the attacker sets at will
    responder = TimeResponder(url, Subjects().time(), attacker)
    await responder.start()
    cfg = SiteConfig(name="s1", nats_url=url, trusted_keys=[key.public_key()], watch_desired=False,
                     telemetry_interval_s=0.2)  # fmt: skip
    agent = SiteAgent(cfg, TimedSink())
    agent.guard = StepGuard(report_after_ns=S)  # report after 1 s instead of 10: a shorter test, the same rule
    nc = await nats.connect(url)
    reports: list[Telemetry] = []

    async def on_telemetry(msg: nats.aio.msg.Msg) -> None:
        reports.append(Telemetry.from_json(msg.data))

    await nc.subscribe(Subjects().telemetry("s1"), cb=on_telemetry)
    await agent.start()
    try:
        await wait_until(lambda: agent.broadcast_now() is not None, "the first sync", timeout=30)
        await let_time_pass(2)  # a few more exchanges: a settled, synced site
        assert agent.guard.anchored and agent.estimator.resets == 0

        attacker.offset_ns = -HOUR
        await wait_until(
            lambda: agent.estimator.resets >= 1 and agent.estimator.synced, "the re-lock on the lie", timeout=60
        )
        # the estimator believes the responder ...
        assert abs(agent.estimator.to_broadcast(agent.clock.now_ns()) - time.time_ns() + HOUR) < S
        # the recording: frames the hub really signed an hour ago (to the second), on a stream of their own
        hour_ago = time.time_ns() - HOUR
        recorded = [signer.sign(channel=1, stream=77, seq=i, ts_ns=hour_ago + i * 20_000_000, packets=[packet])
                    for i in range(5)]  # fmt: skip
        for data in recorded:
            await nc.publish(Subjects().audio(1), data)
        await settle(nc)
        await wait_until(
            lambda: agent.rejected["stale"] + agent.frames >= len(recorded), "the recording to arrive", timeout=10
        )
        assert agent.frames == 0 and agent.engine.stats.packets == 0  # yesterday's recording does not play
        assert agent.rejected["stale"] == len(recorded)
        # ... the site does not
        now = agent.broadcast_now()
        assert now is not None and abs(now - time.time_ns()) < 100_000_000
        # a live frame still plays: the site flies on its own clock rather than going silent
        await nc.publish(Subjects().audio(1), signer.sign(channel=1, stream=78, seq=0, ts_ns=time.time_ns(),
                                                          packets=[packet]))  # fmt: skip
        await wait_until(lambda: agent.frames == 1, "the live frame", timeout=10)
        # and it tells the hub
        await wait_until(lambda: any(r.clock_step_refused_ms for r in reports), "the refusal in telemetry", timeout=10)
        step = next(r.clock_step_refused_ms for r in reports if r.clock_step_refused_ms)
        assert step is not None and abs(step + HOUR / 1e6) < 1000
        assert reports[-1].clock_steps_refused == 1
    finally:
        await agent.stop()
        await responder.stop()
        await nc.close()
