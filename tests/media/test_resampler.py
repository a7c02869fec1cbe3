from __future__ import annotations

import numpy as np
import pytest

from citycast.media.resampler import read_at, read_ramp


@pytest.mark.parametrize("ratio", [1.0, 1.0 + 1e-4, 1.0 - 1e-4, 1.0 + 9e-4, 1.0 - 9e-4, 1.01])
@pytest.mark.parametrize("start", [1.0, 1.25, 7.999, 3.5])
def test_ramp_reading_equals_gathered_reading(ratio: float, start: float) -> None:
    rng = np.random.default_rng(1)
    buf = rng.standard_normal(3000).astype(np.float32)
    n = 960
    ramp = np.arange(n, dtype=np.float64)
    expected = read_at(buf, start + ramp * ratio)
    got = read_ramp(buf, start, ratio, n, ramp)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_integer_positions_are_exact_and_a_sine_survives() -> None:
    x = np.sin(np.arange(4000) * 2 * np.pi * 1000 / 48000).astype(np.float32)
    np.testing.assert_array_equal(read_at(x, np.arange(10, 20, dtype=np.float64)), x[10:20])
    # reading 100 ppm fast is a 1000.1 Hz sine: error far below audibility
    ramp = np.arange(960, dtype=np.float64)
    y = read_ramp(x, 100.0, 1.0001, 960, ramp)
    ideal = np.sin((100.0 + ramp * 1.0001) * 2 * np.pi * 1000 / 48000)
    assert np.max(np.abs(y - ideal)) < 1e-3
