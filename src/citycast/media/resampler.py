"""Reading a signal at fractional positions: the tiny resampling that corrects DAC drift.

python-soxr and libswresample resample at a fixed ratio; drift correction needs a ratio that changes a little
every block, continuously, so this is a small cubic (Catmull-Rom) interpolator over numpy arrays.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from citycast.media.render import Samples


def _cubic(y0: Samples, y1: Samples, y2: Samples, y3: Samples, t: Samples) -> Samples:
    # Catmull-Rom: flat enough in the voice band, and exact at integer positions. Written as
    # ((a t + b) t + c) t + y1 with b = c + (y0 - y1) - a: 16 passes over the block, most in place (the textbook
    # form takes 23 and a temporary each), which is most of what a site spends resampling.
    c = y2 - y0
    c *= 0.5
    a = y3 - y0
    a *= 0.5
    d = y1 - y2
    d *= 1.5
    a += d
    b = y0 - y1
    b += c
    b -= a
    out: Samples = a * t
    out += b
    out *= t
    out += c
    out *= t
    out += y1
    return out


def read_at(buf: Samples, positions: npt.NDArray[np.float64]) -> Samples:
    """Samples of `buf` at fractional `positions` (each must satisfy 1 <= p < len(buf) - 2)."""
    i = np.floor(positions).astype(np.int64)
    t = (positions - i).astype(np.float32)
    return _cubic(buf[i - 1], buf[i], buf[i + 1], buf[i + 2], t)


def read_ramp(buf: Samples, start: float, ratio: float, n: int, ramp: npt.NDArray[np.float64]) -> Samples:
    """`read_at(buf, start + ramp[:n] * ratio)`, faster for the case playout has: a ratio within 1/n of 1.

    The integer part of the positions then advances by exactly one per sample except at most once, where it
    skips or repeats one; each stretch between is a contiguous slice of `buf`, so no gathers are needed.
    """
    i0 = math.floor(start)
    if abs(ratio - 1.0) * n < 1.0:
        # The fraction itself, start's fraction plus j * (ratio - 1): when it stays in [0, 1) the block is one
        # stretch from i0 and the positions need not be formed at all.
        frac = ramp[:n] * (ratio - 1.0)
        frac += start - i0
        if 0.0 <= frac[0] < 1.0 and 0.0 <= frac[-1] < 1.0:
            t = frac.astype(np.float32)
            return _cubic(
                buf[i0 - 1 : i0 + n - 1], buf[i0 : i0 + n], buf[i0 + 1 : i0 + n + 1], buf[i0 + 2 : i0 + n + 2], t
            )
    positions = start + ramp[:n] * ratio
    i_last = math.floor(positions[-1])
    if abs(ratio - 1.0) * n >= 1.0 or i_last - i0 not in (n - 2, n - 1, n):
        return read_at(buf, positions)
    t = (positions - np.floor(positions)).astype(np.float32)
    if i_last - i0 == n - 1:  # one stretch
        return _cubic(buf[i0 - 1 : i0 + n - 1], buf[i0 : i0 + n], buf[i0 + 1 : i0 + n + 1], buf[i0 + 2 : i0 + n + 2], t)
    # two stretches: find where the integer part stops following i0 + j
    lag = np.floor(positions).astype(np.int64) - np.arange(n) - i0
    split = int(np.argmax(lag != 0))
    out = np.empty(n, np.float32)
    for lo, hi in ((0, split), (split, n)):
        base = i0 + int(lag[lo])
        out[lo:hi] = _cubic(
            buf[base + lo - 1 : base + hi - 1],
            buf[base + lo : base + hi],
            buf[base + lo + 1 : base + hi + 1],
            buf[base + lo + 2 : base + hi + 2],
            t[lo:hi],
        )
    return out
