"""One second of tone played to one site's sink of the pulse bench's card, with the card's monitor recorded: what
the rig's channel tests (PulseAudio and PipeWire) play and read back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from citycast.media.audio import SAMPLE_RATE
from citycast.media.pulse_stream import PlaybackStream
from citycast.tooling.bench.pulse_rig import CARD, MonitorRecorder, MonitorRecording


def play_tone_to_one_sink(
    server: str, sinks: list[str], index: int, workdir: Path, *, settle_s: float
) -> tuple[list[str], list[MonitorRecording]]:
    """Record the card while a 1 kHz tone plays to `sinks[index]` for a second; `settle_s` lets what is queued play
    out. Returns the recorder's errors and its recordings, one per sink."""
    recorder = MonitorRecorder(server, sinks, workdir, card=CARD)
    recorder.start()
    try:
        stream = PlaybackStream(server=server, device=sinks[index], rate=SAMPLE_RATE, tlength_frames=4800,
                                minreq_frames=480)  # fmt: skip
        tone = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype("<f4")
        stop = threading.Event()
        for block in tone.reshape(-1, 480):
            stream.wait_writable(480, stop)
            stream.write(block.tobytes())
        time.sleep(settle_s)
        stream.close()
        deadline = time.monotonic() + 10
        while recorder.recordings[0].samples < 2 * SAMPLE_RATE and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        errors = recorder.stop()
    return errors, recorder.recordings
