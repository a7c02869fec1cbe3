"""The delay tuner in simulated time: a fleet on a WAN path that worsens mid-address and recovers, second by
second, with every frame's margin computed under the schedule the tuner signs (sans-IO, no bus)."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import replace
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.msg import Msg
from tests.helpers import let_time_pass, wait_until

from citycast.bus.server import EmbeddedNats, free_port
from citycast.clock.local import SkewedClock, SystemClock
from citycast.hub.delay_tuner import DelayTuner, TunerSettings
from citycast.hub.runtime import Hub, HubOptions
from citycast.hub.timeserver import TimeService
from citycast.ingest.broadcaster import Broadcaster
from citycast.media.keys import generate_private_key
from citycast.media.sinks import TimedSink
from citycast.media.sources import MarkerSource
from citycast.protocol.delay import DelaySchedule
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects
from citycast.protocol.telemetry import Telemetry
from citycast.site.agent import SiteAgent, SiteConfig
from citycast.tooling.bench.analysis import load_trace
from citycast.tooling.bench.delay_trace import simulate as run
from citycast.tooling.bench.delay_trace import site_report, worsening

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000
CHANNEL = 3


def report(site: str, margins_ms: list[float], delay_ms: float, ts_ns: int) -> Telemetry:
    return site_report(site, margins_ms, delay_ms, ts_ns, channel=CHANNEL)


def test_d_rises_before_any_frame_comes_too_late_and_falls_when_the_path_recovers() -> None:
    trace = run(worsening, 900)
    assert sum(trace.too_late) == 0, [i for i, n in enumerate(trace.too_late) if n]
    peak = max(trace.delays_ms)
    assert peak >= 300 and peak <= 400, peak  # covers 250 + 10 ms jitter + spikes, with the target margin
    first_raise = next(sec for sec, s in trace.changes if s.new_delay_ns > s.old_delay_ns)
    assert 120 < first_raise < 180  # while the path degrades, not after
    assert trace.delays_ms[-1] <= 250, trace.delays_ms[-1]  # back down once the path is good again
    assert trace.delays_ms[-1] >= 150  # but never below what the path needs: 80 ms + target margin
    # every change is gentle: at most 1 % of stretch, so speech is never audibly bent
    assert all(s.ramp_ns * 0.01 >= abs(s.new_delay_ns - s.old_delay_ns) - 1 for _, s in trace.changes)


def test_without_auto_the_same_path_makes_sites_conceal() -> None:
    """The scenario is a real threat: at a fixed D the frames come too late while the path is at its worst."""
    trace = run(worsening, 500, auto=False)
    assert sum(trace.too_late) > 1000
    assert trace.changes == []


def test_a_path_wobbling_around_the_thresholds_does_not_make_d_flap() -> None:
    """A path that swings between 70 and 140 ms every 20 s for 20 minutes: D goes up once (or twice) and stays."""
    trace = run(lambda t: 140.0 if int(t // 20) % 2 else 70.0, 1200)
    assert sum(trace.too_late) == 0
    assert len(trace.changes) <= 3, [(sec, s.new_delay_ns / 1e6) for sec, s in trace.changes]
    assert all(s.new_delay_ns > s.old_delay_ns for _, s in trace.changes)  # never lowered into the next swing


def test_d_stays_within_its_bounds() -> None:
    trace = run(lambda t: 70.0 + 10 * t, 300)  # a path that keeps getting worse without end
    assert max(trace.delays_ms) == TunerSettings().max_delay_ns / 1e6
    trace = run(lambda t: 1.0, 600, start_delay_ns=300_000_000)  # a LAN
    assert min(trace.delays_ms) >= TunerSettings().min_delay_ns / 1e6


def test_a_restarted_hub_starts_from_the_d_the_sites_play() -> None:
    tuner = DelayTuner(TunerSettings(), 490_000_000)
    tuner.set_auto(True)
    tuner.on_telemetry(report("s0", [10.0, 12.0], 300.0, T0), T0)
    assert tuner.channel(CHANNEL).delay_ns == 300_000_000
    (schedule,) = tuner.decide(T0 + S).values()  # margin 10 ms < 40: raise, from 300
    assert schedule.old_delay_ns == 300_000_000 and schedule.new_delay_ns > 300_000_000


def test_auto_per_channel_wins_over_the_global_switch() -> None:
    tuner = DelayTuner(TunerSettings(), 200_000_000)
    tuner.set_auto(True)
    tuner.set_auto(False, channel=CHANNEL)
    tuner.on_telemetry(report("s0", [5.0], 200.0, T0), T0)
    assert tuner.decide(T0 + S) == {}
    rec = tuner.view(T0 + S)[0]
    assert rec["auto"] is False and rec["recommended_ms"] == 280.0  # still recommends: 195 + 80, stepped


@pytest.mark.parametrize("bad", [{"raise_below_ns": 100_000_000}, {"min_delay_ns": 0}, {"raise_stretch": 0.2}])
def test_settings_without_hysteresis_or_bounds_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DelayTuner(TunerSettings(**bad), 200_000_000)  # type: ignore[arg-type]


# -- for real: site agents on a real nats-server, the hub's tuner reading their telemetry ---------------------

LIVE_D0 = 150_000_000
LIVE_SETTINGS = TunerSettings(
    # A hub that wants 160 ms of margin: on loopback (lateness ~1-10 ms) D = 150 ms is too little, so it raises.
    min_delay_ns=100_000_000,
    max_delay_ns=1_000_000_000,
    raise_below_ns=160_000_000,
    target_margin_ns=200_000_000,
    lower_above_ns=400_000_000,
    short_window_ns=2 * S,
    long_window_ns=4 * S,
)


async def _live(url: str, out: Path) -> tuple[list[SiteAgent], DelayTuner, list[DelaySchedule], int]:
    key = generate_private_key()
    signer = FrameSigner(key)
    service = TimeService(url, Subjects())
    await service.start()
    rng = random.Random(11)
    agents = []
    for i in range(3):
        clock = SkewedClock.random(rng)
        sink = TimedSink(clock, dac_ppm=rng.uniform(-100, 100), block=480, wav_path=out / f"s{i}.wav", duration_s=40)
        cfg = SiteConfig(name=f"s{i}", nats_url=url, trusted_keys=[key.public_key()], delay_ns=LIVE_D0,
                         channel=CHANNEL, watch_desired=False)  # fmt: skip
        agent = SiteAgent(cfg, sink, clock=clock)
        await agent.start()
        agents.append(agent)
    await wait_until(lambda: all(a.broadcast_now() is not None for a in agents), "the sites to sync", timeout=30)
    await let_time_pass(3)
    tuner = DelayTuner(LIVE_SETTINGS, LIVE_D0)
    tuner.set_auto(True, channel=CHANNEL)
    hub_nc = await nats.connect(url)
    schedules: list[DelaySchedule] = []

    async def on_telemetry(msg: Msg) -> None:
        tuner.on_telemetry(Telemetry.from_json(msg.data), time.time_ns())
        for schedule in tuner.decide(time.time_ns()).values():
            signer.delays[CHANNEL] = schedule  # what the hub's runtime does: every frame from now carries it
            schedules.append(schedule)

    await hub_nc.subscribe(Subjects().telemetry_all(), cb=on_telemetry)
    caster = Broadcaster(hub_nc, channel=CHANNEL, signer=signer, clock=SystemClock().now_ns)
    report = await caster.run(itertools.islice(MarkerSource(0.5, count=MARKERS).blocks(), 100_000))
    await let_time_pass(0.8)
    for a in agents:
        await a.stop()
    await hub_nc.close()
    await service.stop()
    return agents, tuner, schedules, report.ts0_ns


MARKERS = 40  # 20 s of chirps, one every 0.5 s


def test_the_hub_raises_d_and_every_real_site_switches_at_the_same_sample(nats_server: EmbeddedNats,
                                                                           tmp_path: Path) -> None:  # fmt: skip
    agents, _tuner, schedules, ts0 = asyncio.run(_live(nats_server.url, tmp_path))
    # A loaded machine may stall a site for tens of ms and earn a second raise: each is followed the same way.
    assert 1 <= len(schedules) <= 3, schedules
    first, last = schedules[0], schedules[-1]
    assert first.old_delay_ns == LIVE_D0 and first.new_delay_ns >= 200_000_000
    for a in agents:  # every site followed the signed schedules, without a jump, a gap or a lost frame
        assert a.engine.delay_schedule == last
        st = a.engine.stats
        assert st.resyncs == 0 and st.underruns == 0 and st.concealed == 0, st
        assert not a.rejected

    def scheduled_delay(stamp: int) -> int:
        in_force = [s for s in schedules if s.from_ts_ns <= stamp]
        return in_force[-1].delay_at(stamp) if in_force else LIVE_D0

    traces = [load_trace(tmp_path / f"s{i}.wav") for i in range(3)]
    heard = [tr.heard_ns for tr in traces]
    assert all(len(h) == MARKERS for h in heard), [len(h) for h in heard]
    # Same sample, same instant: every chirp, before, during and after the change, within 1 ms on all three.
    skew = max(max(h[k] for h in heard) - min(h[k] for h in heard) for k in range(MARKERS))
    assert skew < 1_000_000, skew
    # and D really moved as scheduled: each chirp's latency is D(its stamp) (+ the codec's 312-sample look-ahead)
    for k in range(MARKERS):
        stamp = ts0 + k * 500_000_000
        latency = heard[0][k] - stamp - scheduled_delay(stamp)
        assert 0 < latency < 10_000_000, (k, latency / 1e6)
    inside = [k for k in range(MARKERS) if first.from_ts_ns < ts0 + k * 500_000_000 < first.end_ts_ns]
    assert inside  # chirps played while D was moving


def test_a_report_counts_once_however_often_the_hub_reads_it() -> None:
    """The hub reads each site's latest report every second: a site that fell silent after one bad second must not
    keep that second alive (and D up) by being read again and again."""
    tuner = DelayTuner(TunerSettings(), 200_000_000)
    bad = report("s0", [5.0], 200.0, T0)
    for sec in range(120):
        tuner.on_telemetry(bad, T0 + sec * S)
    assert tuner.channel(CHANNEL).worst_lateness_ns(T0 + 119 * S, 60 * S) is None


# -- the setting: through the hub's API, kept across a restart ---------------------------------------------------


async def _settings_scenario(tmp: Path) -> None:
    opts = HubOptions(data_dir=tmp / "hub", http_port=free_port(), nats_port=free_port(), delay_ms=200)
    hub = Hub(opts)
    await hub.start()
    try:
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=20) as api:
            r = await api.post("/api/login", json={"username": "admin", "password": hub.admin_password})
            api.headers["Authorization"] = f"Bearer {r.json()['token']}"
            assert (await api.get("/api/settings/delay")).json() == {"auto": False, "channels": {}, "tuning": []}
            assert (await api.put("/api/settings/delay", json={"auto": True, "channel": 0})).status_code == 422
            r = await api.put("/api/settings/delay", json={"auto": True, "channel": 5})
            assert r.status_code == 200, r.text
            assert r.json()["channels"] == {"5": True} and r.json()["auto"] is False
            assert hub.delay_tuner.channel(5).auto and not hub.delay_tuner.channel(6).auto
            # a site's report reaches the tuner through the fleet: the console's row appears, with a recommendation
            hub.fleet.on_telemetry(report("s0", [20.0, 150.0], 200.0, time.time_ns()), time.time_ns())
            hub._tune_delay_once(time.time_ns())
            row = next(x for x in (await api.get("/api/settings/delay")).json()["tuning"] if x["channel"] == CHANNEL)
            assert row["recommended_ms"] == 260.0 and row["margin_min_ms"] == 20.0 and row["auto"] is False
    finally:
        await hub.stop()
    hub = Hub(replace(opts, http_port=free_port(), nats_port=free_port()))  # the switch outlives the process
    await hub.start()
    try:
        await wait_until(lambda: hub.delay_tuner.auto_of(5), "the stored setting to be applied", timeout=10)
        assert not hub.delay_tuner.auto_of(6)
    finally:
        await hub.stop()


def test_auto_is_a_setting_of_the_hub_through_its_api(tmp_path: Path) -> None:
    asyncio.run(_settings_scenario(tmp_path))
