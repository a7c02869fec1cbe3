"""The playout engine in simulated time: hours of drift and bad networks replayed in seconds."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

import numpy as np
import pytest
from tests.media.pulses import PULSE_EVERY, RawDecoder, find_pulses, pulse_train

from citycast.clock.local import SkewedClock
from citycast.media.audio import FRAME_NS, FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.playout import ClockMap, PlayoutEngine, PlayoutState


@dataclass
class Run:
    errors_ms: list[float]
    engine: PlayoutEngine


def simulate(
    *,
    seconds: float,
    dac_ppm: float = 0.0,
    local: SkewedClock | None = None,
    delay_ns: int = 80_000_000,
    net: tuple[float, float] = (0.5, 2.0),
    loss: float = 0.0,
    gap: tuple[float, float] | None = None,
    block: int = 480,
    seed: int = 1,
) -> Run:
    rng = random.Random(seed)
    t0 = 1_000_000_000_000
    local = local or SkewedClock(offset_ns=1_234_567_890, ppm=-73.0, ref_ns=t0)
    clock = ClockMap(ref_local_ns=local.at(t0), ref_bt_ns=t0, rate=1 / (1 + local.ppm * 1e-6))
    engine = PlayoutEngine(delay_ns=delay_ns, decoder_factory=RawDecoder, fallback_after_ns=500_000_000)
    engine.set_clock(clock)
    events: list[tuple[int, int, int]] = []  # (true time, kind 0=packet 1=render, index)
    n_packets = int(seconds * 50)
    for k in range(n_packets):
        ts = t0 + k * FRAME_NS
        if gap and gap[0] <= k * 0.02 < gap[1]:
            continue
        if rng.random() < loss:
            continue
        arrive = ts + FRAME_NS + int(rng.uniform(*net) * 1e6)
        heapq.heappush(events, (arrive, 0, k))
    period = block * 1e9 / (SAMPLE_RATE * (1 + dac_ppm * 1e-6))
    start = t0 + 50_000_000
    n_blocks = int((seconds * 1e9) / period)
    lead = 20_000_000
    for b in range(n_blocks):
        heapq.heappush(events, (int(start + b * period) - lead, 1, b))
    out = np.zeros(n_blocks * block, np.float32)
    while events:
        _, kind, i = heapq.heappop(events)
        if kind == 0:
            ts = t0 + i * FRAME_NS
            engine.push(7, 100 + i, ts, FRAME_NS, pulse_train(i * FRAME_SAMPLES, FRAME_SAMPLES).tobytes())
        else:
            dac_true = start + i * period
            out[i * block : (i + 1) * block] = engine.render(block, local.at(round(dac_true)))
    errors = []
    for p in find_pulses(out)[1:]:  # the first pulse is cut in half by the stream start
        played_true = start + p * period / block
        # The pulse's source sample index → its broadcast timestamp → where it should be heard.
        src_time = played_true - delay_ns - t0
        k = round(src_time / (PULSE_EVERY * 1e9 / SAMPLE_RATE))
        expected = t0 + k * PULSE_EVERY * 1e9 / SAMPLE_RATE + delay_ns
        errors.append((played_true - expected) / 1e6)
    return Run(errors, engine)


def test_plays_every_pulse_on_time_with_a_perfect_dac() -> None:
    run = simulate(seconds=20)
    assert len(run.errors_ms) >= 194
    assert max(abs(e) for e in run.errors_ms) < 0.01
    assert run.engine.stats.underruns == 0
    assert run.engine.stats.resyncs == 0


@pytest.mark.parametrize("dac_ppm", [100.0, -100.0, 250.0])
def test_drifting_dac_is_pulled_back_by_resampling_not_jumps(dac_ppm: float) -> None:
    run = simulate(seconds=600, dac_ppm=dac_ppm)
    settled = run.errors_ms[200:]  # after 20 s
    assert len(settled) > 5000
    assert max(abs(e) for e in settled) < 0.05, max(abs(e) for e in settled)
    assert max(abs(e) for e in run.errors_ms) < 1.0
    assert run.engine.stats.resyncs == 0
    assert abs(run.engine.ratio - 1 / (1 + dac_ppm * 1e-6)) < 20e-6


def test_lost_packets_are_concealed_and_timing_holds() -> None:
    run = simulate(seconds=60, loss=0.02, seed=3)
    st = run.engine.stats
    assert st.concealed > 20
    assert st.resyncs == 0
    assert max(abs(e) for e in run.errors_ms[50:]) < 0.05


def test_late_packets_are_dropped_not_played_late() -> None:
    # A path that sometimes takes longer than D: those packets arrive after their turn.
    run = simulate(seconds=30, net=(0.5, 120.0), delay_ns=80_000_000, seed=5)
    st = run.engine.stats
    assert st.late > 0
    assert max(abs(e) for e in run.errors_ms) < 0.05


def test_stream_gap_falls_back_and_rejoins_in_sync() -> None:
    run = simulate(seconds=12, gap=(4.0, 7.0))
    st = run.engine.stats
    assert st.resyncs == 0
    assert st.underruns == 0  # a stream that stopped and resumed is not a starvation
    after = [e for e in run.errors_ms]
    assert max(abs(e) for e in after) < 0.05
    assert len(run.errors_ms) >= 10 * 9  # pulses before and after the gap


def test_a_stream_back_after_an_outage_longer_than_the_jitter_window_plays_again_in_sync() -> None:
    # 12 s without a frame is more than the jitter buffer's 512-packet (10.24 s) window: the same stream, when it
    # comes back, must be placed where playout reads now, not refused as too far ahead of where it stopped.
    run = simulate(seconds=20, gap=(4.0, 16.0))
    st = run.engine.stats
    assert st.too_far == 0
    assert st.resyncs == 0 and st.underruns == 0
    after_gap = [e for e in run.errors_ms if e is not None][-30:]
    assert len(run.errors_ms) >= 10 * 4 + 10 * 3  # pulses before the gap and in the last seconds after it
    assert max(abs(e) for e in after_gap) < 0.05
    assert run.engine.state is PlayoutState.PLAYING


def test_fallback_state_reported_during_gap() -> None:
    t0 = 10**12
    clock = ClockMap(t0, t0)
    fallback = np.full(1000, 0.25, np.float32)
    eng = PlayoutEngine(
        delay_ns=60_000_000, decoder_factory=RawDecoder, fallback=fallback, fallback_after_ns=200_000_000
    )
    assert eng.render(480, t0).any() == False  # noqa: E712 - no clock yet → silence
    eng.set_clock(clock)
    for k in range(10):
        eng.push(1, k, t0 + k * FRAME_NS, FRAME_NS, np.ones(960, np.float32).tobytes())
    t = t0
    states = []
    for _ in range(100):
        block = eng.render(480, t)
        states.append((eng.state, float(block.mean())))
        t += 10_000_000
    assert states[10][0] is PlayoutState.PLAYING
    assert states[-1][0] is PlayoutState.FALLBACK
    assert abs(states[-1][1] - 0.25) < 1e-6


def test_timestamp_that_disagrees_with_sequence_is_rejected() -> None:
    eng = PlayoutEngine(delay_ns=60_000_000, decoder_factory=RawDecoder)
    eng.set_clock(ClockMap(0, 0))
    assert eng.push(1, 0, 0, FRAME_NS, b"\0" * 3840) is not None
    assert eng.push(1, 1, 5 * FRAME_NS, FRAME_NS, b"\0" * 3840) is None  # ts disagrees with seq
    assert eng.stats.inconsistent == 1


@pytest.mark.parametrize(
    "packet_ns",
    [
        0,  # no samples at all
        5_000,  # a quarter of a sample at 48 kHz: rounds to none
        1_000_000_000 + 1_000_000,  # more than a second in one packet
        -FRAME_NS,
    ],
)
def test_a_new_stream_with_an_impossible_packet_size_is_rejected(packet_ns: int) -> None:
    eng = PlayoutEngine(delay_ns=60_000_000, decoder_factory=RawDecoder)
    eng.set_clock(ClockMap(0, 0))
    assert eng.push(1, 0, 0, packet_ns, b"\0" * 3840) is None
    assert eng.stats.inconsistent == 1
    eng.render(480, 0)
    assert eng.state is PlayoutState.IDLE  # no stream was set up from it


def test_packet_size_limits_are_inclusive_of_one_sample_and_one_second() -> None:
    for packet_ns in (round(1e9 / SAMPLE_RATE), 1_000_000_000):
        eng = PlayoutEngine(delay_ns=60_000_000, decoder_factory=RawDecoder)
        eng.set_clock(ClockMap(0, 0))
        assert eng.push(1, 0, 0, packet_ns, b"\0" * 4) is not None, packet_ns
        assert eng.stats.inconsistent == 0


def test_a_packet_size_change_mid_stream_is_rejected() -> None:
    eng = PlayoutEngine(delay_ns=60_000_000, decoder_factory=RawDecoder)
    eng.set_clock(ClockMap(0, 0))
    assert eng.push(1, 0, 0, FRAME_NS, b"\0" * 3840) is not None
    # Seq and timestamp still agree with the stream's 20 ms step, but this packet says it is 40 ms long.
    assert eng.push(1, 1, FRAME_NS, 2 * FRAME_NS, b"\0" * 7680) is None
    assert eng.stats.inconsistent == 1


def test_packets_that_decode_to_the_wrong_sample_count_keep_their_place_in_time() -> None:
    """A sender at another sample rate: 20 ms packets that decode to 480 samples, not 960. Each packet is
    stretched to its stamped length, so packet k still plays at k * 20 ms and the stream does not slide."""
    t0 = 10**12
    delay = 60_000_000
    eng = PlayoutEngine(delay_ns=delay, decoder_factory=RawDecoder)
    eng.set_clock(ClockMap(t0, t0))
    for k in range(10):
        eng.push(1, k, t0 + k * FRAME_NS, FRAME_NS, np.full(FRAME_SAMPLES // 2, k + 1, np.float32).tobytes())
    out = np.concatenate([eng.render(FRAME_SAMPLES, t0 + delay + k * FRAME_NS) for k in range(8)])
    assert eng.state is PlayoutState.PLAYING
    for k in range(8):
        middle = out[k * FRAME_SAMPLES + 100 : (k + 1) * FRAME_SAMPLES - 100]
        assert np.allclose(middle, k + 1, atol=1e-3), (k, float(middle.min()), float(middle.max()))
