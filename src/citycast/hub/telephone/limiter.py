"""The return mix's limiter: prompts plus a site's microphone (talkback) never clip on the caller's phone."""

from __future__ import annotations

import numpy as np

from citycast.media.render import Samples

LIMIT = 0.98  # the return mix's ceiling (full scale is 1.0)
RELEASE = 1.06  # limiter gain recovery per 20 ms block (about 0.5 dB): fast enough to follow speech, no pumping


class Limiter:
    """Keeps a mix under `LIMIT`: the gain drops at once to what the loudest sample of a block allows (no sample
    ever clips) and recovers by `RELEASE` per block, ramped within the block so the recovery does not click."""

    def __init__(self, ceiling: float = LIMIT, release: float = RELEASE) -> None:
        if not 0 < ceiling <= 1 or release < 1:
            raise ValueError(f"bad limiter: ceiling {ceiling} (0..1], release {release} (>= 1)")
        self.ceiling = ceiling
        self.release = release
        self.gain = 1.0

    def process(self, block: Samples) -> Samples:
        if block.size == 0:
            return block.astype(np.float32, copy=False)
        peak = float(np.max(np.abs(block)))
        allowed = self.ceiling / peak if peak > self.ceiling else 1.0
        gain = min(1.0, self.gain * self.release, allowed)
        # Attack: the whole block at the lower gain. Release: a ramp whose every gain is between the old gain and
        # the new one, both at most `allowed`, so no sample clips either.
        ramp = gain if gain < self.gain else np.linspace(self.gain, gain, block.size, dtype=np.float32)
        self.gain = gain
        out: Samples = np.clip(block * ramp, -self.ceiling, self.ceiling).astype(np.float32)  # float rounding only
        return out
