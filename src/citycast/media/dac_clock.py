"""The DAC clock: a noisy device report of when a sample plays, filtered into a straight line.

A sound device says, now and then, "sample n reaches the DAC at local time t" (PortAudio's outputBufferDacTime,
PulseAudio's stream latency). Those reports jitter by up to a millisecond (thread wake-ups, the ALSA pulse
plugin's coarse timing), but the DAC itself runs at a steady rate: t = a + n * p, with p within a few hundred
ppm of 1/48 kHz. Chasing each report makes the playout loop twitch; `DacClock` fits the line by least squares
over a sliding window (running sums, O(1) a report) and answers from the line, so the engine sees the DAC's
smooth clock while the line still follows a real rate offset.

Two kinds of bad report are told apart: a lone report far off the line (a late wake-up) is left out of the fit;
a run of reports off the line on the same side is the device's mapping having moved (an underrun, a restarted
stream) and the fit starts again from that run. Sans-IO: reports carry their time, nothing is read here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

NOMINAL_NS_PER_SAMPLE = 1e9 / 48_000


@dataclass
class DacClockStats:
    reports: int = 0
    outliers: int = 0  # reports left out of the fit (far off the line, alone)
    steps: int = 0  # times the fit started again because the device's mapping moved


class DacClock:
    """Least-squares line through (samples written, reported DAC ns) over the last `window_s` of reports.

    `report(n, dac_ns)` feeds one report (n: index of the sample whose DAC time is reported, counted from the
    stream's start) and returns the filtered DAC time of that same sample. `at(n)` answers for any sample.
    Until `min_points` reports the line is not trusted for its slope: the nominal rate is used through the
    mean point. A report further than `outlier_ns` (or six times the typical residual, if larger) from the line
    is an outlier (never wider than four times `outlier_ns`); `step_run` reports in a row off the line by more
    than half that, on one side, are a step.
    """

    def __init__(
        self,
        *,
        window_s: float = 30.0,
        sample_rate: int = 48_000,
        min_points: int = 8,
        outlier_ns: float = 2_000_000.0,
        step_run: int = 8,
        max_ppm: float = 1000.0,
        smoothing: int = 100,
    ) -> None:
        if window_s <= 0 or sample_rate <= 0 or min_points < 2 or step_run < 2 or smoothing < 1:
            raise ValueError("DacClock needs a positive window and rate, min_points and step_run >= 2, smoothing >= 1")
        self._gain = 1.0 / smoothing
        self._window = round(window_s * sample_rate)  # in samples
        self._nominal = 1e9 / sample_rate
        self._min_points = min_points
        self._outlier = outlier_ns
        self._step_run = step_run
        self._max_dev = max_ppm * 1e-6
        self._points: deque[tuple[float, float]] = deque()
        self._run: list[tuple[int, int]] = []  # consecutive outliers on one side
        self._run_sign = 0
        self._resid = 0.0  # running mean of |residual| of accepted reports
        self.stats = DacClockStats()
        self._reset(None)

    def _reset(self, origin: tuple[int, int] | None) -> None:
        self._points.clear()
        # Sums are of coordinates relative to an origin near the data, so float64 keeps sub-ns detail.
        self._n0, self._t0 = origin if origin is not None else (0, 0)
        self._sx = self._sy = self._sxx = self._sxy = 0.0
        self._a = 0.0
        self._p = self._nominal
        self._fitted = False
        self._out: tuple[int, float] | None = None  # (sample, DAC ns relative to t0) of the last answer

    def _add(self, n: int, t: int) -> None:
        x, y = float(n - self._n0), float(t - self._t0)
        self._points.append((x, y))
        self._sx += x
        self._sy += y
        self._sxx += x * x
        self._sxy += x * y
        while self._points and x - self._points[0][0] > self._window:
            ox, oy = self._points.popleft()
            self._sx -= ox
            self._sy -= oy
            self._sxx -= ox * ox
            self._sxy -= ox * oy
        if self._points[0][0] > 8 * self._window:
            self._rebase()
        self._fit()

    def _rebase(self) -> None:
        """Move the origin to the window's first point and recompute the sums: over hours, sums of ever larger
        coordinates would lose the detail the fit needs."""
        dx, dy = self._points[0]
        shifted = [(x - dx, y - dy) for x, y in self._points]
        self._n0 += round(dx)
        self._t0 += round(dy)
        # dx and dy are whole numbers (differences of ints), so nothing is lost in the shift.
        self._points = deque(shifted)
        self._sx = sum(x for x, _ in shifted)
        self._sy = sum(y for _, y in shifted)
        self._sxx = sum(x * x for x, _ in shifted)
        self._sxy = sum(x * y for x, y in shifted)
        if self._out is not None:
            self._out = (self._out[0], self._out[1] - dy)

    def _fit(self) -> None:
        k = len(self._points)
        mx, my = self._sx / k, self._sy / k
        p = self._nominal
        if k >= self._min_points:
            var = self._sxx / k - mx * mx
            if var > 0:
                slope = (self._sxy / k - mx * my) / var
                # A slope outside what any DAC does means the window holds a jump: keep the nominal rate.
                if abs(slope / self._nominal - 1) <= self._max_dev:
                    p = slope
        self._p = p
        self._a = my - p * mx
        self._fitted = True

    def _line(self, n: int) -> float:
        return self._a + self._p * (n - self._n0)

    def at(self, n: int) -> int:
        """Filtered DAC time (local ns) of sample `n`; only meaningful after a report."""
        if self._out is None:
            return self._t0 + round(self._line(n))
        n_out, t_out = self._out
        return self._t0 + round(t_out + self._p * (n - n_out))

    def _answer(self, n: int) -> int:
        # The fit's end wanders by a few µs a report as points come and go; the answer follows it through a
        # first-order low-pass (`smoothing` reports), on the fitted rate, so that wander is not passed on.
        fit = self._line(n)
        if self._out is None:
            self._out = (n, fit)
        else:
            n_out, t_out = self._out
            ahead = t_out + self._p * (n - n_out)
            self._out = (n, ahead + (fit - ahead) * self._gain)
        return self.at(n)

    @property
    def ns_per_sample(self) -> float:
        return self._p

    @property
    def rate_ppm(self) -> float:
        """How fast the DAC runs against the local clock: positive plays samples faster than nominal."""
        return (self._nominal / self._p - 1) * 1e6

    def report(self, n: int, dac_ns: int) -> int:
        self.stats.reports += 1
        if not self._fitted:
            self._reset((n, dac_ns))
            self._add(n, dac_ns)
            return self._answer(n)
        r = dac_ns - self.at(n)
        # Wider where the device is noisier, but never so wide that a run of bad reports (a device recovering from
        # an underrun) is taken into the line instead of being seen as a step.
        limit = min(max(self._outlier, 6.0 * self._resid), 4.0 * self._outlier)
        # A run of reports off the line by more than half the limit, all on one side, is a step even when each is
        # within the limit: a step the size of the jitter would otherwise only creep into the line over a window.
        sign = 0 if abs(r) <= limit / 2 else 1 if r > 0 else -1
        if sign != self._run_sign:
            self._run.clear()
            self._run_sign = sign
        if sign:
            self._run.append((n, dac_ns))
        if len(self._run) >= self._step_run:
            # The device's sample-to-time mapping moved: start over from the reports that show where it is now.
            self.stats.steps += 1
            run = self._run
            self._run = []
            self._run_sign = 0
            self._reset(run[0])
            for rn, rt in run:
                self._add(rn, rt)
            return self._answer(n)
        if abs(r) > limit:
            self.stats.outliers += 1
            return self.at(n)
        self._add(n, dac_ns)
        self._resid += (abs(r) - self._resid) * 0.02
        return self._answer(n)
