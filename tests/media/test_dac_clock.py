"""DacClock: noisy device reports of when a sample plays, filtered into the DAC's own straight line.

Simulated time: a DAC at a known rate error, reports jittered by ±1 ms (as PortAudio's through the ALSA pulse
plugin), 10 ms blocks (480 samples) as a site plays them. "Output jitter" is the peak-to-peak of the answer's error
over any one second (what would make the playout loop twitch); the absolute error is held separately.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from citycast.media.dac_clock import DacClock

BLOCK = 480
PER_S = 48_000 // BLOCK
T0 = 1_764_000_000_000_000_000  # a wall-clock-sized local time, as the sinks report


def _play(
    clock: DacClock,
    seconds: float,
    *,
    ppm: float,
    jitter_ns: float = 1e6,
    step_at_s: float | None = None,
    step_ns: float = 0.0,
    late_every: int = 0,
    seed: int = 1,
) -> npt.NDArray[np.float64]:
    """Feeds reports block by block; returns the answer's error (ns) for each block."""
    rng = np.random.default_rng(seed)
    ns = 1e9 / 48_000 / (1 + ppm * 1e-6)
    errors = []
    for k in range(round(seconds * PER_S)):
        n = k * BLOCK
        true = T0 + n * ns + (step_ns if step_at_s is not None and k >= step_at_s * PER_S else 0.0)
        reported = true + rng.uniform(-jitter_ns, jitter_ns)
        if late_every and k % late_every == late_every - 1:
            reported += 15e6  # a wake-up 15 ms late
        errors.append(clock.report(n, round(reported)) - true)
    return np.array(errors)


def _jitter_per_second(errors: npt.NDArray[np.float64]) -> float:
    return max(float(np.ptp(errors[i : i + PER_S])) for i in range(0, len(errors) - PER_S, PER_S // 4))


@pytest.mark.parametrize("ppm", [100.0, -100.0, 0.0])
def test_jittery_reports_give_a_smooth_clock_at_the_dacs_real_rate(ppm: float) -> None:
    clock = DacClock()
    errors = _play(clock, 120, ppm=ppm)
    settled = errors[40 * PER_S :]
    assert _jitter_per_second(settled) <= 20_000, "the answer jitters like the reports"
    assert np.max(np.abs(settled)) <= 100_000
    assert clock.rate_ppm == pytest.approx(ppm, abs=5)
    assert clock.stats.steps == 0


def test_a_lone_late_report_is_not_followed() -> None:
    clock = DacClock()
    errors = _play(clock, 90, ppm=100, late_every=97)
    assert clock.stats.outliers >= 90 * PER_S // 97 - 1
    assert clock.stats.steps == 0
    assert np.max(np.abs(errors[40 * PER_S :])) <= 100_000
    assert _jitter_per_second(errors[40 * PER_S :]) <= 20_000


@pytest.mark.parametrize("step_ns", [5e6, -3e6, 400e6])  # 400 ms: ALSA's pulse plugin recovering from an underrun
def test_a_step_in_the_devices_mapping_is_followed_after_a_short_run(step_ns: float) -> None:
    clock = DacClock()
    errors = _play(clock, 120, ppm=-100, step_at_s=60, step_ns=step_ns, late_every=97)
    assert clock.stats.steps == 1
    after = errors[60 * PER_S :]
    # Within a few reports it answers on the new mapping (off by under a ms, not by the step) ...
    assert np.max(np.abs(after[PER_S // 5 : PER_S])) <= 1_000_000
    # ... and once the new window has filled it is as good as before.
    assert np.max(np.abs(after[30 * PER_S :])) <= 100_000
    assert _jitter_per_second(after[30 * PER_S :]) <= 20_000


def test_clean_reports_pass_through_exactly_for_hours() -> None:
    clock = DacClock(window_s=2.0)  # a short window: the sums are rebased many times over
    ns = 1e9 / 48_000 * (1 + 37e-6)
    worst = 0
    for k in range(0, 4 * 3600 * PER_S, 7):  # every seventh block of four hours
        n = k * BLOCK
        error = abs(clock.report(n, T0 + round(n * ns)) - (T0 + round(n * ns)))
        if k > 60 * PER_S:  # the first seconds run on the nominal rate until the fit has points
            worst = max(worst, error)
    assert worst <= 5  # ns: the reports themselves are rounded to whole ns
    assert clock.stats.steps == 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        DacClock(window_s=0)
    with pytest.raises(ValueError):
        DacClock(step_run=1)
