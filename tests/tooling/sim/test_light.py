from __future__ import annotations

import time
from collections import defaultdict

import nats
import pytest
from nats.aio.msg import Msg
from tests.helpers import let_time_pass, wait_until

from citycast.bus.server import EmbeddedNats
from citycast.hub.monitor import parse_telemetry
from citycast.protocol.subjects import Subjects
from citycast.protocol.telemetry import Telemetry
from citycast.tooling.sim.light import LightFleet, run_light_sites


async def test_light_sites_publish_real_telemetry(nats_server: EmbeddedNats) -> None:
    subjects = Subjects("lt")
    names = [f"s-{i}" for i in range(30)]
    got: dict[str, list[Telemetry]] = defaultdict(list)
    arrival: dict[str, float] = {}

    async def on_msg(msg: Msg) -> None:
        site = msg.subject.rsplit(".", 1)[1]
        got[site].append(parse_telemetry(site, msg.data))  # what the hub accepts
        arrival[site] = time.monotonic()

    nc = await nats.connect(nats_server.url)
    await nc.subscribe(subjects.telemetry_all(), cb=on_msg)
    fleet = LightFleet(nats_server.url, names, subjects=subjects, per_connection=10, sync_after_s=(0.2, 0.6))
    assert fleet.stats.connections == 3
    async with fleet:
        await let_time_pass(2.6)  # 2 to 4 reports each, one a second
        assert set(got) == set(names)
        assert all(2 <= len(v) <= 4 for v in got.values())  # one report a second each
        first = got["s-0"][0]
        assert first.state == "syncing" and first.ts_ns == 0 and first.level_rms_dbfs == -180.0
        assert all(v[-1].state == "idle" for v in got.values())  # synced by themselves

        t0 = time.monotonic()
        await fleet.force("s-5", state="playing", muted=False, volume=1.5, underruns=2, rejected={"badsignature": 1})
        await wait_until(
            lambda: arrival["s-5"] >= t0 and got["s-5"][-1].state == "playing", "s-5's forced report", timeout=5
        )
        last = got["s-5"][-1]
        assert arrival["s-5"] >= t0 and last.state == "playing" and last.volume == 1.5
        assert last.underruns == 2 and last.rejected == {"badsignature": 1} and -40 < last.level_rms_dbfs < -3
        assert 78 <= last.buffer_ms <= 102 and last.sync_error_ms < 1.0

        await fleet.force("s-6", silent=True)
        n6 = len(got["s-6"])
        await let_time_pass(1.3)  # s-6 stays silent while the others report
        assert len(got["s-6"]) == n6 and len(got["s-7"]) > n6 - 1
        with pytest.raises(ValueError, match="state must be"):
            await fleet.force("s-1", state="dancing")
    assert fleet.stats.published >= 60 and fleet.stats.publish_errors == 0
    await nc.close()


async def test_run_light_sites_and_bad_arguments(nats_server: EmbeddedNats) -> None:
    stats = await run_light_sites(nats_server.url, ["a", "b"], duration_s=1.5, change_rate=0.5, seed=3)
    assert stats.sites == 2 and stats.connections == 1 and stats.published >= 2
    with pytest.raises(ValueError, match="credentials files"):
        LightFleet(nats_server.url, ["a", "b", "c"], per_connection=1, creds=["x", None])
    with pytest.raises(ValueError, match="given twice"):
        LightFleet(nats_server.url, ["a", "a"])
