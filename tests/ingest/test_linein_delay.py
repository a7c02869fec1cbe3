"""Mouth to stamp through the real line-in path: a chirp played into a private PulseAudio null sink, whose monitor
is the line-in, captured by `citycast ingest line-in`'s code (`run_ingest(LineInSource)`) and published on a
real NATS. A site plays a frame at its stamp + D, so stamp − mouth is what live ingest adds to D."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nats
import numpy as np
import pytest
from nats.aio.msg import Msg

from citycast.bus.connection import settle
from citycast.bus.server import EmbeddedNats
from citycast.media.audio import FRAME_NS, FRAME_SAMPLES
from citycast.media.codec import OpusDecoder, OpusEncoder
from citycast.protocol.frame import Frame, parse_frame
from citycast.tooling.markers import detect_markers

INGEST = r"""
import asyncio, sys
from citycast.ingest.run import IngestOptions, run_ingest
from citycast.media.keys import generate_private_key
from citycast.media.sources import LineInSource
source = LineInSource("pulse")
opts = IngestOptions(sys.argv[1], channel=1, seconds=float(sys.argv[2]))
asyncio.run(run_ingest(source, generate_private_key(), opts))
"""

# Plays a chirp every second from `first` (system clock, ns) through the sound card path, and writes the DAC
# instant of each chirp's first sample: the mouth.
PLAYER = r"""
import asyncio, json, sys, time
import numpy as np
import pytest
from citycast.media.chirp import chirp
from citycast.media.sinks import SoundDeviceSink

ref = chirp()
first, count, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
mouths = []

class Chirps:
    def __init__(self):
        self.at = None  # position in the chirp of the next sample, while one plays
        self.k = 0

    def render(self, n, dac_ns):
        buf = np.zeros(n, np.float32)
        if self.at is None and self.k < count:
            offset = (first + self.k * 1_000_000_000 - dac_ns) * 48_000 // 1_000_000_000
            if 0 <= offset < n:
                mouths.append(dac_ns + offset * 1_000_000_000 / 48_000)
                self.at, self.k = -offset, self.k + 1
        if self.at is not None:
            lo, hi = max(0, self.at), min(ref.size, self.at + n)
            buf[lo - self.at : hi - self.at] = ref[lo:hi]
            self.at += n
            if self.at >= ref.size:
                self.at = None
        return buf

sink = SoundDeviceSink(device="pulse", blocksize=960, duration_s=(first - time.time_ns()) / 1e9 + count + 0.5)
asyncio.run(sink.run(Chirps()))
json.dump(mouths, open(out, "w"))
"""


async def _stamp_minus_mouth(url: str, env: dict[str, str], tmp: Path) -> tuple[list[float], int]:
    nc = await nats.connect(url)
    frames: list[Frame] = []

    async def on_msg(m: Msg) -> None:
        frames.append(parse_frame(m.data)[0])

    await nc.subscribe("citycast.audio.1", cb=on_msg)
    ingest = subprocess.Popen([sys.executable, "-c", INGEST, url, "9"], env=env)
    # PulseAudio's input takes ~1.3 s to open, then for about a second delivers every other block while its
    # reported capture times jump by ≈ 0.5 s: the chirps come once it runs steadily (a speaker who starts
    # talking within 3 s of the address may lose its first second; that start-up is PulseAudio's, not ours)
    first = time.time_ns() + 5_000_000_000
    mouths_path = tmp / "mouths.json"
    player = subprocess.Popen([sys.executable, "-c", PLAYER, str(first), "4", str(mouths_path)], env=env)
    try:
        async with asyncio.timeout(60):
            while ingest.poll() is None or player.poll() is None:
                await asyncio.sleep(0.1)
    finally:
        for p in (ingest, player):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert ingest.returncode == 0 and player.returncode == 0
    await settle(nc)
    await nc.close()
    mouths = json.loads(mouths_path.read_text())
    assert len(mouths) == 4
    # the stream as a site would decode it, each packet at its own stamp (gaps left silent)
    frames.sort(key=lambda f: f.seq)
    t0 = frames[0].ts_ns
    x = np.zeros((frames[-1].end_ns - t0) // FRAME_NS * FRAME_SAMPLES, np.float32)
    decoder = OpusDecoder()
    for f in frames:
        for i, packet in enumerate(f.packets):
            k = (f.packet_ts(i) - t0) // FRAME_NS
            x[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES] = decoder.decode(packet)
    stamps = [t0 + p * 1e9 / 48_000 for p in detect_markers(x)]
    assert len(stamps) == len(mouths), (stamps, mouths)  # every chirp heard: the k-th is the k-th played
    return [(s - m) / 1e6 for s, m in zip(stamps, mouths, strict=True)], len(frames)


def test_line_in_frames_are_stamped_when_the_voice_was_captured(
    pulse_env: dict[str, str],
    nats_server: EmbeddedNats,
    tmp_path: Path,
) -> None:
    extra_ms, frames = asyncio.run(_stamp_minus_mouth(nats_server.url, pulse_env, tmp_path))
    print(f"line-in stamp - mouth, ms: {[round(e, 2) for e in extra_ms]}")  # `pytest -s`: docs/benchmarks.md
    assert frames >= 300, frames
    lookahead_ms = OpusEncoder().lookahead_samples / 48
    frame_ms = FRAME_NS / 1e6
    # A chirp is stamped within one frame of when it reached the line-in, plus the codec's look-ahead (decoded
    # audio comes out that late); 3 ms for PulseAudio's own DAC/ADC time reports. Stamped on a grid after the
    # start instead, or by sample count across the card's start-up stall, it is hundreds of ms off.
    assert all(-frame_ms - 3 < e - lookahead_ms < frame_ms + 3 for e in extra_ms), extra_ms


STALL = r"""
import subprocess, sys, time
from citycast.media.sources import LineInSource, SourceError
source = LineInSource("pulse", stall_s=3.0)  # PulseAudio takes ~1.3 s to deliver its first block
blocks = source.blocks()
for _ in range(50):  # a second of audio: the card is running
    next(blocks)
subprocess.run(["pactl", "suspend-sink", "cc_null", "1"], check=True)  # its monitor, our line-in, goes quiet
t = time.monotonic()
try:
    for _ in range(500):
        next(blocks)
except SourceError as e:
    print(round(time.monotonic() - t, 2), e)
"""


def test_a_line_in_that_goes_quiet_fails_in_bounded_time(pulse_env: dict[str, str]) -> None:
    if shutil.which("pactl") is None:
        pytest.skip("`pactl` not installed (Debian pulseaudio-utils)")
    run = subprocess.run([sys.executable, "-c", STALL], env=pulse_env, capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr[-2000:]
    # the error, within its bound plus the stream's abort (a stop() would wait ~40 s on a suspended source)
    seconds, _, message = run.stdout.strip().partition(" ")
    assert "line-in stalled" in message, run.stdout
    assert 3.0 <= float(seconds) < 6.0, run.stdout
