"""The one contract between playout and every sink (sound card, timed, file).

A sink owns the DAC's pace. Each time it needs audio it calls `render(n, dac_local_ns)`: `n` samples whose first
sample will reach the DAC at `dac_local_ns` on the site's *local* clock. The renderer answers with exactly `n`
float32 mono samples in [-1, 1]. Because every sink goes through this call, the timed sink used by tests and
benchmarks exercises the very playout path the sound card does.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]


class Renderer(Protocol):
    def render(self, n: int, dac_local_ns: int) -> Samples: ...
