"""A long address in simulated time: hours of clock drift through the real sans-IO parts, in minutes.

Each simulated site has a wrong local clock and a drifting DAC. The real `ClockEstimator` is fed NTP-style
exchanges over a simulated jittery path, the real `PlayoutEngine` gets real Opus packets (a marker chirp every
second, encoded once by libopus and sent cyclically) and is pulled by a simulated DAC exactly as a sink pulls it.
Every checkpoint the output is searched for markers and each one's true play time is compared with where it
should have been heard: any drift, creep or leak over the hours shows up here, long before a real address.
"""

from __future__ import annotations

import math
import random
import resource
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from citycast.clock.estimator import ClockEstimator
from citycast.clock.local import SkewedClock
from citycast.media.audio import FRAME_NS, SAMPLE_RATE
from citycast.media.codec import OpusDecoder, OpusEncoder
from citycast.media.playout import ClockMap, PlayoutEngine
from citycast.media.sources import MarkerSource
from citycast.tooling.markers import detect_markers

S = 1_000_000_000
BLOCK = 480


@dataclass
class Checkpoint:
    hour: float
    max_abs_error_ms: float
    markers: int
    rss_mb: float


@dataclass
class SoakSite:
    clock: SkewedClock
    dac_ppm: float
    engine: PlayoutEngine
    estimator: ClockEstimator = field(default_factory=ClockEstimator)
    checkpoints: list[Checkpoint] = field(default_factory=list)


def _delay_ns(rng: random.Random, base_us: float) -> int:
    d = base_us + rng.expovariate(1 / 30.0)
    if rng.random() < 0.05:
        d += rng.uniform(200, 2000)  # a busy moment on the box or the path
    return round(d * 1000)


def encode_marker_second() -> list[bytes]:
    enc = OpusEncoder()
    source = MarkerSource(1.0)
    blocks = source.blocks()
    return [enc.encode(next(blocks)) for _ in range(50)]


def run_soak(
    *,
    hours: float,
    sites: int = 2,
    delay_ns: int = 80_000_000,
    checkpoint_every_s: float = 1800.0,
    window_s: float = 20.0,
    seed: int = 1,
    fast_first: bool = True,
    progress: Callable[[float], None] | None = None,
) -> list[SoakSite]:
    rng = random.Random(seed)
    packets = encode_marker_second()
    codec_delay = OpusEncoder().lookahead_samples
    t0 = 1_800_000_000 * S
    out: list[SoakSite] = []
    for i in range(sites):
        clock = SkewedClock(round(rng.uniform(-2, 2) * S), rng.uniform(-100, 100), ref_ns=t0)
        dac = 100.0 if i == 0 and fast_first else rng.uniform(-100, 100)
        engine = PlayoutEngine(delay_ns=delay_ns, decoder_factory=OpusDecoder)
        out.append(SoakSite(clock, dac, engine))
    total_ns = round(hours * 3600 * S)
    for site in out:
        _run_site(site, rng, packets, codec_delay, t0, total_ns, delay_ns, checkpoint_every_s, window_s, progress)
    return out


def _run_site(
    site: SoakSite,
    rng: random.Random,
    packets: list[bytes],
    codec_delay: int,
    t0: int,
    total_ns: int,
    delay_ns: int,
    checkpoint_every_s: float,
    window_s: float,
    progress: Callable[[float], None] | None,
) -> None:
    clock, engine, est = site.clock, site.engine, site.estimator
    period = BLOCK * S / (SAMPLE_RATE * (1 + site.dac_ppm * 1e-6))
    lead = 20_000_000
    start = t0 + 5 * S  # the first five seconds: clock acquisition
    n_blocks = math.floor((total_ns - 5 * S) / period)
    next_exchange = t0
    next_map = t0
    seq = 0
    stream_ts0 = t0 + 2 * S
    window_blocks = math.ceil(window_s * S / period)
    every_blocks = max(window_blocks + 1, math.floor(checkpoint_every_s * S / period))
    capture: list[np.ndarray] = []
    capture_from = -1
    for b in range(n_blocks):
        dac_true = start + b * period
        now = round(dac_true) - lead
        while next_exchange <= now:
            t1 = clock.at(next_exchange)
            t2 = next_exchange + _delay_ns(rng, 25)
            t3 = t2 + 5_000
            t4 = clock.at(t3 + _delay_ns(rng, 20))
            est.add_sample(t1, t2, t3, t4)
            next_exchange += est.next_interval_ns()
        while next_map <= now:
            if est.synced:
                ref = clock.at(next_map)
                bt = est.to_broadcast(ref)
                engine.set_clock(ClockMap(ref, bt, (est.to_broadcast(ref + S) - bt) / S))
            next_map += 250_000_000
        while stream_ts0 + seq * FRAME_NS + FRAME_NS + 2_000_000 <= now:
            ts = stream_ts0 + seq * FRAME_NS
            engine.push(1, seq, ts, FRAME_NS, packets[seq % len(packets)])
            seq += 1
        block = engine.render(BLOCK, clock.at(round(dac_true)))
        if b % every_blocks == every_blocks - window_blocks:
            capture, capture_from = [], b
        if capture_from >= 0:
            capture.append(block)
            if len(capture) == window_blocks:
                _checkpoint(site, np.concatenate(capture), start + capture_from * period, period, stream_ts0,
                            delay_ns, codec_delay, (dac_true - t0) / 3600 / S)  # fmt: skip
                capture_from = -1
        if progress is not None and b % 36_000 == 0:
            progress((dac_true - t0) / S)


def _checkpoint(
    site: SoakSite,
    audio: np.ndarray,
    first_true: float,
    period: float,
    stream_ts0: int,
    delay_ns: int,
    codec_delay: int,
    hour: float,
) -> None:
    ns_per_sample = period / BLOCK
    errors = []
    for pos in detect_markers(audio):
        heard = first_true + pos * ns_per_sample
        # marker k starts at stream sample k*48000, heard at ts + D + the codec's look-ahead
        k = round((heard - delay_ns - stream_ts0 - codec_delay * S / SAMPLE_RATE) / S)
        expected = stream_ts0 + k * S + delay_ns + codec_delay * S / SAMPLE_RATE
        errors.append((heard - expected) / 1e6)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worst = max((abs(e) for e in errors), default=float("nan"))
    site.checkpoints.append(Checkpoint(round(hour, 3), worst, len(errors), rss))
