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
from citycast.media.jitter import Put
from citycast.media.playout import ClockMap, PlayoutEngine, PlayoutState
from citycast.media.sources import MarkerSource
from citycast.site.uplinks import Copy, FrameMerge
from citycast.tooling.bench.soak_city_clock import CityClock, simulate_city_clock
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


# -- the deployed shape in simulated time: two long-haul paths merged, faults scripted ----------------------------
#
# A hub in London, two city servers in Karachi each a leafnode over its own long-haul path, sites on the city's
# LAN dialling both. The long-haul leg is one TCP connection per path, which is what shapes the audio: every
# frame crosses it in order, so one lost segment holds back every frame behind it until it is recovered. The
# model is calibrated on this machine's emulated london-karachi link (docs/benchmarks.md: one NATS connection
# p50 ≈ 73 ms, p99 ≈ 250 ms, ≈ 410-435 ms when a retransmission is itself lost): a lost segment is resent one
# round trip plus the reordering window after it was sent (fast recovery), a lost retransmission after the
# retransmission timeout (RTT + 200 ms), and every later timeout doubles (exponential backoff), as Linux does.
# A cut path drops every transmission; the connection survives (the servers ping every 2 minutes), so after a
# cut the path delivers again at its next retransmission, not when the cut ends. Every site behind the city
# servers hears the same arrivals (plus its LAN hop). The real `FrameMerge` plays the first copy of each frame.

MS = 1_000_000
REORDER_NS = 40 * MS  # RACK's reordering window and the delayed ACK: fast recovery's cost beyond one RTT
RTO_MIN_NS = 200 * MS  # Linux's minimum retransmission timeout, added to the RTT
RTO_MAX_NS = 120 * S
RECONNECT_NS = 1_400 * MS  # a dropped leafnode's way back: reconnect wait 1 s, then TCP, TLS and CONNECT
ROW_S = 600.0  # one row of the report per 10 simulated minutes
FAULT_KINDS = ("cut-a", "cut-b", "cut-both", "responder")


@dataclass(frozen=True)
class Fault:
    """`cut-a`/`cut-b`: that long-haul path black-holed both ways; `cut-both`: both; `responder`: the time
    responder the site syncs to stops answering (its city server's box is down) for `duration_s`."""

    kind: str
    start_s: float
    duration_s: float
    # A cut whose connection is dropped and made again (a ping timeout, a city server restarted) rather than
    # kept: what was published meanwhile is gone (NATS core stores nothing), and the stream resumes RECONNECT_NS
    # after the path returns, far ahead of where it stopped.
    drop: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; known: {', '.join(FAULT_KINDS)}")
        if self.start_s < 0 or self.duration_s <= 0:
            raise ValueError("a fault needs start_s >= 0 and duration_s > 0")

    def cuts(self, path: int) -> bool:
        return self.kind == "cut-both" or self.kind == ("cut-a", "cut-b")[path]

    def window_ns(self, t0: int) -> tuple[int, int]:
        a = t0 + round(self.start_s * S)
        return a, a + round(self.duration_s * S)


def default_faults(hours: float) -> list[Fault]:
    """One of each, spread over the address: path A cut 30 s, both cut 30 s, path B cut 30 s, responder A lost 60 s."""
    total = hours * 3600
    return [
        Fault("cut-a", 0.2 * total, 30.0),
        Fault("cut-both", 0.45 * total, 30.0),
        Fault("cut-b", 0.65 * total, 30.0),
        Fault("responder", 0.85 * total, 60.0),
    ]


@dataclass(frozen=True)
class LongHaul:
    """One direction of a long-haul path as the WAN profiles give it (one-way delay ± uniform jitter, loss)."""

    delay_ms: float
    jitter_ms: float
    loss: float

    @property
    def rtt_ns(self) -> int:
        return round(2 * self.delay_ms * MS)


class TcpPath:
    """One leafnode connection over one long-haul path, sans-IO: `arrival(send_ns, lost)` is when the frame sent
    at `send_ns` reaches the city server. In order: no frame overtakes another.

    A cut stalls the whole connection: its first segment lost at the cut's start is retried on the backoff
    schedule, and nothing gets through until the first retry after the cut ends; then the backlog follows."""

    def __init__(
        self,
        link: LongHaul,
        cuts: list[tuple[int, int]],
        rng: random.Random,
        drops: list[tuple[int, int]] | None = None,
    ) -> None:
        self.link = link
        self.rng = rng
        self.stalls = [(a, a + self.stall_ns(z - a)) for a, z in cuts]
        self.drops = [(a, z + RECONNECT_NS) for a, z in drops or []]
        self.last_ns = 0
        self.retransmissions = 0

    def stall_ns(self, cut_ns: int) -> int:
        """From a cut's start to the first retry that finds the path back."""
        at = gap = self.link.rtt_ns + REORDER_NS
        gap = self.link.rtt_ns + RTO_MIN_NS
        while at < cut_ns:
            at += gap
            gap = min(gap * 2, RTO_MAX_NS)
        return at

    def _unstall(self, t: int) -> int:
        for a, end in self.stalls:
            if a <= t < end:
                return end
        return t

    def _one_way(self) -> int:
        link = self.link
        return round((link.delay_ms + self.rng.uniform(-link.jitter_ms, link.jitter_ms)) * MS)

    def arrival(self, send_ns: int, first_lost: bool) -> int:
        """Arrival time in ns, or -1 for a frame that never arrives (published while the connection was down)."""
        if any(a <= send_ns < z for a, z in self.drops):
            return -1
        t = self._unstall(send_ns)
        lost = first_lost
        gap = self.link.rtt_ns + REORDER_NS
        tries = 0
        while lost:
            t += gap
            tries += 1
            self.retransmissions += 1
            gap = self.link.rtt_ns + RTO_MIN_NS if tries == 1 else min(gap * 2, RTO_MAX_NS)
            stalled = self._unstall(t)
            if stalled != t:  # the retry fell into a cut: the connection's own backoff decides
                t, tries, gap = stalled, 0, self.link.rtt_ns + REORDER_NS
            lost = self.rng.random() < self.link.loss
        self.last_ns = max(self.last_ns, t + self._one_way())
        return self.last_ns


def path_arrivals(
    *,
    frames: int,
    send0_ns: int,
    link: LongHaul,
    paths: int,
    shared_loss: float,
    faults: list[Fault],
    t0: int,
    seed: int,
) -> list[np.ndarray]:
    """Per path, each frame's arrival at its city server (true ns). With `shared_loss` F, that share of each
    path's loss hits the same frame on both paths (a common congested stage, the worst case for the merge)."""
    rng = random.Random(seed)
    tcp = [
        TcpPath(
            link,
            [f.window_ns(t0) for f in faults if f.cuts(p) and not f.drop],
            random.Random(seed * 7919 + p),
            [f.window_ns(t0) for f in faults if f.cuts(p) and f.drop],
        )
        for p in range(paths)
    ]
    shared, own = link.loss * shared_loss, link.loss * (1 - shared_loss)
    out = [np.empty(frames, np.int64) for _ in range(paths)]
    for k in range(frames):
        send = send0_ns + k * FRAME_NS
        both = rng.random() < shared
        for p in range(paths):
            out[p][k] = tcp[p].arrival(send, both or rng.random() < own)
    return out


@dataclass
class Row:
    """One 10-minute row of one site (or of the fleet, once `merge_rows` has run)."""

    minute: float  # end of the row, minutes into the address
    underruns: int = 0
    concealed: int = 0
    late: int = 0
    duplicates: int = 0  # second copies the merge dropped (the other path's)
    replays: int = 0  # a frame twice on one path: must stay 0
    old: int = 0  # copies older than the merge remembers (a path's backlog after a cut)
    fallback_s: float = 0.0
    # |the site's estimate − the clock its responder serves| (with a simulated city clock; else − true broadcast
    # time), sampled each second
    sync_error_p99_us: float = 0.0
    marker_error_p99_us: float = float("nan")  # |heard − due by the city's clock| of the markers in the row's window
    city_clock_p99_us: float = float("nan")  # |city responder A's clock − the hub's|: the whole city's, in common
    skew_p99_us: float = float("nan")  # spread of one marker across sites (fleet rows)
    markers: int = 0
    rss_mb: float = 0.0
    jitter_buffer_max: int = 0  # packets held, bounded by the jitter buffer's capacity
    merge_streams: int = 0
    estimator_kept: int = 0


@dataclass
class FaultResult:
    kind: str
    start_s: float
    duration_s: float
    concealed: int = 0
    underruns: int = 0
    fallback_s: float = 0.0
    frames_back_s: float | None = None  # fault end → first fresh frame played (the transport's part)
    resync_s: float | None = None  # first fresh frame → playing in sync (the site's part)
    sync_error_max_us: float = 0.0  # worst sync error from the fault's start to 60 s after its end
    responder_switches: int = 0


@dataclass
class CitySite:
    clock: SkewedClock
    dac_ppm: float
    engine: PlayoutEngine
    merge: FrameMerge
    estimator: ClockEstimator = field(default_factory=ClockEstimator)
    rows: list[Row] = field(default_factory=list)
    faults: list[FaultResult] = field(default_factory=list)
    heard: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # row → (marker, error ns)


@dataclass
class CitySoak:
    hours: float
    paths: int
    shared_loss: float
    delay_ms: float
    link: LongHaul
    sites: list[CitySite]
    rows: list[Row]  # the fleet's rows: sums, worst p99s, marker skew across sites
    faults: list[FaultResult]  # the worst site's figures per fault
    retransmissions: list[int]
    city_clock: bool = False  # the sites synced to a simulated city responder (else to the hub's clock itself)
    correction: bool = False  # ... and were given its correction


RESPONDER_OFFSET_NS = 100_000  # responder B's broadcast time beside A's: each carries its own path's asymmetry
GIVE_UP_AFTER = 3  # failed exchanges before the site moves to the other responder (site.uplinks.ClockFailover)
EXCHANGE_TIMEOUT_NS = 2 * S


def run_city_soak(
    *,
    hours: float,
    sites: int = 2,
    paths: int = 2,
    link: LongHaul = LongHaul(70.0, 10.0, 0.01),
    shared_loss: float = 0.0,
    delay_ns: int = 340 * MS,
    faults: list[Fault] | None = None,
    window_s: float = 20.0,
    row_s: float = ROW_S,
    seed: int = 1,
    block: int = 960,
    city_clock: bool = True,
    correction: bool = True,
    city_warmup_s: float = 1800.0,
    progress: Callable[[float], None] | None = None,
) -> CitySoak:
    """The deployed shape for `hours` of simulated time; `faults` None: `default_faults(hours)`.

    `city_clock`: the sites sync to city responder A as it syncs to the hub over path A, started `city_warmup_s`
    before the address (`soak_city_clock`), with its correction if `correction`; else to a responder that
    serves the hub's clock exactly."""
    if paths not in (1, 2):
        raise ValueError("paths must be 1 or 2")
    if not 0.0 <= shared_loss <= 1.0:
        raise ValueError("shared_loss must be within [0, 1]")
    faults = default_faults(hours) if faults is None else faults
    rng = random.Random(seed)
    packets = encode_marker_second()
    codec_delay = OpusEncoder().lookahead_samples
    t0 = 1_800_000_000 * S
    total_ns = round(hours * 3600 * S)
    stream_ts0 = t0 + 2 * S
    frames = math.ceil(total_ns / FRAME_NS) + 1
    send0 = stream_ts0 + FRAME_NS + 2 * MS  # a frame leaves when its last sample exists
    arrivals = path_arrivals(frames=frames, send0_ns=send0, link=link, paths=paths, shared_loss=shared_loss,
                             faults=[f for f in faults if f.kind != "responder"], t0=t0, seed=seed)  # fmt: skip
    # Every copy in the order the site hears it: (arrival, seq, uplink).
    when = np.concatenate(arrivals)
    seqs = np.concatenate([np.arange(frames, dtype=np.int64)] * paths)
    ups = np.concatenate([np.full(frames, p, np.int64) for p in range(paths)])
    order = np.argsort(when, kind="stable")
    order = order[when[order] >= 0]  # frames that never arrived
    events = (when[order], seqs[order], ups[order])
    del when, seqs, ups, order
    city = None
    if city_clock:
        city = simulate_city_clock(
            start_ns=t0 - round(city_warmup_s * S), end_ns=t0 + total_ns + 10 * S, delay_ms=link.delay_ms,
            jitter_ms=link.jitter_ms, loss=link.loss, retransmit_ns=link.rtt_ns + RTO_MIN_NS, seed=seed,
            b_offset_ns=RESPONDER_OFFSET_NS,
            cuts=[f.window_ns(t0) for f in faults if f.kind in ("cut-a", "cut-both")],
        )  # fmt: skip
    out: list[CitySite] = []
    for i in range(sites):
        clock = SkewedClock(round(rng.uniform(-2, 2) * S), rng.uniform(-100, 100), ref_ns=t0)
        dac = 100.0 if i == 0 else rng.uniform(-100, 100)
        site = CitySite(clock, dac, PlayoutEngine(delay_ns=delay_ns, decoder_factory=OpusDecoder), FrameMerge())
        _run_city_site(site, random.Random(seed * 104729 + i), packets, events, codec_delay, t0, total_ns,
                       stream_ts0, delay_ns, faults, window_s, row_s, block, city, correction, progress)  # fmt: skip
        out.append(site)
    tcp_retx = [0] * paths  # recomputed cheaply from the arrivals: frames later than the path's normal worst
    for p in range(paths):
        sent = send0 + np.arange(frames, dtype=np.int64) * FRAME_NS
        tcp_retx[p] = int(np.count_nonzero(arrivals[p] - sent > round((link.delay_ms + link.jitter_ms) * MS)))
    return CitySoak(hours, paths, shared_loss, delay_ns / MS, link, out, merge_rows(out), merge_faults(out), tcp_retx,
                    city is not None, city is not None and correction)  # fmt: skip


def _run_city_site(
    site: CitySite,
    rng: random.Random,
    packets: list[bytes],
    events: tuple[np.ndarray, np.ndarray, np.ndarray],
    codec_delay: int,
    t0: int,
    total_ns: int,
    stream_ts0: int,
    delay_ns: int,
    faults: list[Fault],
    window_s: float,
    row_s: float,
    block: int,
    city: CityClock | None,
    correction: bool,
    progress: Callable[[float], None] | None,
) -> None:
    clock, engine, est, merge = site.clock, site.engine, site.estimator, site.merge
    feeding = est  # after a move to the other responder, a fresh estimator (site.uplinks.ClockFailover)

    def served(responder: int, true_ns: int) -> int:
        if city is None:
            return true_ns + (RESPONDER_OFFSET_NS if responder == 1 else 0)
        return city.served(responder, true_ns)

    city_errs: list[float] = []
    period = block * S / (SAMPLE_RATE * (1 + site.dac_ppm * 1e-6))
    lead = 20_000_000
    lan_ns = 300_000  # the city LAN hop, city server to site
    start = t0 + 5 * S
    n_blocks = math.floor((total_ns - 5 * S) / period)
    ev_t, ev_seq, ev_up = (a.tolist() for a in events)  # Python ints: the loop indexes them millions of times
    ev_i, n_ev = 0, len(ev_t)
    responder_down = [f.window_ns(t0) for f in faults if f.kind == "responder"]
    responder = 0  # which city server's time responder the site syncs to
    failures = 0
    switches = 0
    next_exchange = t0
    next_map = t0
    next_probe = t0 + 10 * S
    row_ns = round(row_s * S)
    window_ns = round(window_s * S)
    row = Row(minute=row_s / 60)
    row_index = 0
    sync_errs: list[float] = []
    jb_max = 0
    capture: list[np.ndarray] = []
    capture_from: float | None = None
    last = {"underruns": 0, "concealed": 0, "late": 0}
    fallback_total = fallback_row0 = 0
    last_ok_ns = 0
    results = [FaultResult(f.kind, f.start_s, f.duration_s) for f in faults]
    fault_ns = [f.window_ns(t0) for f in faults]
    at_start: dict[int, tuple[int, int, int]] = {}
    for b in range(n_blocks):
        dac_true = start + b * period
        now = round(dac_true) - lead
        while next_exchange <= now:
            if any(a <= next_exchange < z for a, z in responder_down) and responder == 0:
                failures += 1
                next_exchange += EXCHANGE_TIMEOUT_NS
                if failures >= GIVE_UP_AFTER:
                    responder, failures, switches = 1, 0, switches + 1
                    if city is not None:
                        feeding = ClockEstimator()
                continue
            failures = 0
            t1 = clock.at(next_exchange)
            at2 = next_exchange + _delay_ns(rng, 150)
            at3 = at2 + 5_000
            t4 = clock.at(at3 + _delay_ns(rng, 150))
            if city is not None and correction:
                raw3 = city.raw(responder, at3)
                feeding.add_sample(t1, city.raw(responder, at2), raw3, t4)
                feeding.set_correction(raw3, served(responder, at3) - raw3)
            else:
                feeding.add_sample(t1, served(responder, at2), served(responder, at3), t4)
            if feeding is not est and feeding.synced:
                est = site.estimator = feeding  # a step of the two responders' difference, slewed by the playout
            next_exchange += feeding.next_interval_ns()
        while next_map <= now:
            if est.synced:
                ref = clock.at(next_map)
                bt = est.to_broadcast(ref)
                engine.set_clock(ClockMap(ref, bt, (est.to_broadcast(ref + S) - bt) / S))
            next_map += 250_000_000
        while next_probe <= now:
            if city is not None:
                city_errs.append(abs(city.error_at(next_probe)) / 1000)
            if est.synced:
                sync_errs.append(abs(est.to_broadcast(clock.at(next_probe)) - served(responder, next_probe)) / 1000)
                for r, (a, z) in zip(results, fault_ns, strict=True):
                    if a <= next_probe <= z + 60 * S:
                        r.sync_error_max_us = max(r.sync_error_max_us, sync_errs[-1])
            next_probe += S
        while ev_i < n_ev and ev_t[ev_i] + lan_ns <= now:
            seq, up = ev_seq[ev_i], ev_up[ev_i]
            ev_i += 1
            copy = merge.offer(1, seq, up)
            if copy is Copy.FIRST:
                put = engine.push(1, seq, stream_ts0 + seq * FRAME_NS, FRAME_NS, packets[seq % len(packets)])
                if put is Put.OK:
                    last_ok_ns = now
            elif copy is Copy.DUPLICATE:
                row.duplicates += 1
            elif copy is Copy.REPLAY:
                row.replays += 1
            else:
                row.old += 1
        out = engine.render(block, clock.at(round(dac_true)))
        playing = engine.state is PlayoutState.PLAYING
        if engine.state is PlayoutState.FALLBACK:
            fallback_total += 1
        jb_max = max(jb_max, round(engine.buffer_ms() / 20))
        for k, (r, (a, z)) in enumerate(zip(results, fault_ns, strict=True)):
            if a <= dac_true and k not in at_start:
                st = engine.stats
                at_start[k] = (st.concealed, st.underruns, fallback_total)
            if r.kind != "responder" and k in at_start and r.resync_s is None and last_ok_ns >= z:
                # The transport's part: from the path(s) back to the first frame the engine could still play.
                if r.frames_back_s is None:
                    r.frames_back_s = round((last_ok_ns - z) / S, 3)
                # The site's part: from that frame to playing it in sync.
                if playing and sync_errs and sync_errs[-1] < 1000:
                    r.resync_s = round(max(0.0, (dac_true - last_ok_ns) / S), 3) if r.kind == "cut-both" else 0.0
            if k in at_start and a <= dac_true < z + 60 * S:
                st = engine.stats
                c0, u0, f0 = at_start[k]
                r.concealed, r.underruns = st.concealed - c0, st.underruns - u0
                r.fallback_s = round((fallback_total - f0) * period / S, 2)
                r.responder_switches = switches
        # The last `window_s` of every row is kept and searched for markers.
        in_row = dac_true - t0 - row_index * row_ns
        if capture_from is None and in_row >= row_ns - window_ns:
            capture, capture_from = [], dac_true
        if capture_from is not None:
            capture.append(out)
        if in_row >= row_ns or b == n_blocks - 1:
            if capture_from is not None and capture:
                errs = _marker_errors(np.concatenate(capture), capture_from, period / block, stream_ts0,
                                      delay_ns, codec_delay, city)  # fmt: skip
                site.heard[row_index] = errs
                row.markers = len(errs)
                if errs:
                    row.marker_error_p99_us = float(np.percentile([abs(e) / 1000 for _, e in errs], 99))
            st = engine.stats
            row.underruns = st.underruns - last["underruns"]
            row.concealed = st.concealed - last["concealed"]
            row.late = st.late - last["late"]
            last = {"underruns": st.underruns, "concealed": st.concealed, "late": st.late}
            row.fallback_s = round((fallback_total - fallback_row0) * period / S, 2)
            fallback_row0 = fallback_total
            row.sync_error_p99_us = float(np.percentile(sync_errs, 99)) if sync_errs else float("nan")
            row.city_clock_p99_us = float(np.percentile(city_errs, 99)) if city_errs else float("nan")
            row.rss_mb = _rss_mb()
            row.jitter_buffer_max = jb_max
            row.merge_streams = len(merge)
            row.estimator_kept = est.kept_count
            row.minute = round((dac_true - t0) / S / 60, 2)
            site.rows.append(row)
            row_index += 1
            row = Row(minute=(row_index + 1) * row_s / 60)
            sync_errs, city_errs, jb_max, capture, capture_from = [], [], 0, [], None
        if progress is not None and b % 30_000 == 0:
            progress((dac_true - t0) / S)
    site.faults = results


def _marker_errors(
    audio: np.ndarray,
    first_true: float,
    ns_per_sample: float,
    stream_ts0: int,
    delay_ns: int,
    codec_delay: int,
    city: CityClock | None = None,
) -> list[tuple[int, float]]:
    """(marker index, heard − due in ns) for every marker chirp found in `audio`; due by the city's clock if
    there is one (a city clock E ahead of the hub's plays everything E early, the whole city alike)."""
    out = []
    lookahead = codec_delay * S / SAMPLE_RATE
    for pos in detect_markers(audio):
        heard = first_true + pos * ns_per_sample
        k = round((heard - delay_ns - stream_ts0 - lookahead) / S)
        due = stream_ts0 + k * S + delay_ns + lookahead
        out.append((k, heard - due + (city.error_at(round(due)) if city is not None else 0.0)))
    return out


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def merge_rows(sites: list[CitySite]) -> list[Row]:
    """The fleet per row: counters summed, p99s the worst site's, skew = one marker's spread across sites."""
    rows = []
    for i in range(min(len(s.rows) for s in sites)):
        rs = [s.rows[i] for s in sites]
        row = Row(minute=rs[0].minute)
        for name in ("underruns", "concealed", "late", "duplicates", "replays", "old", "markers"):
            setattr(row, name, sum(getattr(r, name) for r in rs))
        row.fallback_s = max(r.fallback_s for r in rs)
        row.sync_error_p99_us = max(r.sync_error_p99_us for r in rs)
        row.city_clock_p99_us = max(r.city_clock_p99_us for r in rs)
        row.marker_error_p99_us = max(r.marker_error_p99_us for r in rs)
        row.rss_mb = max(r.rss_mb for r in rs)
        row.jitter_buffer_max = max(r.jitter_buffer_max for r in rs)
        row.merge_streams = max(r.merge_streams for r in rs)
        row.estimator_kept = max(r.estimator_kept for r in rs)
        by_marker: dict[int, list[float]] = {}
        for s in sites:
            for k, e in s.heard.get(i, []):
                by_marker.setdefault(k, []).append(e)
        spreads = [(max(v) - min(v)) / 1000 for v in by_marker.values() if len(v) == len(sites)]
        if spreads and len(sites) > 1:
            row.skew_p99_us = float(np.percentile(spreads, 99))
        rows.append(row)
    return rows


def merge_faults(sites: list[CitySite]) -> list[FaultResult]:
    out = []
    for k, first in enumerate(sites[0].faults):
        fs = [s.faults[k] for s in sites]
        backs = [f.frames_back_s for f in fs]
        resyncs = [f.resync_s for f in fs]
        out.append(
            FaultResult(
                first.kind,
                first.start_s,
                first.duration_s,
                concealed=sum(f.concealed for f in fs),
                underruns=sum(f.underruns for f in fs),
                fallback_s=max(f.fallback_s for f in fs),
                frames_back_s=None if None in backs else max(b for b in backs if b is not None),
                resync_s=None if None in resyncs else max(r for r in resyncs if r is not None),
                sync_error_max_us=max(f.sync_error_max_us for f in fs),
                responder_switches=max(f.responder_switches for f in fs),
            )
        )
    return out
