"""A site following a city responder whose served clock bends (each of its corrections slewed in over a minute):
with the responder's correction the site fits the responder's free-running clock, a straight line, and adds the
correction; without it, it fits a line to a curve. Simulated time, no real clock."""

from __future__ import annotations

import random

from citycast.clock.estimator import ClockEstimator

S = 1_000_000_000
T0 = 1_700_000_000_000_000_000
# The responder's served clock bends as a young city responder's does: its corrections slewed in at +20, 0, -15
# and +10 ppm for a minute or so each (docs/benchmarks.md "One clock per city").
SEGMENTS = ((0, 60, 20.0), (60, 120, 0.0), (120, 200, -15.0), (260, 330, 10.0))


def _bend(true_ns: float) -> float:
    x = (true_ns - T0) / S
    return sum((min(x, b) - a) * ppm * 1e3 for a, b, ppm in SEGMENTS if x > a)


def _follow(estimator: ClockEstimator, *, corrected: bool, seconds: int = 600) -> float:
    """Worst |site's broadcast time - responder's served time| (µs) after the first 10 s, over a LAN (30-300 µs
    each way). The responder's free-running clock is 4 ms and +35 ppm off true time; what it serves is true time
    plus the bend (the broadcast clock as it knows it); the site's clock is 1.3 s and -60 ppm off."""
    rng = random.Random(3)

    def raw(true: float) -> float:  # the responder's free-running clock
        return true + 4_000_000 + 35e-6 * (true - T0)

    def served(true: float) -> float:
        return true + _bend(true)

    def site(true: float) -> float:
        return true + 1_300_000_000 - 60e-6 * (true - T0)

    true = float(T0)
    tick = T0 + S // 2
    worst = 0.0
    while true < T0 + seconds * S:
        nxt = true + estimator.next_interval_ns()
        if nxt <= tick:
            true = nxt
            up, down = rng.uniform(30_000, 300_000), rng.uniform(30_000, 300_000)
            at2 = true + up
            at3 = at2 + 20_000
            t1, t4 = round(site(true)), round(site(at3 + down))
            if corrected:
                c = round(served(at3) - raw(at3))  # what the responder sends: served - free-running, at t3
                estimator.add_sample(t1, round(served(at2)) - c, round(served(at3)) - c, t4)
                estimator.set_correction(round(served(at3)) - c, c)
            else:
                estimator.add_sample(t1, round(served(at2)), round(served(at3)), t4)
        else:
            true, tick = float(tick), tick + S
            if estimator.synced and true - T0 > 10 * S:
                worst = max(worst, abs(estimator.to_broadcast(round(site(true))) - served(true)) / 1e3)
    return worst


def test_a_site_given_the_correction_follows_a_bending_responder_to_tens_of_microseconds() -> None:
    with_correction = _follow(ClockEstimator(), corrected=True)
    without = _follow(ClockEstimator(), corrected=False)
    assert with_correction < 50, with_correction
    # the line fitted to the curve: hundreds of µs off, for minutes
    assert without > 300, without


def test_the_correction_is_followed_between_exchanges_and_a_step_is_not_extrapolated() -> None:
    est = ClockEstimator()
    est.set_correction(10 * S, 1_000)
    est.set_correction(11 * S, 1_020)  # +20 ppm
    assert est.corrected
    # responder time 12 s (the estimator knows no samples yet: its line is the identity)
    assert est.to_broadcast(12 * S) == 12 * S + 1_040
    est.set_correction(12 * S, 5_000_000)  # the responder stepped by 5 ms: taken, not read as a rate
    assert est.to_broadcast(13 * S) == 13 * S + 5_000_000
    est.clear_correction()
    assert not est.corrected and est.to_broadcast(13 * S) == 13 * S
