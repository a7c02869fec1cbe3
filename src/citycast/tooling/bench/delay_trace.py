"""The self-tuning playout delay in simulated time: `citycast bench-delay`.

A fleet of sites on one channel hears frames that reach it `path_ms(t)` after their stamp, plus jitter (0..10 ms,
a rare 30 ms spike), while the long-haul path worsens mid-address and recovers (`worsening`, or any other shape).
Each second every site reports its frames' margins (D at the frame's stamp minus how late it came) exactly as a
site agent does (`Telemetry.margin_ms`, `delay_ms`), the hub's real `DelayTuner` decides, and what it decides
(a signed `DelaySchedule`) is what the next frames are played with. The same path is run with a fixed D beside
it, so the figure is a ratio measured in the same run: frames that came too late (what a site conceals) with and
without the tuner. How every site then follows a schedule to the sample is the playout engine's, tested apart
(tests/media/test_playout_delay.py); this is the control loop, hours of it in seconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from citycast.hub.delay_tuner import DelayTuner, TunerSettings
from citycast.protocol.delay import DelaySchedule
from citycast.protocol.telemetry import Telemetry, margin_summary

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000
CHANNEL = 1
FRAMES_PER_S = 50


def worsening(t: float) -> float:
    """One-way lateness (ms): 70 ms; from 120 s it degrades by 3 ms a second to 250 ms, holds, and recovers from
    400 s back to 70 ms by 460 s (a congested exchange over an evening)."""
    if t < 120:
        return 70.0
    if t < 180:
        return 70.0 + 3.0 * (t - 120)
    if t < 400:
        return 250.0
    if t < 460:
        return 250.0 - 3.0 * (t - 400)
    return 70.0


def site_report(site: str, margins_ms: list[float], delay_ms: float, ts_ns: int, channel: int = CHANNEL) -> Telemetry:
    """What a playing site sends once a second, with the two figures the tuner reads."""
    return Telemetry(
        site=site, ts_ns=ts_ns, state="playing", channel=channel, buffer_ms=0.0, clock_offset_ms=0.0,
        clock_drift_ppm=0.0, clock_error_ms=0.0, sync_error_ms=0.0, tracking_error_ms=0.0, resample_ppm=0.0,
        underruns=0, concealed=0, late=0, rejected={}, level_rms_dbfs=0.0, level_peak_dbfs=0.0, link_rtt_ms=0.0,
        sink_xruns=0, resyncs=0, frames=0, delay_ms=delay_ms, margin_ms=margin_summary(margins_ms),
    )  # fmt: skip


@dataclass
class DelayTrace:
    auto: bool
    path_ms: list[float] = field(default_factory=list)  # the path's lateness each second (before jitter)
    delays_ms: list[float] = field(default_factory=list)  # the D the channel is heading for, each second
    margin_min_ms: list[float] = field(default_factory=list)  # the fleet's smallest margin, each second
    too_late: list[int] = field(default_factory=list)  # frames after their play time, each second
    changes: list[tuple[int, DelaySchedule]] = field(default_factory=list)


def simulate(
    path_ms: Callable[[float], float],
    seconds: int,
    *,
    auto: bool = True,
    sites: int = 5,
    seed: int = 1,
    start_delay_ns: int = 200_000_000,
    settings: TunerSettings | None = None,
) -> DelayTrace:
    """Second by second: frames arrive, sites report, the tuner decides; the schedule it signs applies to every
    frame stamped after its start (it starts `lead` ahead, so every site has it in time)."""
    rng = random.Random(seed)
    tuner = DelayTuner(settings or TunerSettings(), start_delay_ns)
    tuner.set_auto(auto)
    schedule = DelaySchedule.steady(start_delay_ns)
    trace = DelayTrace(auto)
    for sec in range(seconds):
        now = T0 + sec * S
        late = 0
        smallest = float("inf")
        for site in range(sites):
            margins = []
            for k in range(FRAMES_PER_S):
                ts = now + k * (S // FRAMES_PER_S)
                lateness = path_ms(sec) + rng.uniform(0, 10) + (30 if rng.random() < 0.002 else 0)
                margin = schedule.delay_at(ts) / 1e6 - lateness
                late += margin < 0
                margins.append(margin)
            smallest = min(smallest, min(margins))
            playing_ms = schedule.delay_at(now + S - schedule.new_delay_ns) / 1e6
            tuner.on_telemetry(site_report(f"s{site}", margins, playing_ms, now), now + S)
        for _channel, new in tuner.decide(now + S).items():
            schedule = new
            trace.changes.append((sec, new))
        trace.path_ms.append(path_ms(sec))
        trace.delays_ms.append(schedule.new_delay_ns / 1e6)
        trace.margin_min_ms.append(smallest)
        trace.too_late.append(late)
    return trace


def rows(auto: DelayTrace, fixed: DelayTrace, every_s: int = 30) -> list[dict[str, float]]:
    """One row per `every_s` seconds: the path, D with the tuner, the fleet's smallest margin, and the frames
    too late with the tuner and with D fixed at its start."""
    out = []
    for start in range(0, len(auto.delays_ms), every_s):
        end = min(start + every_s, len(auto.delays_ms))
        out.append(
            {
                "t_s": start,
                "path_ms": round(max(auto.path_ms[start:end]), 1),
                "delay_ms": auto.delays_ms[end - 1],
                "margin_min_ms": round(min(auto.margin_min_ms[start:end]), 1),
                "too_late_auto": sum(auto.too_late[start:end]),
                "too_late_fixed": sum(fixed.too_late[start:end]),
            }
        )
    return out


def run_delay_trace(
    seconds: int = 900, sites: int = 5, seed: int = 1, start_delay_ms: float = 200.0
) -> dict[str, object]:
    """The tuner and a fixed D on the same worsening path (same seed: the same frames), as one JSON-ready dict."""
    start = round(start_delay_ms * 1e6)
    auto = simulate(worsening, seconds, auto=True, sites=sites, seed=seed, start_delay_ns=start)
    fixed = simulate(worsening, seconds, auto=False, sites=sites, seed=seed, start_delay_ns=start)
    frames = seconds * sites * FRAMES_PER_S
    return {
        "seconds": seconds,
        "sites": sites,
        "frames": frames,
        "start_delay_ms": start_delay_ms,
        "too_late_auto": sum(auto.too_late),
        "too_late_fixed": sum(fixed.too_late),
        "changes": [
            {"t_s": sec, "from_ms": s.old_delay_ns / 1e6, "to_ms": s.new_delay_ns / 1e6, "ramp_s": s.ramp_ns / 1e9}
            for sec, s in auto.changes
        ],
        "delay_max_ms": max(auto.delays_ms),
        "delay_end_ms": auto.delays_ms[-1],
        "rows": rows(auto, fixed),
    }
