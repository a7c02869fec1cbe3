"""Playout: the sample that should be at the DAC now is the one stamped `now - D` on the broadcast clock.

`PlayoutEngine` is sans-IO. Packets are pushed in as they arrive (any order, any time); a sink pulls audio with
`render(n, dac_local_ns)` naming the local-clock instant at which the block's first sample reaches its DAC. The
engine maps that instant to the broadcast clock (`ClockMap`, fed by the clock estimator), subtracts the playout
delay D and reads the stream there. Where the DAC really runs fast or slow, the read position drifts from the
target; a PI controller then reads the stream a few hundred ppm faster or slower (cubic interpolation), never
jumping, so every site plays the same sample at the same instant for hours. Only a gross error (a clock step, a
stalled host) makes it jump, and that is counted as a resync.

Positions are in samples since the engine's epoch (its first target), kept as float64: four hours is ~7e8
samples, far inside float64's exact range for sub-sample work.

D itself may change during a stream, but only as the channel's signed `DelayCurve` says (carried in the
frames, see citycast.protocol.delay): the sample stamped m plays at m + D(m), D moving linearly over a ramp of
stream time. The target read position follows that schedule exactly (integer ns, the same on every site) and the
ramp's rate (ramp / (ramp + change), within 5 % of 1) is fed forward into the resampling ratio, so the stream is
stretched or squeezed gently: no jump, no gap, and every site at the same sample at the same instant.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, Self

import numpy as np
import numpy.typing as npt

from citycast.media.audio import SAMPLE_RATE
from citycast.media.jitter import JitterBuffer, Put
from citycast.media.render import Samples
from citycast.media.resampler import read_ramp


class Decoder(Protocol):
    def decode(self, packet: bytes) -> Samples: ...

    def conceal(self, samples: int = ...) -> Samples: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class ClockMap:
    """Local clock → broadcast clock, as a straight line around a reference point."""

    ref_local_ns: int
    ref_bt_ns: int
    rate: float = 1.0

    def to_broadcast(self, local_ns: int) -> int:
        return self.ref_bt_ns + round((local_ns - self.ref_local_ns) * self.rate)


@dataclass(frozen=True, slots=True)
class DelayCurve:
    """D as a function of stream time: `old_delay_ns` up to `from_ts_ns`, `new_delay_ns` from `from_ts_ns +
    ramp_ns`, linear between (docs/protocol.md "Delay schedule"; on the wire: citycast.protocol.delay)."""

    from_ts_ns: int  # stream time at which D starts to move from `old_delay_ns`
    old_delay_ns: int
    new_delay_ns: int
    ramp_ns: int  # stream time over which D moves; 0 only when old == new

    @classmethod
    def steady(cls, delay_ns: int) -> Self:
        """D constant: what a site runs before any schedule reaches it."""
        return cls(0, delay_ns, delay_ns, 0)

    @property
    def end_ts_ns(self) -> int:
        """Stream time from which D is `new_delay_ns`."""
        return self.from_ts_ns + self.ramp_ns

    @property
    def max_delay_ns(self) -> int:
        return max(self.old_delay_ns, self.new_delay_ns)

    def delay_at(self, ts_ns: int) -> int:
        """D for the sample stamped `ts_ns`."""
        if ts_ns <= self.from_ts_ns or self.ramp_ns == 0:
            return self.old_delay_ns if ts_ns <= self.from_ts_ns else self.new_delay_ns
        if ts_ns >= self.end_ts_ns:
            return self.new_delay_ns
        return self.old_delay_ns + (self.new_delay_ns - self.old_delay_ns) * (ts_ns - self.from_ts_ns) // self.ramp_ns

    def stream_at(self, bt_ns: int) -> int:
        """The stream time that plays at broadcast time `bt_ns`: the inverse of m -> m + D(m)."""
        if bt_ns - self.old_delay_ns <= self.from_ts_ns:
            return bt_ns - self.old_delay_ns
        if bt_ns - self.new_delay_ns >= self.end_ts_ns:
            return bt_ns - self.new_delay_ns
        # Inside the ramp: m + old + change * (m - from) / ramp = bt.
        change = self.new_delay_ns - self.old_delay_ns
        return self.from_ts_ns + (bt_ns - self.old_delay_ns - self.from_ts_ns) * self.ramp_ns // (self.ramp_ns + change)

    def rate_at(self, bt_ns: int) -> float:
        """d(stream time)/d(broadcast time) at `bt_ns`: 1 outside the ramp, ramp / (ramp + change) inside."""
        if bt_ns - self.old_delay_ns <= self.from_ts_ns or bt_ns - self.new_delay_ns >= self.end_ts_ns:
            return 1.0
        return self.ramp_ns / (self.ramp_ns + self.new_delay_ns - self.old_delay_ns)


class PlayoutState(Enum):
    SYNCING = "syncing"  # no broadcast clock yet: nothing can be placed in time
    IDLE = "idle"  # in sync, no stream
    PLAYING = "playing"
    FALLBACK = "fallback"  # the stream stopped; playing the channel's fallback audio (or silence)


@dataclass
class PlayoutStats:
    packets: int = 0
    late: int = 0
    duplicates: int = 0
    too_far: int = 0
    inconsistent: int = 0
    stale_stream: int = 0
    decoded: int = 0
    concealed: int = 0
    underruns: int = 0
    resyncs: int = 0


@dataclass
class _Stream:
    id: int
    seq0: int
    ts0_ns: int
    packet_ns: int
    base: float  # position of seq0's first sample
    spp: int  # samples per packet
    decoder: Decoder
    jb: JitterBuffer = field(default_factory=JitterBuffer)
    started: bool = False
    next_seq: int = 0
    buf: Samples = field(default_factory=lambda: np.zeros(0, np.float32))
    buf_start: float = 0.0
    last_real_seq: int | None = None
    conceal_run: int = 0
    pending_conceal: int = 0
    starved: bool = False
    dead: bool = False
    newest_ts_ns: int = 0
    started_ts_ns: int = 0  # stream time of the first sample of the packet playout (re)started at

    def position_of(self, seq: int) -> float:
        return self.base + (seq - self.seq0) * self.spp


class PlayoutEngine:
    def __init__(
        self,
        *,
        delay_ns: int,
        decoder_factory: Callable[[], Decoder],
        fallback: Samples | None = None,
        fallback_after_ns: int = 2_000_000_000,
        max_slew_ppm: float = 1000.0,
        resync_ns: int = 10_000_000,
        kp: float = 0.5,
        ki: float = 0.08,
        max_conceal_packets: int = 5,
        rate_window_points: int = 20,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        self.delay_ns = delay_ns  # the configured D, until a schedule says otherwise
        self._schedule = DelayCurve.steady(delay_ns)
        self._stream_ns: int | None = None  # stream time at the last block's first sample
        self._decoder_factory = decoder_factory
        self._fallback = fallback if fallback is not None and len(fallback) else None
        self._fallback_after = fallback_after_ns * sample_rate / 1e9
        self._max_slew = max_slew_ppm * 1e-6
        self._resync = resync_ns * sample_rate / 1e9
        self._kp = kp
        self._ki = ki
        self._max_conceal = max_conceal_packets
        self.sr = sample_rate
        self._lock = threading.Lock()
        self._clock: ClockMap | None = None
        self._epoch_ns: int | None = None
        self._pos: float | None = None
        self._rate_i = 0.0  # the integrator: what the feed-forward rate estimate leaves over
        # Where the DAC really is: (samples handed out, broadcast time of the block) checkpoints; their slope is
        # the DAC's true rate, used as the resampling ratio's feed-forward so the PI loop only trims phase.
        self._dac_points: deque[tuple[int, int]] = deque(maxlen=rate_window_points)
        self._dac_samples = 0
        self._ff = 1.0
        self._ramp_cache: npt.NDArray[np.float64] = np.zeros(0)
        self.ratio = 1.0
        self._stream: _Stream | None = None
        self.state = PlayoutState.SYNCING
        self.stats = PlayoutStats()
        self.tracking_error_ns = 0.0  # smoothed read-position error, signed
        self._sumsq = 0.0
        self._peak = 0.0
        self._nlevel = 0

    # -- inputs -------------------------------------------------------------------------------------------
    def set_clock(self, clock: ClockMap | None) -> None:
        with self._lock:
            self._clock = clock

    def set_delay_schedule(self, schedule: DelayCurve) -> bool:
        """Follow the channel's (verified) delay schedule. A schedule older than the one followed is ignored: a
        straggler frame must not take D back. True if the schedule changed."""
        with self._lock:
            current = self._schedule
            if schedule == current or schedule.from_ts_ns < current.from_ts_ns:
                return False
            self._schedule = schedule
            return True

    def reset_delay(self) -> None:
        """Back to the configured D (the site moved to another channel, whose schedule is not this one's)."""
        with self._lock:
            self._schedule = DelayCurve.steady(self.delay_ns)

    @property
    def delay_schedule(self) -> DelayCurve:
        return self._schedule

    def delay_at(self, ts_ns: int) -> int:
        """D for the sample stamped `ts_ns` under the schedule followed now."""
        return self._schedule.delay_at(ts_ns)

    def current_delay_ns(self) -> int:
        """D at the sample playing now (the configured D before anything played)."""
        at = self._stream_ns
        return self._schedule.delay_at(at) if at is not None else self._schedule.new_delay_ns

    def playing(self) -> tuple[int, int, int] | None:
        """(stream id, stream time of the last block's first sample, stream time where the stream's last real
        packet ends) when the last block came from a stream; None when it was silence or fallback. What is
        concealed after the last real packet (before the stream is given up) was never sent: not played. Read
        right after `render` (the site's proof of play, site.receipts)."""
        st, at = self._stream, self._stream_ns
        if self.state is not PlayoutState.PLAYING or st is None or at is None or st.last_real_seq is None:
            return None
        # A (re)started stream's first block begins with padding before its first packet: not played either.
        return st.id, max(at, st.started_ts_ns), st.ts0_ns + (st.last_real_seq + 1 - st.seq0) * st.packet_ns

    def set_fallback(self, fallback: Samples | None) -> None:
        with self._lock:
            self._fallback = fallback if fallback is not None and len(fallback) else None

    def drop_stream(self) -> None:
        """Forget the current stream on purpose (the site was moved to another channel): what follows is
        "idle" until a stream arrives, not "lost", so no fallback audio starts."""
        with self._lock:
            self._stream = None

    def push(self, stream: int, seq: int, ts_ns: int, packet_ns: int, packet: bytes) -> Put | None:
        """Offer one verified packet. Returns how the jitter buffer took it (None: rejected before it)."""
        with self._lock:
            self.stats.packets += 1
            if self._epoch_ns is None:
                self._epoch_ns = ts_ns
            st = self._stream
            if st is None or st.id != stream:
                if st is not None and not st.dead and ts_ns < st.newest_ts_ns:
                    # A straggler of a stream that was already replaced by a newer one.
                    self.stats.stale_stream += 1
                    return None
                spp = round(packet_ns * self.sr / 1e9)
                if spp <= 0 or spp > self.sr:
                    self.stats.inconsistent += 1
                    return None
                st = _Stream(
                    id=stream,
                    seq0=seq,
                    ts0_ns=ts_ns,
                    packet_ns=packet_ns,
                    base=(ts_ns - self._epoch_ns) * self.sr / 1e9,
                    spp=spp,
                    decoder=self._decoder_factory(),
                )
                self._stream = st
            elif packet_ns != st.packet_ns or abs(ts_ns - st.ts0_ns - (seq - st.seq0) * st.packet_ns) > 1_000_000:
                # Timestamp and sequence disagree: the frame is signed, so the sender is confused; don't guess.
                self.stats.inconsistent += 1
                return None
            if st.started and seq < st.next_seq:
                self.stats.late += 1
                return Put.LATE
            result = st.jb.put(seq, packet)
            if result is Put.TOO_FAR and not st.started and self._rebase_window(st):
                result = st.jb.put(seq, packet)
            if result is Put.OK:
                st.newest_ts_ns = max(st.newest_ts_ns, ts_ns)
            elif result is Put.DUPLICATE:
                self.stats.duplicates += 1
            elif result is Put.TOO_FAR:
                self.stats.too_far += 1
            elif result is Put.LATE:
                self.stats.late += 1
            return result

    def _rebase_window(self, st: _Stream) -> bool:
        """A stream that went dead keeps the jitter window where it stopped; after an outage longer than the
        window (512 packets, 10.24 s) every frame of its return would be "too far" ahead of that, and the site
        would stay in fallback for good. Move the window to the packet playout needs now; True if it moved."""
        if self._pos is None:
            return False
        due = st.seq0 + math.floor((self._pos - st.base) / st.spp)
        if st.jb.next_seq is not None and due <= st.jb.next_seq:
            return False
        st.jb.discard_before(due)
        return True

    # -- output -------------------------------------------------------------------------------------------
    def render(self, n: int, dac_local_ns: int) -> Samples:
        with self._lock:
            out = self._render(n, dac_local_ns)
            if n:
                self._sumsq += float(np.dot(out, out))
                # max and -min: two reductions, where max(abs) made a copy of the block first
                self._peak = max(self._peak, float(out.max()), -float(out.min()))
                self._nlevel += n
            return out

    def _render(self, n: int, dac_local_ns: int) -> Samples:
        if self._clock is None:
            self.state = PlayoutState.SYNCING
            return np.zeros(n, np.float32)
        bt = self._clock.to_broadcast(dac_local_ns)
        schedule = self._schedule
        stream_ns = schedule.stream_at(bt)
        self._stream_ns = stream_ns
        if self._epoch_ns is None:
            self._epoch_ns = stream_ns
        target = (stream_ns - self._epoch_ns) * self.sr / 1e9
        if self._pos is None:
            self._pos = target
        err = self._pos - target
        if abs(err) > self._resync:
            self._pos = target
            err = 0.0
            self.stats.resyncs += 1
            if self._stream is not None:
                self._stream.started = False
        self._track_dac_rate(n, bt)
        e_s = err / self.sr
        dt = n / self.sr
        self._rate_i = _clamp(self._rate_i - self._ki * e_s * dt, -self._max_slew, self._max_slew)
        correction = _clamp(self._rate_i - self._kp * e_s, -self._max_slew, self._max_slew)
        # Inside a change of D the stream itself is read at the schedule's rate over this very block (a block
        # that straddles a ramp's edge gets the mix): fed forward, so the PI loop still only trims phase.
        span = round(n * 1e9 / self.sr)
        stretch = 1.0 if stream_ns == bt - schedule.new_delay_ns else (schedule.stream_at(bt + span) - stream_ns) / span
        self.ratio = self._ff * (1 + correction) * stretch
        self.tracking_error_ns += (e_s * 1e9 - self.tracking_error_ns) * min(1.0, dt / 1.0)
        out = self._produce(n, self.ratio)
        self._pos += n * self.ratio
        return out

    def _ramp(self, n: int) -> npt.NDArray[np.float64]:
        if len(self._ramp_cache) != n:
            self._ramp_cache = np.arange(n, dtype=np.float64)
        return self._ramp_cache

    def _track_dac_rate(self, n: int, bt: int) -> None:
        pts = self._dac_points
        if not pts or self._dac_samples - pts[-1][0] >= self.sr // 2:
            pts.append((self._dac_samples, bt))
            if len(pts) >= 3:
                (s0, b0), (s1, b1) = pts[0], pts[-1]
                ff = (b1 - b0) * self.sr / 1e9 / (s1 - s0)
                # A wild value means the clock map jumped, not that the DAC changed speed: keep the last one.
                if abs(ff - 1) <= self._max_slew:
                    self._ff = ff
        self._dac_samples += n

    def _produce(self, n: int, ratio: float) -> Samples:
        assert self._pos is not None
        st = self._stream
        p_first = self._pos
        p_last = p_first + (n - 1) * ratio
        if st is None:
            self.state = PlayoutState.IDLE
            return np.zeros(n, np.float32)
        if not st.started and not self._start(st, p_first, p_last):
            return self._fallback_block(n, st)
        need_end = p_last + 3.0
        while st.buf_start + len(st.buf) <= need_end:
            pcm = self._next_packet_pcm(st)
            if st.dead:
                return self._fallback_block(n, st)
            st.buf = np.concatenate((st.buf, pcm))
        self.state = PlayoutState.PLAYING
        out = read_ramp(st.buf, p_first - st.buf_start, ratio, n, self._ramp(n))
        # Keep only what the next block can still reach back to (cubic reads one sample behind).
        keep_from = math.floor(p_first + n * ratio - st.buf_start) - 2
        if keep_from > 0:
            st.buf = st.buf[keep_from:]
            st.buf_start += keep_from
        return out

    def _start(self, st: _Stream, p_first: float, p_last: float) -> bool:
        """Place a (re)starting stream at the current read position: later packets are in sync at once."""
        lowest = st.jb.lowest_seq()
        if lowest is None:
            return False
        k_pos = math.floor((p_first - st.base) / st.spp)
        seq = max(st.seq0 + k_pos, lowest)
        if st.position_of(seq) > p_last + self.sr:  # more than a second ahead: not yet
            return False
        if not st.jb.has_from(seq):
            st.jb.reset(seq)  # everything buffered is already too late to play
            return False
        dropped = st.jb.discard_before(seq)
        self.stats.late += dropped
        st.decoder.reset()
        st.next_seq = seq
        st.buf_start = st.position_of(seq)
        pad = max(0, math.ceil(st.buf_start - p_first) + 2)
        st.buf = np.zeros(pad, np.float32)
        st.buf_start -= pad
        st.started = True
        st.started_ts_ns = st.ts0_ns + (seq - st.seq0) * st.packet_ns
        st.dead = False
        st.last_real_seq = None
        st.conceal_run = 0
        st.pending_conceal = 0
        st.starved = False
        return True

    def _next_packet_pcm(self, st: _Stream) -> Samples:
        seq = st.next_seq
        st.next_seq += 1
        packet = st.jb.take(seq)
        if packet is not None:
            pcm = st.decoder.decode(packet)
            self.stats.decoded += 1
            if st.pending_conceal:
                # The stream went on after a gap: that gap was loss or starvation, not the end of a speech.
                self.stats.concealed += st.pending_conceal
                if st.starved:
                    self.stats.underruns += 1
            st.pending_conceal = 0
            st.starved = False
            st.conceal_run = 0
            st.last_real_seq = seq
        else:
            if not st.jb.has_from(seq + 1):
                st.starved = True
            pcm = st.decoder.conceal(st.spp) if st.conceal_run < self._max_conceal else _silence(st.spp)
            st.conceal_run += 1
            st.pending_conceal += 1
            last = st.last_real_seq if st.last_real_seq is not None else seq
            if (seq - last) * st.spp > self._fallback_after:
                st.dead = True
                st.started = False
                st.pending_conceal = 0
                st.starved = False
        if len(pcm) != st.spp:
            pcm = np.resize(pcm, st.spp) if len(pcm) else _silence(st.spp)
        return pcm.astype(np.float32, copy=False)

    def _fallback_block(self, n: int, st: _Stream | None) -> Samples:
        if st is not None and st.dead:
            self.state = PlayoutState.FALLBACK
        elif self.state is not PlayoutState.FALLBACK:
            self.state = PlayoutState.IDLE
        if self._fallback is None or self.state is not PlayoutState.FALLBACK:
            return np.zeros(n, np.float32)
        assert self._pos is not None and self._epoch_ns is not None
        # Indexed by the broadcast clock, so every site's fallback plays in step too.
        start = self._epoch_ns * self.sr // 1_000_000_000 + math.floor(self._pos)
        idx = (start + np.arange(n)) % len(self._fallback)
        return self._fallback[idx]

    # -- reporting ----------------------------------------------------------------------------------------
    def buffer_ms(self) -> float:
        with self._lock:
            st = self._stream
            if st is None or st.jb.newest_seq is None or self._pos is None:
                return 0.0
            ahead = st.position_of(st.jb.newest_seq + 1) - self._pos
            return max(0.0, ahead * 1000 / self.sr)

    def take_levels(self) -> tuple[float, float]:
        """RMS and peak (dBFS) of what was played since the last call."""
        with self._lock:
            rms = math.sqrt(self._sumsq / self._nlevel) if self._nlevel else 0.0
            peak = self._peak
            self._sumsq, self._peak, self._nlevel = 0.0, 0.0, 0
        return _dbfs(rms), _dbfs(peak)


def _clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def _silence(n: int) -> Samples:
    return np.zeros(n, np.float32)


def _dbfs(x: float) -> float:
    return 20 * math.log10(x) if x > 1e-9 else -180.0
