"""Silence with a marker chirp in five blocks a second apart, and the wait for a monitor recording to pass an
instant: what the sinks' marker tests (PulseSink, AlsaSink) play and read back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from citycast.media.alsa_sink import AlsaSink
from citycast.media.chirp import chirp
from citycast.media.render import Samples
from citycast.tooling.bench.pulse_rig import MonitorRecorder

MARKED = (300, 400, 500, 600, 700)  # blocks (10 ms) that start with a marker: from 3 s, a second apart


class MarkedSilence:
    def __init__(self) -> None:
        self.block = 0
        self.dac_ns: dict[int, int] = {}
        self.marker = chirp()

    def render(self, n: int, dac_local_ns: int) -> Samples:
        out = np.zeros(n, np.float32)
        if self.block in MARKED:
            out[: self.marker.size] = self.marker[:n]
            self.dac_ns[self.block] = dac_local_ns
        self.block += 1
        return out


def wait_recorded_past(recorder: MonitorRecorder, ns: int, timeout: float = 10.0) -> None:
    dates = recorder.recordings[0].dates
    deadline = time.monotonic() + timeout
    while not (dates and dates[-1][1] > ns) and time.monotonic() < deadline:
        time.sleep(0.05)


def play_marked_to_alsa(device: str) -> tuple[dict[int, int], dict[str, Any]]:
    """Plays the marked silence to `device`; returns the DAC time given to each marked block, and what the sink
    counted."""
    renderer = MarkedSilence()
    # A deep queue (as a site with a long D may use): a busy CI box must not starve it into an underrun.
    sink = AlsaSink(device=device, block=480, buffer_ms=200, duration_s=(MARKED[-1] + 60) * 480 / 48_000)
    asyncio.run(sink.run(renderer))
    played = {"reports": sink.reports, "xruns": sink.xruns, "granted": sink.granted, "line": str(sink.dac_clock.stats)}
    return renderer.dac_ns, played
