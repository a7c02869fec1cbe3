"""Offset and drift of the local clock against the broadcast clock, from NTP-style exchanges (sans-IO).

`ClockEstimator` is fed timestamp quadruples and never reads a clock or sleeps, so hours of simulated time
replay in milliseconds and the same object runs under the asyncio shell in `citycast.clock.service`.

Model. ``offset(t) = broadcast - local`` at local time ``t``. Each exchange gives one noisy reading of it at the
local midpoint of the exchange; its error is half the difference between the two path delays, so it is small
only when the round trip is short. The estimator therefore:

1. keeps, per 1 s bucket of local time, the lowest-delay sample, over a sliding window (16 min by default);
2. takes the ``K`` points of lowest delay in the window and weights them with a biweight of their excess delay
   over the window's minimum (samples with long round trips get zero weight, spikes are ignored);
3. fits ``offset(t) = a + b·(t - ref)`` by weighted least squares, with a weak prior pulling ``b`` to 0 so a
   short span gives an offset-only estimate and the drift appears as the span grows;
4. serves a continuous estimate: after the first lock, changes of the fit are slewed in linearly over at
   least ``slew_time_ns`` and at most ``max_slew_ppm`` (consumers resample to follow it), never stepped,
   unless the change exceeds ``step_threshold_ns`` (a broken estimate is better stepped than slewed for
   minutes);
5. checks each new sample against the current estimate: three inconsistent samples in a row (the local clock
   or the server was stepped) reset the estimator, which re-acquires quickly. A long silence (a rejoin)
   switches back to fast exchanges for a few seconds.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

_MS = 1_000_000
_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ClockSample:
    """One exchange reduced to what the fit needs."""

    mid_ns: int  # local midpoint (t1 + t4) / 2
    offset_ns: float  # broadcast - local at mid_ns, as measured
    delay_ns: int  # round trip minus server hold time


class ClockEstimator:
    """Estimates the broadcast clock from a local clock and NTP-style samples. Pure: never reads a clock."""

    def __init__(
        self,
        *,
        window_ns: int = 16 * 60 * _S,
        bucket_ns: int = _S,
        best_k: int = 24,
        min_samples: int = 8,
        fast_interval_ns: int = 100 * _MS,
        slow_interval_ns: int = _S,
        fast_period_ns: int = 5 * _S,
        rejoin_gap_ns: int = 60 * _S,
        slew_time_ns: int = 20 * _S,
        max_slew_ppm: float = 500.0,
        step_threshold_ns: int = 50 * _MS,
        max_drift_ppm: float = 1000.0,
        drift_prior_ppm: float = 200.0,
        wander_ppm: float = 1.0,
    ) -> None:
        self.window_ns = window_ns
        self.bucket_ns = bucket_ns
        self.best_k = best_k
        self.min_samples = min_samples
        self.fast_interval_ns = fast_interval_ns
        self.slow_interval_ns = slow_interval_ns
        self.fast_period_ns = fast_period_ns
        self.rejoin_gap_ns = rejoin_gap_ns
        self.slew_time_ns = slew_time_ns
        self.max_slew = max_slew_ppm * 1e-6
        self.step_threshold_ns = step_threshold_ns
        self.max_drift = max_drift_ppm * 1e-6
        self.drift_prior = drift_prior_ppm * 1e-6
        self.wander = wander_ppm * 1e-6
        self.rejected = 0  # samples refused as malformed or inconsistent
        self.resets = 0  # times the estimator started over (local or server clock stepped)
        self.steps = 0  # times the served estimate was stepped instead of slewed after the first lock
        self._reset()

    def _reset(self) -> None:
        self._points: deque[ClockSample] = deque()
        self._count = 0
        self._locked = False
        self._inconsistent = 0
        self._fast_until: int | None = None
        self._last_mid: int | None = None
        # the fit: offset(t) = a + b (t - ref), with its quality
        self._ref = 0
        self._a = 0.0
        self._b = 0.0
        self._se_a = 0.0
        self._se_b = 0.0
        self._resid = 0.0
        self._min_delay = 0
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
        offset = ((t2 - t1) + (t3 - t4)) / 2
        mid = (t1 + t4) // 2
        last = self._last_mid
        if last is not None and mid < last - self.bucket_ns:
            # the local clock went backwards: nothing we hold is comparable any more
            self._restart()
            last = None
        if self._locked and not self._consistent(mid, offset, delay):
            self._inconsistent += 1
            if self._inconsistent < 3:
                self.rejected += 1
                return
            self._restart()
            last = None
        self._inconsistent = 0
        if last is None or mid - last > self.rejoin_gap_ns:
            self._fast_until = mid + self.fast_period_ns
        self._last_mid = mid if last is None else max(last, mid)
        self._count += 1
        self._insert(ClockSample(mid, offset, delay))
        self._refit(t4)

    def _restart(self) -> None:
        self.resets += 1
        self._reset()

    def _consistent(self, mid: int, offset: float, delay: int) -> bool:
        """True if the sample's interval [offset ± delay/2] can hold the offset we predict (NTP intersection)."""
        predicted = self._served(mid)
        slack = self.error_bound_at(mid) + delay / 2 + 0.5 * _MS
        return abs(offset - predicted) <= slack

    def _insert(self, s: ClockSample) -> None:
        pts = self._points
        if pts and pts[-1].mid_ns // self.bucket_ns == s.mid_ns // self.bucket_ns:
            if s.delay_ns < pts[-1].delay_ns:
                pts[-1] = s
        else:
            pts.append(s)
        horizon = s.mid_ns - self.window_ns
        while pts and pts[0].mid_ns < horizon:
            pts.popleft()

    # ---------------------------------------------------------------- the fit

    def _refit(self, now: int) -> None:
        pts = self._points
        d0 = min(p.delay_ns for p in pts)
        k = min(self.best_k, len(pts))
        best = heapq.nsmallest(k, pts, key=lambda p: p.delay_ns)
        # excess-delay scale: the K-th lowest excess (at least a few µs, so equal delays still count)
        scale = max(best[-1].delay_ns - d0, 2_000)
        cutoff = 1.5 * scale
        ws: list[float] = []
        for p in best:
            u = (p.delay_ns - d0) / cutoff
            ws.append((1.0 - u * u) ** 2 if u < 1.0 else 0.0)
        sw = sum(ws)
        ref = best[0].mid_ns + round(sum(w * (p.mid_ns - best[0].mid_ns) for w, p in zip(ws, best, strict=True)) / sw)
        xs = [float(p.mid_ns - ref) for p in best]
        ybar = sum(w * p.offset_ns for w, p in zip(ws, best, strict=True)) / sw
        sxx = sum(w * x * x for w, x in zip(ws, xs, strict=True))
        sxy = sum(w * x * (p.offset_ns - ybar) for w, x, p in zip(ws, xs, best, strict=True))
        # noise of one point is of the order of half its excess delay; the prior keeps a short span flat
        sigma = max(scale / 2, 1_000.0)
        prior = (sigma / self.drift_prior) ** 2
        b = sxy / (sxx + prior)
        b = min(max(b, -self.max_drift), self.max_drift)
        a = ybar
        rss = sum(w * (p.offset_ns - a - b * x) ** 2 for w, x, p in zip(ws, xs, best, strict=True))
        n_eff = sw * sw / sum(w * w for w in ws if w > 0)
        resid = math.sqrt(rss / sw) if n_eff > 2 else sigma
        noise = max(resid, sigma / 2)
        se_a = noise / math.sqrt(n_eff)
        se_b = noise / math.sqrt(sxx + prior)

        old_served = self._served(now) if self._locked else None
        self._ref, self._a, self._b = ref, a, b
        self._se_a, self._se_b, self._resid = se_a, se_b, resid
        self._min_delay = d0
        if old_served is None:
            if self._count >= self.min_samples:
                self._locked = True
            self._g0 = 0.0
            return
        gap = old_served - self._fit(now)
        if abs(gap) > self.step_threshold_ns:
            self.steps += 1
            gap = 0.0
        self._g0 = gap
        self._g_t0 = now
        self._g_dur = max(self.slew_time_ns, math.ceil(abs(gap) / self.max_slew))

    def _fit(self, t: int) -> float:
        return self._a + self._b * (t - self._ref)

    def _served(self, t: int) -> float:
        g = self._g0
        if g:
            dt = t - self._g_t0
            if dt > 0:
                g *= max(0.0, 1.0 - dt / self._g_dur)
        return self._fit(t) + g

    # ---------------------------------------------------------------- output

    def to_broadcast(self, local_ns: int) -> int:
        """The broadcast-clock time at local time `local_ns`."""
        return local_ns + round(self._served(local_ns))

    def to_local(self, broadcast_ns: int) -> int:
        """The local time at which the broadcast clock reads `broadcast_ns` (inverse of `to_broadcast`)."""
        local = broadcast_ns - round(self._served(self._last_mid or broadcast_ns))
        for _ in range(3):  # the offset changes by < 1e-3 per ns of local time: this converges at once
            local = broadcast_ns - round(self._served(local))
        return local

    @property
    def synced(self) -> bool:
        """True once enough samples back the estimate (and again after a reset, once re-acquired)."""
        return self._locked

    @property
    def offset_ns(self) -> int:
        """Broadcast minus local, at the last sample."""
        return round(self._served(self._last_mid)) if self._last_mid is not None else 0

    @property
    def drift_ppm(self) -> float:
        """How fast the local clock runs against the broadcast clock (positive: local is fast)."""
        return -self._b / (1.0 + self._b) * 1e6

    def error_bound_at(self, local_ns: int) -> int:
        """Honest bound on |to_broadcast(local_ns) - truth|.

        Half the minimum round trip (the path asymmetry nobody can observe), the fit's own uncertainty, the part
        of a correction not yet slewed in, and the drift uncertainty (plus some oscillator wander) since the
        fit's reference point.
        """
        if self._last_mid is None:
            return 2**62
        fit_dt = abs(local_ns - self._ref)
        since = max(0, local_ns - self._last_mid)
        g = abs(self._served(local_ns) - self._fit(local_ns))
        bound = self._min_delay / 2 + 2 * self._resid + 3 * self._se_a + 3 * self._se_b * fit_dt + g
        return math.ceil(bound + self.wander * since)

    @property
    def error_bound_ns(self) -> int:
        """`error_bound_at` the last sample."""
        return self.error_bound_at(self._last_mid) if self._last_mid is not None else 2**62

    @property
    def min_delay_ns(self) -> int:
        """Lowest round trip (server hold time excluded) among the samples in the window."""
        return self._min_delay

    @property
    def sample_count(self) -> int:
        """Samples accepted since the start (or the last reset)."""
        return self._count

    @property
    def kept_count(self) -> int:
        """Points (lowest-delay sample per bucket) currently held in the window."""
        return len(self._points)

    def next_interval_ns(self) -> int:
        """How long to wait before the next exchange: short while acquiring or re-acquiring, then slow."""
        if not self._locked or self._last_mid is None:
            return self.fast_interval_ns
        if self._fast_until is not None and self._last_mid < self._fast_until:
            return self.fast_interval_ns
        return self.slow_interval_ns
