"""Offset and drift of the local clock against the broadcast clock, from NTP-style exchanges (sans-IO).

`ClockEstimator` is fed timestamp quadruples and never reads a clock or sleeps, so hours of simulated time
replay in milliseconds and the same object runs under the asyncio shell in `citycast.clock.service`.

Model. ``offset(t) = broadcast - local`` at local time ``t``, linear over the window: ``a + b·(t - ref)``.
One exchange gives two one-way readings, each the offset plus a delay that can only be positive:

    f = t2 - t1 =  offset(t1) + up        g = t4 - t3 = -offset(t4) + down

Instead of averaging the round trips of a few low-delay exchanges (whose error is half the difference of two
jittery delays, and shrinks only as 1/√n), the estimator fits the *lower envelope* of each direction
separately: the line under all ``(t1, f)`` points touching the lower convex hull where it spans the points'
mean time (the linear-programming estimator of Moon, Skelly and Towsley), and likewise for ``(t4, g)``. Each
envelope converges to the path's minimum one-way delay as fast as its samples crowd that floor (≈ 1/n), drift
comes out of the envelopes' slopes, and queueing spikes never touch them. The offset is the midpoint:
``(Lf(t) - Lg(t)) / 2``; its only unknowable error is half the difference of the two minimum one-way delays
(path asymmetry), bounded by half the minimum round trip.

Housekeeping:

1. samples are kept per bucket of local time (8 s by default; the lowest ``f`` and the lowest ``g`` of each),
   over a sliding window (16 min by default), so a refit costs a few hundred integer operations;
2. after the first lock the served estimate is continuous: each change of the fit is slewed in linearly over
   at least ``slew_time_ns`` and at no more than ``max_slew_ppm`` (consumers resample to follow it), unless it
   exceeds ``step_threshold_ns`` (a broken estimate is better stepped than slewed for minutes);
3. each new sample must respect causality against the current estimate (no delay below zero, within the
   estimate's uncertainty): three violations in a row mean the local or the server clock was stepped, and
   the estimator starts over; a long silence (a rejoin) switches back to fast exchanges for a few seconds;
4. a (re)start is a burst of exchanges, served once precise to 1 ms, with corrections slewed in fast for its
   first seconds; `seed_drift` starts it from the drift the site measured before a restart (citycast.clock.memory),
   so only the offset is left to learn.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque

_MS = 1_000_000
_S = 1_000_000_000
_US = 1_000


class _Bucket:
    """The lowest one-way readings seen in one bucket of local time."""

    __slots__ = ("delay", "f", "g", "start", "tf", "tg")

    def __init__(self, start: int, tf: int, f: int, tg: int, g: int, delay: int) -> None:
        self.start = start
        self.tf, self.f = tf, f
        self.tg, self.g = tg, g
        self.delay = delay


def _envelope_slope(points: list[tuple[int, int]]) -> float:
    """Slope of the line under all `points` (sorted by x) touching their lower convex hull at their mean x.

    That line minimises the summed distance to the points (the linear program of Moon et al.). Exact integer
    geometry for the hull; 0 for a single point.
    """
    hull: list[tuple[int, int]] = []
    for p in points:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # drop hull[-1] if it lies on or above the segment hull[-2] -> p
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    if len(hull) == 1:
        return 0.0
    x_mean = sum(x for x, _ in points) / len(points)
    for i in range(len(hull) - 1):
        if hull[i + 1][0] >= x_mean:
            break
    (x1, y1), (x2, y2) = hull[i], hull[i + 1]
    return (y2 - y1) / (x2 - x1)


def _contact_x(hull: list[tuple[int, int]], slopes: list[float], b: float) -> int:
    """x of the lower hull's vertex where a line of slope `b` touches it from below (`slopes`: its edges')."""
    return hull[bisect.bisect_left(slopes, b)][0]


def _lower_hull(points: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[float]]:
    """Lower convex hull of `points` (any order) and its edge slopes (increasing)."""
    hull: list[tuple[int, int]] = []
    for p in sorted(points):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                hull.pop()
            else:
                break
        if hull and hull[-1][0] == p[0]:
            continue  # same x, higher y (sorted): not on the lower hull
        hull.append(p)
    slopes = [(y2 - y1) / (x2 - x1) for (x1, y1), (x2, y2) in itertools.pairwise(hull)]
    return hull, slopes


def _joint_slope(fs: list[tuple[int, int]], gs: list[tuple[int, int]]) -> float:
    """The drift b minimising the summed heights of the up points over their envelope (slope b) and of the down
    points over theirs (slope -b): the linear program of Moon et al. with one slope for both directions.

    The objective is convex and piecewise linear in b; its derivative ``n_f (x_f(b) - mean x_f) - n_g (x_g(b) -
    mean x_g)`` (x_f, x_g: where each envelope touches) only changes at the hulls' edge slopes, so the optimum
    is the breakpoint where it changes sign. O(n log n) for a window's ~128 buckets."""
    hf, sf = _lower_hull(fs)
    # g + b x touches at slope -b: the hull of (-x, g) has slope b there
    hg, sg = _lower_hull([(-x, y) for x, y in gs])
    mf = sum(x for x, _ in fs) / len(fs)
    mg = sum(-x for x, _ in gs) / len(gs)

    def derivative(b: float) -> float:
        return len(fs) * (_contact_x(hf, sf, b) - mf) + len(gs) * (_contact_x(hg, sg, b) - mg)

    candidates = sorted(set(sf) | set(sg))
    if not candidates:
        return 0.0
    # the derivative is non-decreasing in b: the first breakpoint at which it turns non-negative (just above it)
    lo, hi = 0, len(candidates) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if derivative(math.nextafter(candidates[mid], math.inf)) >= 0:
            hi = mid
        else:
            lo = mid + 1
    return candidates[lo]


def _floor_gap(residuals: list[float]) -> float:
    """How far above the path's true floor an envelope may still sit: the gap between the lowest and the
    next-lowest residual (for samples drawn above a floor, the lowest lies about one such spacing above it).
    Two or fewer points say nothing yet: the largest residual stands in."""
    if len(residuals) < 3:
        return max(residuals, default=0.0)
    lo = sorted(residuals)[:3]
    # the envelope touches two points (residual ~0): the third one's height is the spacing
    return max(lo[2] - lo[0], 0.0)


class ClockEstimator:
    """Estimates the broadcast clock from a local clock and NTP-style samples. Pure: never reads a clock."""

    def __init__(
        self,
        *,
        window_ns: int = 16 * 60 * _S,
        bucket_ns: int = 8 * _S,
        min_samples: int = 8,
        fast_interval_ns: int = 100 * _MS,
        slow_interval_ns: int = _S,
        fast_period_ns: int = 5 * _S,
        rejoin_gap_ns: int = 60 * _S,
        slew_time_ns: int = 10 * _S,
        max_slew_ppm: float = 500.0,
        step_threshold_ns: int = 50 * _MS,
        max_drift_ppm: float = 1000.0,
        wander_ppm: float = 1.0,
        drift_prior_ppm: float = 150.0,
        causality_slack_ns: int = 2 * _MS,
        refine_interval_ns: int = 250 * _MS,
        refine_until_ns: int = 20 * _US,
        refine_period_ns: int = 10 * 60 * _S,
        burst_interval_ns: int = 20 * _MS,
        burst_samples: int = 48,
        lock_precision_ns: int = _MS,
        lock_wait_ns: int = 3 * _S,
        hint_floor_ppm: float = 3.0,
        hint_reject_sigmas: float = 4.0,
        hint_reject_ppm: float = 20.0,
        hint_reject_after: int = 10,
        hint_reject_span_ns: int = 3 * _S,
        young_ns: int = 10 * _S,
        young_slew_time_ns: int = _S,
    ) -> None:
        self.window_ns = window_ns
        self.bucket_ns = bucket_ns
        self.min_samples = min_samples
        self.fast_interval_ns = fast_interval_ns
        self.slow_interval_ns = slow_interval_ns
        self.fast_period_ns = fast_period_ns
        self.rejoin_gap_ns = rejoin_gap_ns
        self.slew_time_ns = slew_time_ns
        self.max_slew = max_slew_ppm * 1e-6
        self.step_threshold_ns = step_threshold_ns
        self.max_drift = max_drift_ppm * 1e-6
        self.wander = wander_ppm * 1e-6
        self.drift_prior = drift_prior_ppm * 1e-6
        # How far a one-way delay may come out negative before the sample counts as a clock step. An upstream
        # responder that is itself slewing moves by up to its slew rate between fits; that is not a step.
        self.causality_slack_ns = causality_slack_ns
        # After the fast start, exchanges come every `refine_interval_ns` until the estimate is known to within
        # `refine_until_ns` (at most `refine_period_ns` after a (re)start): over a 60-80 ms path the envelopes'
        # floors and the drift need hundreds of samples, and at one a second that takes many minutes, during
        # which sites on their own paths sit up to a millisecond apart. On a LAN too the estimate claims 100 µs
        # within seconds while 20 sites on one loopback still wandered ±100 µs for minutes at one exchange a
        # second (skew p99 0.29 ms against a 0.1 ms target): refining on to 20 µs brought it to 0.14 ms.
        self.refine_interval_ns = refine_interval_ns
        self.refine_until_ns = refine_until_ns
        self.refine_period_ns = refine_period_ns
        # Cold start: the first `burst_samples` exchanges after a (re)start come every `burst_interval_ns` (the
        # envelopes need many samples near the path's floor, and one every 100 ms gave 8 in the first second),
        # and the estimate is served once its precision is within `lock_precision_ns`, or after `lock_wait_ns`
        # of samples whatever it is (a path too jittery for that still plays, as before).
        self.burst_interval_ns = burst_interval_ns
        self.burst_samples = burst_samples
        self.lock_precision_ns = lock_precision_ns
        self.lock_wait_ns = lock_wait_ns
        # A drift remembered from before a restart (`seed_drift`): the crystal's rate survives a power cut, its
        # offset does not. Trusted to within `hint_floor_ppm` at least (temperature moves a crystal by a few ppm),
        # and dropped for good once the samples disagree with it by more than `hint_reject_sigmas` sigmas (and
        # `hint_reject_ppm`) in `hint_reject_after` fits in a row: a young fit's own sigma is only a rough guess.
        # Only fits over at least `hint_reject_span_ns` of samples count: on a loaded box (CI saw it) the first
        # second's burst can disagree by tens of ppm for ten fits running, and a right memory was thrown away.
        self.hint_floor = hint_floor_ppm * 1e-6
        self.hint_reject_sigmas = hint_reject_sigmas
        self.hint_reject = hint_reject_ppm * 1e-6
        self.hint_reject_after = hint_reject_after
        self.hint_reject_span_ns = hint_reject_span_ns
        self._hint_doubts = 0
        # For `young_ns` after a (re)start each correction is slewed in over `young_slew_time_ns` (still no faster
        # than `max_slew_ppm`): the first fits improve by hundreds of µs within seconds, and a site that took ten
        # seconds over each would stay that far off for as long.
        self.young_ns = young_ns
        self.young_slew_time_ns = young_slew_time_ns
        self._hint: tuple[float, float] | None = None  # (b, sigma) of the remembered drift, in offset slope
        self.hint_rejected = False
        self.rejected = 0  # samples refused as malformed or violating causality
        self.resets = 0  # times the estimator started over (local or server clock stepped)
        self.steps = 0  # times the served estimate was stepped instead of slewed after the first lock
        # The responder's correction (`set_correction`): its served clock minus its free-running clock, at a reading
        # of that free-running clock, and how fast it was changing. None: the samples are of the served clock.
        self._corr: tuple[int, int] | None = None
        self._corr_rate = 0.0
        self.max_correction_rate = max_slew_ppm * 1e-6
        self._reset()

    def _reset(self) -> None:
        self._buckets: deque[_Bucket] = deque()
        self._count = 0
        self._locked = False
        self._violations = 0
        self._fast_until: int | None = None
        self._last_mid: int | None = None
        self._first_mid: int | None = None
        # the fit: offset(t) = a + b (t - ref); `width` = the envelopes' gap (minimum round trip) at ref
        self._ref = 0
        self._a = 0.0
        self._b = 0.0
        self._width = 0.0
        self._sigma_b = self.max_drift
        self._sigma_data = self.max_drift  # the drift's sigma from the samples alone (no remembered drift)
        self._lever = 0
        self._span = 0
        self._min_delay = 0
        self._floor = 0.0  # how far the envelopes may still sit above the path's true floors (offset ns)
        # slew: served(t) = fit(t) + g0 * max(0, 1 - (t - g_t0) / g_dur) (g0 held before g_t0)
        self._g0 = 0.0
        self._g_t0 = 0
        self._g_dur = 1

    # ---------------------------------------------------------------- input

    def add_sample(self, t1: int, t2: int, t3: int, t4: int) -> None:
        """Feed one exchange: t1/t4 local send/receive, t2/t3 server receive/transmit (broadcast clock)."""
        rtt = t4 - t1
        hold = t3 - t2
        if rtt < 0 or hold < 0 or hold > rtt + 10_000:
            self.rejected += 1
            return
        delay = max(rtt - hold, 0)
        mid = (t1 + t4) // 2
        f = t2 - t1
        g = t4 - t3
        last = self._last_mid
        if last is not None and mid < last - self.bucket_ns:
            # the local clock went backwards: nothing we hold is comparable any more
            self._restart()
            last = None
        if self._locked and not self._causal(t1, f, t4, g):
            self._violations += 1
            if self._violations < 3:
                self.rejected += 1
                return
            self._restart()
            last = None
        self._violations = 0
        if last is None or mid - last > self.rejoin_gap_ns:
            self._fast_until = mid + self.fast_period_ns
        self._last_mid = mid if last is None else max(last, mid)
        self._count += 1
        self._insert(mid, t1, f, t4, g, delay)
        self._refit(t4)

    def _restart(self) -> None:
        self.resets += 1
        self._reset()

    def _causal(self, t1: int, f: int, t4: int, g: int) -> bool:
        """True unless a one-way delay comes out clearly below that direction's envelope (the path's minimum).

        Against each envelope, not only "no delay below zero": over a 60-80 ms path a responder stepped by 70 ms
        leaves every delay positive, so a zero test would let it pull the fit halfway, for the whole window.
        A path that got faster (re-routed) fails it too, and starting over is right then as well. Against the
        fit, not the served (slewed) estimate: a responder that slews gently lags its own fit on purpose, and
        samples that agree with the fit must not count as a clock step."""
        slack = self._uncertainty(t4) + self.causality_slack_ns
        floor = self._width / 2
        return f - self._fit(t1) - floor >= -slack and g + self._fit(t4) - floor >= -slack

    def _insert(self, mid: int, t1: int, f: int, t4: int, g: int, delay: int) -> None:
        buckets = self._buckets
        if self._first_mid is None:
            self._first_mid = mid
        # buckets grow with the time since (re)start, so a young estimate still sees its drift: 1/32 of the
        # span, between 1/64 and 1 of `bucket_ns`
        size = min(max((mid - self._first_mid) // 32, self.bucket_ns // 64), self.bucket_ns)
        if buckets and mid - buckets[-1].start < size:
            b = buckets[-1]
            if f < b.f:
                b.tf, b.f = t1, f
            if g < b.g:
                b.tg, b.g = t4, g
            b.delay = min(b.delay, delay)
        else:
            buckets.append(_Bucket(mid, t1, f, t4, g, delay))
        horizon = mid - self.window_ns
        while buckets[0].start < horizon:
            buckets.popleft()

    # ---------------------------------------------------------------- the fit

    def _refit(self, now: int) -> None:
        buckets = self._buckets
        fs = [(b_.tf - now, b_.f) for b_ in buckets]
        gs = [(b_.tg - now, b_.g) for b_ in buckets]
        # One drift for both directions (the clocks' rate is what both envelopes share): the slope whose two
        # envelopes sit closest to all the points, instead of two separate slopes averaged. Over a long, jittery
        # path each envelope alone wanders by tens of ppm for minutes; together they pin each other.
        b_hat = _joint_slope(fs, gs)
        b_hat = min(max(b_hat, -self.max_drift), self.max_drift)
        gap_f = _floor_gap([y - b_hat * x for x, y in fs])
        gap_g = _floor_gap([y + b_hat * x for x, y in gs])
        # How well the drift is known: both ends of the window may sit one floor gap off the floor. A doubtful
        # drift (a young estimate, few points) is shrunk toward zero, not extrapolated; a known one is not biased.
        span = max(max(x for x, _ in fs) - min(x for x, _ in fs), max(x for x, _ in gs) - min(x for x, _ in gs))
        sigma_b = (gap_f + gap_g) / max(span, 1) + 0.1e-6
        self._sigma_data = min(sigma_b, self.max_drift)
        hint = self._hint
        if hint is not None:
            miss = abs(b_hat - hint[0])
            if span < self.hint_reject_span_ns:
                self._hint_doubts = 0
            elif miss > max(self.hint_reject_sigmas * math.hypot(sigma_b, hint[1]), self.hint_reject):
                self._hint_doubts += 1
            else:
                self._hint_doubts = 0
            if self._hint_doubts >= self.hint_reject_after:
                # the remembered rate is not this clock's (another box's file, a clock now disciplined by chrony)
                self._hint = hint = None
                self.hint_rejected = True
        if hint is not None:
            # the samples' drift and the remembered one, each weighted by how well it is known
            wd, wh = 1 / (sigma_b * sigma_b), 1 / (hint[1] * hint[1])
            b = (b_hat * wd + hint[0] * wh) / (wd + wh)
            sigma_b = 1 / math.sqrt(wd + wh)
        else:
            prior = self.drift_prior
            b = b_hat * prior * prior / (prior * prior + sigma_b * sigma_b)
        b = min(max(b, -self.max_drift), self.max_drift)
        # both envelopes re-drawn with the shared slope, touching their lowest point along that slope
        xf, yf = min(((b_.tf, b_.f) for b_ in buckets), key=lambda p: p[1] - b * (p[0] - now))
        xg, yg = min(((b_.tg, b_.g) for b_ in buckets), key=lambda p: p[1] + b * (p[0] - now))
        lf = yf + b * (now - xf)
        lg = yg - b * (now - xg)
        lever = max(abs(now - xf), abs(now - xg))
        floor = (gap_f + gap_g) / 2
        old_served = self._served(now) if self._locked else None
        self._ref = now
        self._a = (lf - lg) / 2
        self._b = b
        self._sigma_b = min(sigma_b, self.max_drift)
        self._lever = lever
        self._width = max(lf + lg, 0.0)
        self._floor = floor
        self._span = now - min(buckets[0].tf, buckets[0].tg)
        self._min_delay = min(b.delay for b in buckets)
        if old_served is None:
            self._g0 = 0.0
            if self._count >= self.min_samples:
                young = self._first_mid is not None and now - self._first_mid < self.lock_wait_ns
                self._locked = not young or self._uncertainty(now) <= self.lock_precision_ns
            return
        gap = old_served - self._fit(now)
        if abs(gap) > self.step_threshold_ns:
            self.steps += 1
            gap = 0.0
        self._g0 = gap
        self._g_t0 = now
        young = self._first_mid is not None and now - self._first_mid < self.young_ns
        slew_time = self.young_slew_time_ns if young else self.slew_time_ns
        self._g_dur = max(slew_time, math.ceil(abs(gap) / self.max_slew))

    def _fit(self, t: int) -> float:
        return self._a + self._b * (t - self._ref)

    def _served(self, t: int) -> float:
        g = self._g0
        if g:
            dt = t - self._g_t0
            if dt > 0:
                g *= max(0.0, 1.0 - dt / self._g_dur)
        return self._fit(t) + g

    def _uncertainty(self, t: int) -> float:
        """Everything but the path asymmetry: slew still to come, the envelopes' floors not yet reached, and the
        drift's uncertainty times how far the estimate is carried from the envelopes' contact points (plus
        oscillator wander since the fit)."""
        g = abs(self._served(t) - self._fit(t))
        away = abs(t - self._ref)
        return g + self._floor + self._sigma_b * (self._lever + away) + self.wander * away

    # ---------------------------------------------------------------- output

    def set_correction(self, responder_ns: int, correction_ns: int) -> None:
        """The responder's correction at `responder_ns` on its free-running clock (what its served clock read
        minus that), given with every sample of that free-running clock. `to_broadcast` adds it, following it
        between exchanges at the rate it last changed; a change faster than any slew (the responder stepped) is
        taken as it comes, not extrapolated."""
        prev = self._corr
        if prev is not None and responder_ns > prev[0]:
            rate = (correction_ns - prev[1]) / (responder_ns - prev[0])
            self._corr_rate = rate if abs(rate) <= self.max_correction_rate else 0.0
        self._corr = (responder_ns, correction_ns)

    def clear_correction(self) -> None:
        """The samples are of the responder's served clock again (a responder that gives no correction)."""
        self._corr = None
        self._corr_rate = 0.0

    @property
    def corrected(self) -> bool:
        """True while the samples are of the responder's free-running clock and its correction is added."""
        return self._corr is not None

    def _correct(self, responder_ns: int) -> int:
        corr = self._corr
        if corr is None:
            return responder_ns
        at, c = corr
        return responder_ns + c + round(self._corr_rate * (responder_ns - at))

    def to_broadcast(self, local_ns: int) -> int:
        """The broadcast-clock time at local time `local_ns`."""
        return self._correct(local_ns + round(self._served(local_ns)))

    def to_local(self, broadcast_ns: int) -> int:
        """The local time at which the broadcast clock reads `broadcast_ns` (inverse of `to_broadcast`)."""
        guess = self._last_mid or broadcast_ns
        local = broadcast_ns - (self.to_broadcast(guess) - guess)
        for _ in range(3):  # the offset changes by < 1e-3 per ns of local time: this converges at once
            local = broadcast_ns - (self.to_broadcast(local) - local)
        return local

    @property
    def synced(self) -> bool:
        """True once enough samples back the estimate (and again after a reset, once re-acquired)."""
        return self._locked

    @property
    def offset_ns(self) -> int:
        """Broadcast minus local, at the last sample."""
        return self.to_broadcast(self._last_mid) - self._last_mid if self._last_mid is not None else 0

    @property
    def drift_ppm(self) -> float:
        """How fast the local clock runs against the broadcast clock (positive: local is fast)."""
        return -self._b / (1.0 + self._b) * 1e6

    def error_bound_at(self, local_ns: int) -> int:
        """Honest bound on |to_broadcast(local_ns) - truth|.

        Causality puts the offset between the two envelopes, so half their gap (the minimum round trip) bounds
        the path asymmetry nobody can observe; add the part of a correction not yet slewed in, and some
        oscillator wander (`wander_ppm`) away from the fit's reference (the last sample).
        """
        if self._last_mid is None:
            return 2**62
        return math.ceil(self._width / 2 + self._uncertainty(local_ns))

    @property
    def error_bound_ns(self) -> int:
        """`error_bound_at` the last sample."""
        return self.error_bound_at(self._last_mid) if self._last_mid is not None else 2**62

    def precision_at(self, local_ns: int) -> int:
        """Estimated |to_broadcast(local_ns) - truth| *beyond* the path's constant asymmetry: what the site's own
        exchanges can tell. Slew still to come, drift carried from the contact points, and how far the
        envelopes may still sit above the path's true minimum delays (the gap from each envelope's lowest point
        to the next lowest: where samples crowd the floor it is tiny, where few have come it is large).

        The asymmetry (half the difference of the two minimum one-way delays) is invisible to any exchange; it
        is the same for every exchange on a path, so it shifts the estimate by a constant and
        `asymmetry_bound_ns` bounds it. `error_bound_at` is the sum of the two."""
        if self._last_mid is None:
            return 2**62
        return math.ceil(self._uncertainty(local_ns))

    @property
    def precision_ns(self) -> int:
        """`precision_at` the last sample."""
        return self.precision_at(self._last_mid) if self._last_mid is not None else 2**62

    @property
    def asymmetry_bound_ns(self) -> int:
        """Half the minimum round trip in the window: the most the path's unobservable asymmetry can shift the
        estimate (≈ 60 ms for a site straight on a hub 60-80 ms away; µs on a city LAN)."""
        return math.ceil(self._width / 2) if self._last_mid is not None else 2**62

    @property
    def min_delay_ns(self) -> int:
        """Lowest round trip (server hold time excluded) in the window."""
        return self._min_delay

    @property
    def sample_count(self) -> int:
        """Samples accepted since the start (or the last reset)."""
        return self._count

    @property
    def kept_count(self) -> int:
        """Buckets currently held in the window."""
        return len(self._buckets)

    @property
    def span_ns(self) -> int:
        """Local time the samples in the window span (0 before the first)."""
        return self._span

    @property
    def drift_sigma_ppm(self) -> float:
        """How well the samples alone (not a remembered drift) know `drift_ppm`: one sigma, in ppm."""
        return self._sigma_data * 1e6

    def seed_drift(self, drift_ppm: float, sigma_ppm: float) -> bool:
        """Start from a drift remembered from before a restart (`drift_ppm` and its sigma as this estimator
        reported them then), so that only the offset has to be learnt. False (and ignored) if it is no drift a
        crystal can have; a plausible but wrong one is dropped as soon as the samples contradict it."""
        if not (math.isfinite(drift_ppm) and math.isfinite(sigma_ppm)) or sigma_ppm < 0:
            return False
        d = drift_ppm * 1e-6
        if abs(d) > self.max_drift:
            return False
        self._hint = (-d / (1.0 + d), max(sigma_ppm * 1e-6, self.hint_floor))
        self._hint_doubts = 0
        self.hint_rejected = False
        return True

    @property
    def drift_seeded(self) -> bool:
        """True while a remembered drift takes part in the fit."""
        return self._hint is not None

    def next_interval_ns(self) -> int:
        """How long to wait before the next exchange: a burst right after a (re)start, short while acquiring or
        re-acquiring, shorter than slow while the estimate is still imprecise (a long, jittery path), then slow."""
        if self._count < self.burst_samples:
            return self.burst_interval_ns
        if not self._locked or self._last_mid is None:
            return self.fast_interval_ns
        if self._fast_until is not None and self._last_mid < self._fast_until:
            return self.fast_interval_ns
        first = self._first_mid if self._first_mid is not None else self._last_mid
        if self._last_mid - first < self.refine_period_ns and self.precision_ns > self.refine_until_ns:
            return self.refine_interval_ns
        return self.slow_interval_ns


class StepGuard:
    """The site's own monotonic idea of broadcast time, which a clock estimate may not jump away from (sans-IO).

    Whoever answers a site's time requests (a compromised city responder, anyone on the path of a plaintext
    link) can make the estimator restart and re-lock on any offset. Frames are judged fresh against that
    estimate, so a step of −3600 s would let a genuine, signed recording of an hour ago play again. The guard
    holds an anchor ``(monotonic, broadcast)`` taken at the first synced reading; the monotonic clock (raw
    oscillator, no NTP slewing) cannot be stepped from the network, so ``anchor + elapsed`` is the site's own
    idea of now, true to the oscillator's rate error (``drift_ppm``: 200 ppm is twice a cheap crystal's worst).

    `check(mono, estimate)` is called with every reading of the estimate:

    The own idea runs at the oscillator's rate against the broadcast clock as learnt between re-bases (clamped
    to ``drift_ppm``), so a site refusing for an hour stays within milliseconds of the truth.

    - within ``follow_ns + drift·elapsed`` of the own idea: followed (a local realtime clock step shows up as an
      estimator reset whose re-lock lands within a few ms of the old broadcast time, so it is never a step
      here). The anchor is re-based on the estimate at most every ``rebase_ns``, so the estimate cannot walk
      the guard by more than ``follow_ns + drift·rebase`` per ``rebase_ns`` (≈ 370 ppm with the defaults);
    - a step up to ``max_step_ns`` (1 s: more than any honest correction of a synced city, whose sites agree to
      milliseconds, and far less than the seconds a replay needs to be worth anything): taken while a budget
      lasts, which holds ``max_step_ns`` and refills at ``max_step_ns`` per ``step_interval_ns`` (1 h): a WAN
      site's few honest corrections of tens of ms pass, small steps cannot be chained into a big one;
    - anything else is refused: the reading is replaced by the own idea (the site keeps playing on its
      flywheel), counted, and its size reported (`refused_step_ns`) until the estimate comes back;
    - unless the evidence is overwhelming: the estimate has held the *same* refused offset against the
      monotonic clock (within ``follow_ns + drift·elapsed``) without interruption for ``confirm_ns`` (1 h).
      A responder that lies consistently for an hour wins; an operator sees the refusal alert long before,
      and a restarted site (never synced) takes any offset.
    """

    def __init__(
        self,
        *,
        max_step_ns: int = _S,
        follow_ns: int = 50 * _MS,
        drift_ppm: float = 200.0,
        rebase_ns: int = 300 * _S,
        step_interval_ns: int = 3600 * _S,
        confirm_ns: int = 3600 * _S,
        report_after_ns: int = 10 * _S,
    ) -> None:
        self.max_step_ns = max_step_ns
        self.follow_ns = follow_ns
        self.drift = drift_ppm * 1e-6
        self.rebase_ns = rebase_ns
        self.step_interval_ns = step_interval_ns
        self.confirm_ns = confirm_ns
        self.report_after_ns = report_after_ns
        self._episode: int | None = None  # monotonic time the current refusal began
        self._anchor: tuple[int, int] | None = None  # (monotonic, broadcast)
        self._rate = 0.0  # broadcast seconds per monotonic second, minus 1, learnt between re-bases
        self._budget = float(max_step_ns)  # of steps still allowed (ns), as of `_budget_at`
        self._budget_at: int | None = None
        self._candidate: tuple[int, int] | None = None  # (monotonic since, broadcast - monotonic) being refused
        self.refused = 0  # readings refused
        self.refused_steps = 0  # refusal episodes (a step refused, until the estimate agrees again)
        self.taken_steps = 0  # steps up to max_step_ns taken
        self.adopted_steps = 0  # big steps adopted on overwhelming evidence
        self.refused_step_ns = 0  # estimate minus own idea while refusing; 0 when the estimate agrees

    @property
    def anchored(self) -> bool:
        return self._anchor is not None

    @property
    def refusing(self) -> bool:
        return self._candidate is not None

    def now(self, mono_ns: int) -> int | None:
        """The broadcast time by the monotonic clock alone; None before the first synced reading."""
        if self._anchor is None:
            return None
        m0, b0 = self._anchor
        return b0 + (mono_ns - m0) + round(self._rate * (mono_ns - m0))

    def tolerance(self, mono_ns: int) -> int:
        """How far the true broadcast time may be from `now(mono_ns)` by the guard's own reckoning."""
        m0 = self._anchor[0] if self._anchor is not None else mono_ns
        return self.follow_ns + math.ceil(self.drift * abs(mono_ns - m0))

    def check(self, mono_ns: int, broadcast_ns: int) -> bool:
        """True if the estimate `broadcast_ns` read at `mono_ns` may be used; False: use `now(mono_ns)`."""
        if self._anchor is None:
            self._anchor = (mono_ns, broadcast_ns)  # never synced: any offset will do
            return True
        m0, b0 = self._anchor
        own = broadcast_ns - (self.now(mono_ns) or 0)  # estimate minus own idea
        if abs(own) <= self.tolerance(mono_ns):
            if mono_ns - m0 >= self.rebase_ns:
                # the oscillator's rate against the broadcast clock, so a refused estimate is flown through on
                # the rate the site had (never beyond the bound the tolerance allows for)
                rate = (broadcast_ns - b0) / (mono_ns - m0) - 1.0
                self._rate = min(max(rate, -self.drift), self.drift)
                self._anchor = (mono_ns, broadcast_ns)
            self._agree()
            return True
        budget = self._budget_now(mono_ns)
        if abs(own) <= min(self.max_step_ns, budget):
            self.taken_steps += 1
            self._budget, self._budget_at = budget - abs(own), mono_ns
            self._take(mono_ns, broadcast_ns)
            return True
        offset = broadcast_ns - mono_ns
        cand = self._candidate
        if cand is None:
            self.refused_steps += 1
            self._episode = mono_ns
        if cand is None or abs(offset - cand[1]) > self.follow_ns + self.drift * (mono_ns - cand[0]):
            self._candidate = cand = (mono_ns, offset)
        elif mono_ns - cand[0] >= self.confirm_ns:
            self.adopted_steps += 1
            self._take(mono_ns, broadcast_ns)
            return True
        self.refused += 1
        self.refused_step_ns = own
        return False

    def _budget_now(self, mono_ns: int) -> float:
        if self._budget_at is None:
            return self._budget
        refill = self.max_step_ns * (mono_ns - self._budget_at) / self.step_interval_ns
        return min(float(self.max_step_ns), self._budget + refill)

    def _take(self, mono_ns: int, broadcast_ns: int) -> None:
        self._anchor = (mono_ns, broadcast_ns)
        self._agree()

    def reported_step_ns(self, mono_ns: int) -> int | None:
        """The refused step to report, once the refusal has lasted `report_after_ns`.

        A site whose own realtime clock is set (chrony at boot) reads its stale estimate a few seconds until
        the estimator resets: the guard refuses those readings too, but that is no attack worth an alert."""
        if self._episode is None or mono_ns - self._episode < self.report_after_ns:
            return None
        return self.refused_step_ns

    def _agree(self) -> None:
        self._candidate = None
        self._episode = None
        self.refused_step_ns = 0
