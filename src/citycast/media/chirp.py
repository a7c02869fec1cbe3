"""The measurement signal: a short Hann-windowed chirp, the marker of `marker:` sources.

A product part (an operator can play `marker:` to check that loudspeakers are in step); finding the markers in a
recording is tooling and lives in `citycast.tooling.markers`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from citycast.media.audio import SAMPLE_RATE
from citycast.media.render import Samples

CHIRP_DURATION_S = 0.02
CHIRP_F0 = 500.0
CHIRP_F1 = 6000.0
CHIRP_AMPLITUDE = 0.5

F64 = npt.NDArray[np.float64]


def chirp_length(duration_s: float) -> int:
    return round(duration_s * SAMPLE_RATE)


def chirp_at(t: npt.ArrayLike, duration_s: float = CHIRP_DURATION_S, f0: float = CHIRP_F0, f1: float = CHIRP_F1) -> F64:
    """The marker as a continuous function of time `t` in (fractional) samples from its start; 0 outside."""
    n = chirp_length(duration_s)
    tt = np.asarray(t, dtype=np.float64)
    span = n - 1
    inside = (tt >= 0) & (tt <= span)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * tt / span)
    phase = (2 * np.pi / SAMPLE_RATE) * (f0 * tt + (f1 - f0) * tt * tt / (2 * span))
    out: F64 = np.where(inside, CHIRP_AMPLITUDE * window * np.sin(phase), 0.0)
    return out


def chirp(duration_s: float = CHIRP_DURATION_S, f0: float = CHIRP_F0, f1: float = CHIRP_F1) -> Samples:
    """Hann-windowed linear chirp from f0 to f1 Hz, amplitude 0.5, `duration_s` long (960 samples)."""
    n = chirp_length(duration_s)
    return chirp_at(np.arange(n), duration_s, f0, f1).astype(np.float32)
