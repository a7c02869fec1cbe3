"""Reading a signal at fractional positions: the tiny resampling that corrects DAC drift.

python-soxr and libswresample resample at a fixed ratio; drift correction needs a ratio that changes a little
every block, continuously, so this is a small cubic (Catmull-Rom) interpolator over numpy arrays.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from citycast.media.render import Samples


def read_at(buf: Samples, positions: npt.NDArray[np.float64]) -> Samples:
    """Samples of `buf` at fractional `positions` (each must satisfy 1 <= p < len(buf) - 2)."""
    i = np.floor(positions).astype(np.int64)
    t = (positions - i).astype(np.float32)
    y0 = buf[i - 1]
    y1 = buf[i]
    y2 = buf[i + 1]
    y3 = buf[i + 2]
    # Catmull-Rom: flat enough in the voice band, and exact at integer positions.
    a = -0.5 * y0 + 1.5 * y1 - 1.5 * y2 + 0.5 * y3
    b = y0 - 2.5 * y1 + 2.0 * y2 - 0.5 * y3
    c = -0.5 * y0 + 0.5 * y2
    out: Samples = ((a * t + b) * t + c) * t + y1
    return out
