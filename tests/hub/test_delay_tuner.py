"""The delay tuner in simulated time: a fleet on a WAN path that worsens mid-address and recovers, second by
second, with every frame's margin computed under the schedule the tuner signs (sans-IO, no bus)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from citycast.hub.delay_tuner import DelayTuner, TunerSettings
from citycast.protocol.delay import DelaySchedule
from citycast.protocol.telemetry import Telemetry, margin_summary

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000
CHANNEL = 3


def report(site: str, margins_ms: list[float], delay_ms: float) -> Telemetry:
    return Telemetry(
        site=site, ts_ns=0, state="playing", channel=CHANNEL, buffer_ms=0.0, clock_offset_ms=0.0,
        clock_drift_ppm=0.0, clock_error_ms=0.0, sync_error_ms=0.0, tracking_error_ms=0.0, resample_ppm=0.0,
        underruns=0, concealed=0, late=0, rejected={}, level_rms_dbfs=0.0, level_peak_dbfs=0.0, link_rtt_ms=0.0,
        sink_xruns=0, resyncs=0, frames=0, delay_ms=delay_ms, margin_ms=margin_summary(margins_ms),
    )  # fmt: skip


@dataclass
class Trace:
    delays_ms: list[float]  # D the channel is heading for, each second
    too_late: list[int]  # frames that came after their play time, each second (what a site conceals)
    changes: list[tuple[int, DelaySchedule]]


def run(path_ms: Callable[[float], float], seconds: int, *, auto: bool = True, sites: int = 5, seed: int = 1,
        start_delay_ns: int = 200_000_000) -> Trace:  # fmt: skip
    """Each second, 50 frames per site arrive `path_ms(t)` + 0..10 ms jitter (a rare 30 ms spike) after their
    stamp; each frame's margin is D(stamp) − lateness under the schedule in force; the sites report, the tuner
    decides, and what it decides is what the next frames are played with."""
    rng = random.Random(seed)
    tuner = DelayTuner(TunerSettings(), start_delay_ns)
    tuner.set_auto(auto)
    schedule = DelaySchedule.steady(start_delay_ns)
    trace = Trace([], [], [])
    for sec in range(seconds):
        now = T0 + sec * S
        late = 0
        for site in range(sites):
            margins = []
            for k in range(50):
                ts = now + k * 20_000_000
                lateness = path_ms(sec) + rng.uniform(0, 10) + (30 if rng.random() < 0.002 else 0)
                margin = schedule.delay_at(ts) / 1e6 - lateness
                late += margin < 0
                margins.append(margin)
            tuner.on_telemetry(
                report(f"s{site}", margins, schedule.delay_at(now + S - schedule.new_delay_ns) / 1e6), now + S
            )
        for channel, new in tuner.decide(now + S).items():
            assert channel == CHANNEL
            assert new.from_ts_ns >= now + S + 1 * S - 1  # scheduled ahead: every site has it in time
            assert new.old_delay_ns == schedule.new_delay_ns  # continues where the last one ended
            schedule = new
            trace.changes.append((sec, new))
        trace.delays_ms.append(schedule.new_delay_ns / 1e6)
        trace.too_late.append(late)
    return trace


def worsening(t: float) -> float:
    """70 ms one way; from 120 s it degrades by 3 ms a second to 250 ms, holds, recovers from 400 s to 70 ms."""
    if t < 120:
        return 70.0
    if t < 180:
        return 70.0 + 3.0 * (t - 120)
    if t < 400:
        return 250.0
    if t < 460:
        return 250.0 - 3.0 * (t - 400)
    return 70.0


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
    tuner.on_telemetry(report("s0", [10.0, 12.0], 300.0), T0)
    assert tuner.channel(CHANNEL).delay_ns == 300_000_000
    (schedule,) = tuner.decide(T0 + S).values()  # margin 10 ms < 40: raise, from 300
    assert schedule.old_delay_ns == 300_000_000 and schedule.new_delay_ns > 300_000_000


def test_auto_per_channel_wins_over_the_global_switch() -> None:
    tuner = DelayTuner(TunerSettings(), 200_000_000)
    tuner.set_auto(True)
    tuner.set_auto(False, channel=CHANNEL)
    tuner.on_telemetry(report("s0", [5.0], 200.0), T0)
    assert tuner.decide(T0 + S) == {}
    rec = tuner.view(T0 + S)[0]
    assert rec["auto"] is False and rec["recommended_ms"] == 280.0  # still recommends: 195 + 80, stepped


@pytest.mark.parametrize("bad", [{"raise_below_ns": 100_000_000}, {"min_delay_ns": 0}, {"raise_stretch": 0.2}])
def test_settings_without_hysteresis_or_bounds_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DelayTuner(TunerSettings(**bad), 200_000_000)  # type: ignore[arg-type]
