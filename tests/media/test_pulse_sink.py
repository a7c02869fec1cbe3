"""PulseSink against a real PulseAudio: the DAC time it hands the renderer is when the server really played it.

A private PulseAudio (tests/helpers.py `private_pulseaudio`) with a null sink; PulseSink plays silence with a
marker chirp in five blocks a second apart and keeps the DAC time it gave each of those blocks; the null sink's
monitor is recorded with the server's timing (`MonitorRecorder` of the pulse bench: PulseAudio's record latency
dates the samples read). The marker found in the recording, dated, must be where the sink said it would be.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest
from tests.helpers import need_binary
from tests.media.marked_playback import MARKED, MarkedSilence, wait_recorded_past

from citycast.media.pulse_sink import PulseSink
from citycast.media.sinks import SinkError, open_sink
from citycast.tooling.bench.pulse_rig import MonitorRecorder
from citycast.tooling.markers import detect_markers

BLOCK = 480
# The monitor dates a sample when the null sink renders it, and a null sink renders ahead of its own play clock by
# up to its configured latency (pactl reports it; the sink's clients set it): so the marker is dated up to that much
# early. Then TOLERANCE_MS for the rest: the sink's own reports hold to tens of µs, but the recorder dates the monitor
# by libpulse-simple's interpolated record latency, which in a stream's first seconds wandered by several ms on a
# loaded box (at load 5-12: 2 runs in 15 off by 2.4-8 ms), and this test plays only 8 s.
TOLERANCE_MS = 10.0
SPREAD_MS = 10.0


def _configured_latency_ms(env: dict[str, str]) -> float:
    out = subprocess.run([need_binary("pactl"), "list", "sinks"], env=env, capture_output=True, text=True, timeout=10)
    found = re.search(r"Latency: \d+ usec, configured (\d+) usec", out.stdout)
    assert found is not None, out.stdout + out.stderr
    return int(found.group(1)) / 1000


@pytest.mark.slow
def test_pulse_sink_dac_time_is_where_the_server_played_the_marker(pulse_env: dict[str, str], tmp_path: Path) -> None:
    server = pulse_env["PULSE_SERVER"]
    recorder = MonitorRecorder(server, ["cc_null"], tmp_path)
    recorder.start()
    try:
        renderer = MarkedSilence()
        # A deep queue (as a site with a long D may use): a busy CI box must not starve it into an underrun.
        sink = PulseSink(server=server, device="cc_null", block=BLOCK, buffer_ms=200,
                         duration_s=(MARKED[-1] + 60) * BLOCK / 48_000)  # fmt: skip
        asyncio.run(sink.run(renderer))
        configured_ms = _configured_latency_ms(pulse_env)
        # Record until the monitor is past the last marker (a loaded box delivers the monitor late).
        wait_recorded_past(recorder, renderer.dac_ns[MARKED[-1]] + 300_000_000)
    finally:
        errors = recorder.stop()
    assert not errors
    rec = recorder.recordings[0]
    start_ns, ns_per_sample = rec.line()
    heard = [start_ns + p * ns_per_sample for p in detect_markers(rec.audio())]
    assert len(heard) == len(MARKED), f"found {len(heard)} markers in the monitor, played {len(MARKED)}"
    said = [renderer.dac_ns[b] for b in MARKED]
    off_ms = [(h - s) / 1e6 for h, s in zip(heard, said, strict=True)]
    assert all(-configured_ms - TOLERANCE_MS <= o <= TOLERANCE_MS for o in off_ms), (
        f"heard minus the sink's DAC time (ms): {off_ms}; the null sink renders up to {configured_ms} ms ahead"
    )
    assert max(off_ms) - min(off_ms) <= SPREAD_MS, (
        f"heard minus the sink's DAC time (ms): {off_ms}; {sink.dac_clock.stats}, xruns {sink.xruns}, "
        f"late queries {sink.late_queries}"
    )
    assert sink.blocks >= MARKED[-1]


def test_a_long_block_leaves_the_sound_server_its_latency(pulse_env: dict[str, str]) -> None:
    """PulseAudio asks of the sink half of what a stream's queue holds beyond two requests. At 50 ms blocks a 40 ms
    queue left it none: the sink ran at its least latency, and under load its timing reports jumped by over a
    millisecond, which put sites up to 10 ms apart. The default queue grows with the block so the sink keeps its
    10 ms (PulseAudio rounds it: at least 4 ms here)."""
    server = pulse_env["PULSE_SERVER"]
    assert PulseSink(server=server, block=480).buffer_ms == 40.0  # as it always was at the default period
    sink = PulseSink(server=server, device="cc_null", block=2400)
    assert sink.buffer_ms == 120.0
    stream = sink._open()
    try:
        assert stream.granted_minreq_frames == 2400
        assert (stream.granted_tlength_frames - 2 * 2400) / 2 >= 0.004 * 48_000, stream.granted_tlength_frames
        assert _configured_latency_ms(pulse_env) >= 4.0
    finally:
        stream.close()


def test_pulse_sink_without_a_server_is_a_clear_error(tmp_path: Path) -> None:
    sink = open_sink("pulse:nowhere", block=BLOCK)
    assert isinstance(sink, PulseSink)
    sink.server = f"unix:{tmp_path / 'no-such-socket'}"
    with pytest.raises(SinkError, match="no audio output device"):
        asyncio.run(asyncio.wait_for(sink.run(MarkedSilence()), 10))


def test_bad_pulse_settings_are_refused() -> None:
    with pytest.raises(SinkError):
        PulseSink(block=0)
    with pytest.raises(SinkError):
        PulseSink(buffer_ms=0)
