"""The least D a sink period needs: the rule `citycast bench` warns by, against the runs it was measured on."""

from __future__ import annotations

import pytest

from citycast.site.options import DEFAULT_PERIOD_MS, least_delay_ms


def test_the_default_period_fits_the_lan_default_and_a_long_period_needs_more() -> None:
    assert least_delay_ms() == least_delay_ms(DEFAULT_PERIOD_MS, 1) == pytest.approx(80.0)  # the LAN default D
    # 50 ms blocks, two packets a message: 170 ms played clean on loopback, 120 ms underran (docs/benchmarks.md)
    assert 120.0 < least_delay_ms(50.0, 2) <= 170.0
    # a block is asked for at least 20 ms ahead, never less, however short
    assert least_delay_ms(2.5, 1) == pytest.approx(20 + 20 + 2.5 + 30)
