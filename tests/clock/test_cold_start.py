"""A site's clock after a power cut, in simulated time: in step to 1 ms within 2 s, to 0.1 ms within a minute.

Issue 11 §4. The site starts with its local clock at an unknown offset (a box without a battery-backed clock), its
crystal at the rate it had before, and either nothing remembered (first boot) or the drift it measured before
(`ClockEstimator.seed_drift`, from citycast.clock.memory). Errors are measured against the simulation's true time
every 50 ms, so nothing between two checks escapes.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from tests.clock.sim import MS, US, S, Sim, lan_path, loopback_path

from citycast.clock.estimator import ClockEstimator

CASES = [(-2 * S, 100.0), (2 * S, -100.0), (1_300_000_000, 37.0), (0, 5.0)]
TICK = 50 * MS


def _first_minute(sim: Sim) -> dict[str, object]:
    """Run 60 s; when the estimate was first served, and the worst error and bound from 2 s on and at 60 s."""
    est = sim.estimator
    synced_at: float | None = None
    worst_from_2s = 0
    honest = True
    t = 0.0
    while t < 60.0:
        sim.run(TICK / S, tick_ns=TICK)
        t += TICK / S
        if est.synced and synced_at is None:
            synced_at = t
        if est.synced:
            err = abs(sim.error_ns())
            honest = honest and err <= est.error_bound_at(sim.clock.at(sim.now))
            if t >= 2.0:
                worst_from_2s = max(worst_from_2s, err)
    return {
        "synced_at": synced_at,
        "worst_from_2s": worst_from_2s,
        "honest": honest,
        "bound_60s": est.error_bound_at(sim.clock.at(sim.now)),
        "precision_60s": est.precision_at(sim.clock.at(sim.now)),
        "error_60s": abs(sim.error_ns()),
    }


@pytest.mark.parametrize(("offset_ns", "ppm"), CASES)
@pytest.mark.parametrize("remembered", [False, True])
def test_a_site_beside_its_responder_is_in_step_within_two_seconds(
    offset_ns: int, ppm: float, remembered: bool
) -> None:
    est = ClockEstimator()
    if remembered:
        assert est.seed_drift(ppm + 2.0, 0.3)  # the crystal warmed up a little since it was measured
    sim = Sim(lan_path, 11, offset_ns, ppm, estimator=est)
    sim.run(2)
    assert est.synced
    # the bound the site plays by, at 2 s, and what it really is
    assert est.error_bound_at(sim.clock.at(sim.now)) <= 1 * MS
    assert abs(sim.error_ns()) <= 1 * MS
    sim.run(58)
    assert est.error_bound_at(sim.clock.at(sim.now)) <= 100 * US
    assert abs(sim.error_ns()) <= 100 * US
    assert est.drift_seeded is remembered


@pytest.mark.parametrize(("offset_ns", "ppm"), CASES)
@pytest.mark.parametrize("seed", [1, 2])
def test_a_jittery_path_is_within_a_millisecond_from_two_seconds(offset_ns: int, ppm: float, seed: int) -> None:
    """Up 0.1-5 ms, down 0.05-0.3 ms, 1 % of requests 50 ms late: served from at most 2 s on, never more than
    1 ms off from 2 s on, and within 0.1 ms at 60 s (its own bound, which must cover the error, is looser on so
    jittery a path)."""
    sim = Sim(loopback_path, seed, offset_ns, ppm)
    got = _first_minute(sim)
    assert got["synced_at"] is not None and float(str(got["synced_at"])) <= 2.0
    assert got["honest"]
    assert int(str(got["worst_from_2s"])) <= 1 * MS
    assert int(str(got["precision_60s"])) <= 200 * US
    assert int(str(got["error_60s"])) <= 100 * US


def test_the_start_is_a_burst_then_the_usual_pace() -> None:
    sim = Sim(lan_path, 3, S, 50.0)
    sim.run(1)
    assert sim.estimator.sample_count >= 40  # dozens of samples in the first second, not eight
    sim.run(9)
    assert sim.estimator.next_interval_ns() >= 100 * MS


@pytest.mark.parametrize("wrong_by_ppm", [150.0, -300.0])
def test_a_wild_remembered_drift_is_dropped_and_costs_less_than_a_millisecond(wrong_by_ppm: float) -> None:
    """A memory from another box, or from before chrony took over the clock: contradicted by the samples, dropped
    within seconds; meanwhile the site stays within 1 ms from 2 s on, and at 60 s it is as good as ever."""
    ppm = 40.0
    est = ClockEstimator()
    assert est.seed_drift(ppm + wrong_by_ppm, 0.2)
    sim = Sim(loopback_path, 4, -S, ppm, estimator=est)
    got = _first_minute(sim)
    assert est.hint_rejected and not est.drift_seeded
    assert int(str(got["worst_from_2s"])) <= 1 * MS
    assert int(str(got["error_60s"])) <= 100 * US
    assert est.drift_ppm == pytest.approx(ppm, abs=2.0)


def _loaded_then_quiet(rise_us: float, exchanges: int) -> Callable[[random.Random], tuple[int, int]]:
    """A LAN path whose way up slows by `rise_us` more at each of the first `exchanges` (a box busy starting its
    other processes, so its requests queue longer and longer), then is quiet."""
    calls = 0

    def path(rng: random.Random) -> tuple[int, int]:
        nonlocal calls
        calls += 1
        up, down = lan_path(rng)
        return up + (round(calls * rise_us * US) if calls <= exchanges else 0), down

    return path


@pytest.mark.parametrize("rise_us", [2.0, 8.0])
def test_a_right_remembered_drift_survives_a_busy_first_second(rise_us: float) -> None:
    """The first second's burst over a box still busy starting disagrees with the memory by tens of ppm for a
    dozen fits running (CI saw a real site drop its right memory so): the memory stays, and the site is within
    50 µs from 2 s on."""
    ppm = 83.0
    est = ClockEstimator()
    assert est.seed_drift(ppm + 1.5, 0.4)
    sim = Sim(_loaded_then_quiet(rise_us, 60), 5, 1_300_000_000, ppm, estimator=est)
    sim.run(2, tick_ns=TICK)
    worst = 0
    for _ in range(80):
        sim.run(TICK / S, tick_ns=TICK)
        worst = max(worst, abs(sim.error_ns()))
    assert est.drift_seeded and not est.hint_rejected
    assert worst <= 50 * US


@pytest.mark.parametrize(("drift", "sigma"), [(float("nan"), 1.0), (5000.0, 1.0), (20.0, float("inf")), (20.0, -1.0)])
def test_an_impossible_remembered_drift_is_refused(drift: float, sigma: float) -> None:
    est = ClockEstimator()
    assert not est.seed_drift(drift, sigma)
    assert not est.drift_seeded
