"""A change of the playout delay D, as a signed schedule says, in simulated time: two engines with different DACs
and clocks move to the new D together (same sample, same instant), without a jump and without a gap."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import pytest
from tests.media.pulses import PULSE_EVERY, RawDecoder, find_pulses, pulse_train

from citycast.clock.local import SkewedClock
from citycast.media.audio import FRAME_NS, FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.playout import ClockMap, PlayoutEngine
from citycast.media.render import Samples
from citycast.protocol.delay import DelaySchedule

T0 = 1_000_000_000_000
PULSE_NS = PULSE_EVERY * 1_000_000_000 // SAMPLE_RATE
D0 = 80_000_000
D1 = 180_000_000
# D rises by 100 ms over 10 s of stream (the stream read 1 % slower), then falls back over 20 s (0.5 % faster).
RISE = DelaySchedule(from_ts_ns=T0 + 5_000_000_000, old_delay_ns=D0, new_delay_ns=D1, ramp_ns=10_000_000_000)
FALL = DelaySchedule(from_ts_ns=T0 + 20_000_000_000, old_delay_ns=D1, new_delay_ns=D0, ramp_ns=20_000_000_000)


@dataclass
class Dac:
    block: int
    ppm: float
    local: SkewedClock


DACS = {
    "perfect": Dac(480, 0.0, SkewedClock(offset_ns=0, ppm=0.0, ref_ns=T0)),
    "skewed": Dac(441, 60.0, SkewedClock(offset_ns=1_234_567_890, ppm=-73.0, ref_ns=T0)),
}


def sine(start: int, n: int) -> Samples:
    idx = np.arange(start, start + n)
    return (0.5 * np.sin(2 * np.pi * 200.0 * idx / SAMPLE_RATE)).astype(np.float32)


def expected_delay(ts_ns: float) -> float:
    """D for the sample stamped ts_ns, across both schedules (the second starts where the first ended)."""
    s = RISE if ts_ns < FALL.from_ts_ns else FALL
    return s.delay_at(round(ts_ns))


def play(dac: Dac, signal: str, seconds: float = 45.0) -> tuple[Samples, float, PlayoutEngine]:
    """Feed one engine 50 packets/s (arriving 20.5..22 ms after their stamp), hand it RISE 1 s before its start
    and FALL 1 s before its start (as frames would), render at the DAC's pace. Returns (output, block period ns
    in true time, engine)."""
    local = dac.local
    engine = PlayoutEngine(delay_ns=D0, decoder_factory=RawDecoder)
    engine.set_clock(ClockMap(ref_local_ns=local.at(T0), ref_bt_ns=T0, rate=1 / (1 + local.ppm * 1e-6)))
    events: list[tuple[int, int, int]] = []
    for k in range(int(seconds * 50)):
        heapq.heappush(events, (T0 + k * FRAME_NS + FRAME_NS + 500_000 + (k * 7919 % 1500) * 1000, 0, k))
    for i, s in enumerate((RISE, FALL)):
        heapq.heappush(events, (s.from_ts_ns - 1_000_000_000, 2, i))
    period = dac.block * 1e9 / (SAMPLE_RATE * (1 + dac.ppm * 1e-6))
    start = T0 + 50_000_000
    n_blocks = int(seconds * 1e9 / period)
    for b in range(n_blocks):
        heapq.heappush(events, (int(start + b * period) - 20_000_000, 1, b))
    out = np.zeros(n_blocks * dac.block, np.float32)
    source = pulse_train if signal == "pulses" else sine
    while events:
        _, kind, i = heapq.heappop(events)
        if kind == 0:
            engine.push(7, 100 + i, T0 + i * FRAME_NS, FRAME_NS, source(i * FRAME_SAMPLES, FRAME_SAMPLES).tobytes())
        elif kind == 2:
            assert engine.set_delay_schedule((RISE, FALL)[i])
        else:
            out[i * dac.block : (i + 1) * dac.block] = engine.render(dac.block, local.at(round(start + i * period)))
    return out, period, engine


def heard(dac: Dac) -> dict[int, float]:
    """Pulse k (stamped T0 + k * 100 ms) -> the true instant it reached the DAC."""
    out, period, engine = play(dac, "pulses")
    assert engine.stats.resyncs == 0 and engine.stats.underruns == 0 and engine.stats.concealed == 0
    times: dict[int, float] = {}
    for p in find_pulses(out)[1:]:
        at = T0 + 50_000_000 + p * period / dac.block
        k = min(
            range(round((at - T0 - D1) / PULSE_NS) - 2, round((at - T0 - D0) / PULSE_NS) + 3),
            key=lambda k: abs(at - (T0 + k * PULSE_NS + expected_delay(T0 + k * PULSE_NS))),
        )
        times[k] = at
    return times


def test_every_sample_plays_at_its_stamp_plus_the_scheduled_delay_on_both_engines() -> None:
    """The pulses before, inside and after both ramps are heard at stamp + D(stamp), D as the schedule says,
    on a perfect DAC with 480-sample blocks and on one 60 ppm fast, its clock 73 ppm off, with 441-sample blocks:
    the switch is the same sample at the same instant on both."""
    runs = {name: heard(dac) for name, dac in DACS.items()}
    for name, times in runs.items():
        errors = [(at - (T0 + k * PULSE_NS + expected_delay(T0 + k * PULSE_NS))) / 1e6 for k, at in times.items()]
        settled = errors[20:]  # after 2 s: the skewed DAC's rate is learnt
        assert len(settled) > 400, name
        assert max(abs(e) for e in settled) < 0.05, (name, max(abs(e) for e in settled))
    common = sorted(set(runs["perfect"]) & set(runs["skewed"]))
    inside = [k for k in common if RISE.from_ts_ns <= T0 + k * PULSE_NS <= FALL.end_ts_ns]
    assert len(inside) > 340
    worst = max(abs(runs["perfect"][k] - runs["skewed"][k]) for k in common[20:]) / 1e6
    assert worst < 0.05, worst  # ms between the two loudspeakers, through both changes
    # and the delay really moved: a pulse in the middle of the plateau plays 100 ms later than at the start
    mid = (RISE.end_ts_ns + FALL.from_ts_ns) // 2 // PULSE_NS * PULSE_NS
    k_mid, k_first = (mid - T0) // PULSE_NS, 20
    moved = (runs["perfect"][k_mid] - T0 - k_mid * PULSE_NS) - (runs["perfect"][k_first] - T0 - k_first * PULSE_NS)
    assert abs(moved - (D1 - D0)) < 50_000


@pytest.mark.parametrize("name", list(DACS))
def test_the_change_has_no_click_and_no_gap(name: str) -> None:
    """A 200 Hz tone through both changes: no sample-to-sample step beyond the tone's own (plus the 1 % the
    stretch adds), no run of silence, nothing concealed, no resync."""
    out, _period, engine = play(DACS[name], "sine")
    played = out[SAMPLE_RATE:]  # from 1 s on: the stream has started
    own = 0.5 * 2 * math.pi * 200.0 / SAMPLE_RATE  # the tone's largest step
    steps = np.abs(np.diff(played))
    assert float(steps.max()) < own * 1.03, (float(steps.max()), own)
    # no gap: every 5 ms window still carries the tone at full level
    windows = played[: len(played) // 240 * 240].reshape(-1, 240)
    assert float(np.abs(windows).max(axis=1).min()) > 0.45
    assert engine.stats.resyncs == 0 and engine.stats.concealed == 0 and engine.stats.underruns == 0
    assert engine.current_delay_ns() == D0 and engine.delay_schedule == FALL


def test_an_older_schedule_never_takes_d_back() -> None:
    engine = PlayoutEngine(delay_ns=D0, decoder_factory=RawDecoder)
    assert engine.set_delay_schedule(FALL)
    assert not engine.set_delay_schedule(RISE)  # a straggler frame from before the fall
    assert not engine.set_delay_schedule(FALL)
    assert engine.delay_schedule == FALL
    assert engine.delay_at(FALL.from_ts_ns - 1) == D1 and engine.delay_at(FALL.end_ts_ns) == D0


def test_the_schedule_maps_stream_to_play_time_and_back_exactly() -> None:
    for s in (RISE, FALL):
        for m in range(s.from_ts_ns - 1_000_000_000, s.end_ts_ns + 1_000_000_000, 7_777_777):
            bt = m + s.delay_at(m)
            assert abs(s.stream_at(bt) - m) <= 1
        assert s.stream_at(s.from_ts_ns + s.old_delay_ns) == s.from_ts_ns
        assert s.stream_at(s.end_ts_ns + s.new_delay_ns) == s.end_ts_ns
