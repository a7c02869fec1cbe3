"""The soak's city responder: syncing to the hub over a simulated long haul, as `citycast city` does."""

from __future__ import annotations

import numpy as np
import pytest

from citycast.tooling.bench.soak import LongHaul, run_city_soak
from citycast.tooling.bench.soak_city_clock import GRID_NS, MS, S, simulate_city_clock

T0 = 1_800_000_000 * S
LONDON_KARACHI = LongHaul(70.0, 10.0, 0.01)


def test_the_city_clock_stays_near_the_hubs_and_moves_gently_through_a_cut() -> None:
    city = simulate_city_clock(start_ns=T0, end_ns=T0 + 1800 * S, delay_ms=70, jitter_ms=10, loss=0.01,
                               retransmit_ns=340 * MS,
                               cuts=[(T0 + 900 * S, T0 + 960 * S)], seed=2, b_offset_ns=100_000)  # fmt: skip
    settled = city.error_ns[round(600 * S / GRID_NS) :]
    assert np.abs(settled).max() < 1 * MS  # a long haul's asymmetry and wander: hundreds of µs, not ms
    rate_ppm = np.abs(np.diff(settled)) / GRID_NS * 1e6
    assert rate_ppm.max() <= 20.5  # never faster than the city responder's slew limit: sites track it alike
    assert city.served(1, T0 + 1000 * S) - city.served(0, T0 + 1000 * S) == 100_000
    # the free-running clocks are their own: seconds away from the served one, at their own rate
    assert abs(city.raw(0, T0 + 1000 * S) - city.served(0, T0 + 1000 * S)) > MS


def test_a_city_responder_that_never_reaches_the_hub_is_an_error() -> None:
    with pytest.raises(ValueError, match="never synced"):
        simulate_city_clock(start_ns=T0, end_ns=T0 + 60 * S, delay_ms=70, jitter_ms=10, loss=0.0,
                            retransmit_ns=340 * MS,
                            cuts=[(T0, T0 + 61 * S)], seed=1, b_offset_ns=0)  # fmt: skip


def test_with_the_responders_correction_a_site_tracks_the_city_clock_to_microseconds() -> None:
    """Without it, a site fits a straight line to a clock that bends each time the city responder slews a
    correction in, and is tens of µs off it; with it, a few µs (the simulated LAN's own jitter)."""
    runs = {
        corr: run_city_soak(
            hours=20 / 60,
            sites=2,
            paths=2,
            link=LONDON_KARACHI,
            faults=[],
            row_s=300,
            window_s=10,
            seed=1,
            correction=corr,
        )
        for corr in (True, False)
    }
    corrected = max(r.sync_error_p99_us for r in runs[True].rows)
    plain = max(r.sync_error_p99_us for r in runs[False].rows)
    assert corrected < 10 and plain > 3 * corrected, (corrected, plain)
    assert all(r.underruns == 0 and r.concealed == 0 for r in runs[True].rows)
    assert all(r.city_clock_p99_us > 0 for r in runs[True].rows)  # the city's own offset, reported beside
