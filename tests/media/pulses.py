"""A raw-PCM decoder and a pulse train with a sub-sample pulse finder: the playout tests' measuring tools."""

from __future__ import annotations

import numpy as np

from citycast.media.audio import FRAME_SAMPLES
from citycast.media.render import Samples

PULSE_EVERY = 4800  # a pulse every 100 ms of source


class RawDecoder:
    """Packets carry raw float32 PCM: lets the test see sub-sample timing without a codec's own delay."""

    def decode(self, packet: bytes) -> Samples:
        return np.frombuffer(packet, np.float32).copy()

    def conceal(self, samples: int = FRAME_SAMPLES) -> Samples:
        return np.zeros(samples, np.float32)

    def reset(self) -> None:
        pass


def pulse_train(start: int, n: int) -> Samples:
    """A smooth pulse (Gaussian, σ = 3 samples) centred on every multiple of PULSE_EVERY."""
    idx = np.arange(start, start + n)
    d = (idx + PULSE_EVERY // 2) % PULSE_EVERY - PULSE_EVERY // 2
    return np.exp(-0.5 * (d / 3.0) ** 2).astype(np.float32)


def find_pulses(x: Samples) -> list[float]:
    peaks = []
    for i in range(1, len(x) - 1):
        if x[i] > 0.5 and x[i] >= x[i - 1] and x[i] > x[i + 1]:
            a, b, c = (float(np.log(max(float(v), 1e-9))) for v in (x[i - 1], x[i], x[i + 1]))
            peaks.append(float(i + 0.5 * (a - c) / (a - 2 * b + c)))
    return peaks
