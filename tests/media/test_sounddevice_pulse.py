"""The real sound-card path: SoundDeviceSink → PortAudio → ALSA 'pulse' plugin → PulseAudio null sink.

The test starts a private PulseAudio daemon with a null sink, plays a known sweep through `SoundDeviceSink`
(device "pulse") and records the null sink's monitor back with `parec`; the recording must be the same audio.

Starting PulseAudio as root (this machine runs tests as root, with no D-Bus and no system instance): plain
`pulseaudio --system=false` only *warns* "This program is not intended to be run as root" and carries on, as
long as its runtime/state directories are private and writable. So the test points PULSE_RUNTIME_PATH,
XDG_RUNTIME_DIR and HOME at a fresh temp dir and loads the native protocol on an explicit socket with
`auth-anonymous=1` (no cookie to share between daemon and clients). Two traps: PulseAudio keeps its pid file
at `$PULSE_RUNTIME_PATH/pid`, so never put a file named `pid` there yourself ("Daemon already running"); and
`-n` skips default.pa, so only the two modules given are loaded. The null sink runs at 48 kHz so nothing is
resampled. Clients find it through PULSE_SERVER=unix:<tmp>/native.

sounddevice initialises PortAudio (and caches ALSA's device list) when imported, so playback runs in a fresh
subprocess with that environment set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

RATE = 48_000
BLOCK = 960

# Runs in the subprocess: plays the sweep through SoundDeviceSink, records what render() was asked.
PLAYER = r"""
import asyncio, json, sys, time
import numpy as np
from citycast.media.sinks import SoundDeviceSink

source = np.load(sys.argv[1])
out_path = sys.argv[2]
block = int(sys.argv[3])
calls = []

class SweepRenderer:
    def __init__(self):
        self.pos = 0

    def render(self, n, dac_local_ns):
        chunk = np.zeros(n, dtype=np.float32)
        part = source[self.pos : self.pos + n]
        chunk[: len(part)] = part
        calls.append([n, dac_local_ns, self.pos, time.time_ns()])
        self.pos += n
        return chunk

class Silence:
    def render(self, n, dac_local_ns):
        return np.zeros(n, dtype=np.float32)

async def main():
    # the bounded run, with a ticker showing the event loop never stalls (start() blocks in its thread)
    gaps = []

    async def ticker():
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await sink.run(SweepRenderer())
    tick.cancel()
    # an unbounded run, cancelled
    endless = SoundDeviceSink(device="pulse", blocksize=block)
    task = asyncio.create_task(endless.run(Silence()))
    await asyncio.sleep(2.0)
    t0 = time.monotonic()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return max(gaps), time.monotonic() - t0, endless.blocks

sink = SoundDeviceSink(device="pulse", blocksize=block, duration_s=len(source) / 48000 + 0.3)
max_loop_gap_s, cancel_s, endless_blocks = asyncio.run(main())
json.dump(
    {
        "calls": calls,
        "xruns": sink.xruns,
        "dac_time_fallbacks": sink.dac_time_fallbacks,
        "stream_latency_s": sink.stream_latency_s,
        "last_output_delay_s": sink.last_output_delay_s,
        "device_name": sink.device_name,
        "channels": sink.channels,
        "max_loop_gap_s": max_loop_gap_s,
        "cancel_s": cancel_s,
        "endless_blocks": endless_blocks,
    },
    open(out_path, "w"),
)
"""

# Fallback recorder when `parec` is missing: a PortAudio input stream on the pulse device, whose default
# source is pointed at the null sink's monitor by PULSE_SOURCE.
RECORDER = r"""
import sys, time
import numpy as np
import sounddevice as sd

seconds = float(sys.argv[2])
rec = sd.rec(int(seconds * 48000), samplerate=48000, channels=1, dtype="float32", device="pulse")
sd.wait()
rec[:, 0].astype("<f4").tofile(sys.argv[1])
"""


def _sweep() -> np.ndarray:
    """0.1 s of silence, a 1.8 s linear sweep 200 Hz → 8 kHz at half scale (10 ms fades), 0.1 s of silence."""
    n = int(1.8 * RATE)
    t = np.arange(n) / RATE
    f0, f1 = 200.0, 8000.0
    sweep = 0.5 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * 1.8)))
    fade = int(0.01 * RATE)
    ramp = np.linspace(0.0, 1.0, fade)
    sweep[:fade] *= ramp
    sweep[-fade:] *= ramp[::-1]
    pad = np.zeros(int(0.1 * RATE))
    return np.concatenate([pad, sweep, pad]).astype(np.float32)


def _normalised_peak(source: np.ndarray, recorded: np.ndarray) -> tuple[float, int]:
    """Best normalised correlation of `source` against `recorded`, and the lag (samples) at which source
    sample 0 sits in the recording (negative when the recording starts after the source's first samples)."""
    size = 1 << (len(source) + len(recorded) - 1).bit_length()
    xcorr = np.fft.irfft(np.fft.rfft(recorded, size) * np.conj(np.fft.rfft(source, size)), size)
    lags = np.concatenate([np.arange(len(recorded)), np.arange(-len(source) + 1, 0)])
    index = np.concatenate([np.arange(len(recorded)), np.arange(size - len(source) + 1, size)])
    lag = int(lags[np.argmax(xcorr[index])])
    lo, hi = max(lag, 0), min(lag + len(source), len(recorded))
    segment = recorded[lo:hi]
    src = source[lo - lag : hi - lag]
    peak = float(np.dot(src, segment) / (np.linalg.norm(src) * np.linalg.norm(segment) + 1e-12))
    return peak, lag


@pytest.mark.slow
def test_sounddevice_sink_plays_into_pulseaudio_null_sink(pulse_env: dict[str, str], tmp_path: Path) -> None:
    source = _sweep()
    np.save(tmp_path / "source.npy", source)
    raw = tmp_path / "monitor.f32"
    repo_src = str(Path(__file__).resolve().parents[2] / "src")
    pulse_env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_src, pulse_env.get("PYTHONPATH")) if p)

    parec = shutil.which("parec")
    with raw.open("wb") as out:
        if parec is not None:
            recorder = subprocess.Popen(
                [
                    parec,
                    "-d",
                    "cc_null.monitor",
                    "--format=float32le",
                    "--rate=48000",
                    "--channels=1",
                    "--raw",
                ],
                env=pulse_env,
                stdout=out,
                stderr=subprocess.PIPE,
            )
        else:  # record the monitor through PortAudio instead
            recorder = subprocess.Popen(
                [sys.executable, "-c", RECORDER, str(raw), "5.0"], env=pulse_env, stderr=subprocess.PIPE
            )
        try:
            time.sleep(0.3)  # let the recorder attach to the monitor
            played = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    PLAYER,
                    str(tmp_path / "source.npy"),
                    str(tmp_path / "calls.json"),
                    str(BLOCK),
                ],
                env=pulse_env,
                capture_output=True,
                timeout=20,
            )
            assert played.returncode == 0, played.stderr.decode()[-3000:]
            if parec is not None:
                time.sleep(0.3)
                recorder.terminate()
            recorder.wait(timeout=10)
        finally:
            if recorder.poll() is None:
                recorder.kill()
                recorder.wait()

    report = json.loads((tmp_path / "calls.json").read_text())
    recorded = np.fromfile(raw, dtype="<f4")
    assert len(recorded) > len(source), f"recorded only {len(recorded)} samples"

    # The sound-card path plays the same audio.
    peak, lag = _normalised_peak(source, recorded)
    assert peak > 0.9, f"recorded monitor correlates only {peak:.3f} with the source"
    level = float(np.max(np.abs(recorded[max(lag, 0) : lag + len(source)])))
    assert 0.4 < level < 0.6, f"level {level:.3f}: expected the sweep at unity gain (0.5)"

    # render() was asked for consecutive blocks, at monotonic DAC instants ~blocksize/48 kHz apart.
    calls = report["calls"]
    assert all(n == BLOCK for n, *_ in calls)
    dac = np.array([c[1] for c in calls], dtype=np.int64)
    assert np.all(np.diff(dac) > 0)
    step = np.diff(dac[4:]) / 1e6  # after PortAudio's start-up priming (see note below)
    assert np.median(step) == pytest.approx(BLOCK / RATE * 1e3, abs=0.5)
    assert np.percentile(np.abs(step - 20.0), 95) < 3.0, f"DAC instants jitter: {step}"
    assert report["dac_time_fallbacks"] == 0  # the ALSA pulse plugin does report stream times

    # The event loop kept running while PortAudio started; cancelling an endless run is prompt.
    assert report["max_loop_gap_s"] < 0.1
    assert report["endless_blocks"] > 0
    assert report["cancel_s"] < 0.5
