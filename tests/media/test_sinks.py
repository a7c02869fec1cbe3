"""Timed, WAV and spec-built sinks, with fake renderers (no sound card needed)."""

from __future__ import annotations

import asyncio
import json
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from tests.helpers import let_time_pass

from citycast.clock.local import SkewedClock, SystemClock
from citycast.media.render import Samples
from citycast.media.sinks import SinkError, SoundDeviceSink, TimedSink, WavSink, open_sink


class RecordingRenderer:
    """Serves a counting ramp and records every (n, dac_local_ns, wall-clock time of the call)."""

    def __init__(self, block_once_s: float = 0.0, block_at_call: int = 3) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.served = 0
        self.block_once_s = block_once_s
        self.block_at_call = block_at_call

    def render(self, n: int, dac_local_ns: int) -> Samples:
        self.calls.append((n, dac_local_ns, time.time_ns()))
        if self.block_once_s and len(self.calls) == self.block_at_call:
            time.sleep(self.block_once_s)  # a renderer that hogs the loop once
        out = ((np.arange(self.served, self.served + n) % 2000) / 2000.0 - 0.5).astype(np.float32)
        self.served += n
        return out


@pytest.mark.parametrize("ppm", [0.0, 80.0, -150.0])
async def test_dac_instants_follow_dac_rate_through_local_clock(ppm: float) -> None:
    clock = SkewedClock(offset_ns=1_234_567_890, ppm=-37.0)
    renderer = RecordingRenderer()
    logged: list[int] = []
    sink = TimedSink(clock, dac_ppm=ppm, block=960, duration_s=0.3, on_block=lambda t, s: logged.append(t))
    await sink.run(renderer)

    assert sink.blocks == 15 == len(renderer.calls) == len(logged)
    assert sink.start_true_ns is not None
    step = 960 * 1e9 / (48_000 * (1 + ppm * 1e-6))
    for k, t in enumerate(logged):
        assert abs(t - (sink.start_true_ns + k * step)) <= 1
        assert t == round(sink.true_time_of_sample(k * 960))
    # render() got exactly those instants, read on the site's skewed local clock
    assert [c[1] for c in renderer.calls] == [clock.at(t) for t in logged]
    assert all(c[0] == 960 for c in renderer.calls)
    # ... and was called about lead_ns (20 ms) before each instant
    leads = [t - c[2] for t, c in zip(logged, renderer.calls, strict=True)]
    assert min(leads) > 0
    assert np.median(leads) == pytest.approx(20e6, abs=5e6)
    assert sink.xruns == 0


async def test_system_clock_default_and_run_duration() -> None:
    renderer = RecordingRenderer()
    sink = TimedSink(block=480, duration_s=0.2)
    assert isinstance(sink.clock, SystemClock)
    t0 = time.time_ns()
    await sink.run(renderer)
    elapsed = (time.time_ns() - t0) / 1e9
    # runs until the last sample has reached the DAC: lead + duration
    assert 0.2 <= elapsed < 0.35
    assert [c[1] for c in renderer.calls][:2] == [
        round(sink.true_time_of_sample(0)),
        round(sink.true_time_of_sample(480)),
    ]


async def test_wav_and_sidecar_date_every_sample(tmp_path: Path) -> None:
    wav_path = tmp_path / "site.wav"
    logged: list[tuple[int, Samples]] = []
    sink = TimedSink(
        SkewedClock(offset_ns=-5_000_000, ppm=20.0),
        dac_ppm=50.0,
        block=960,
        wav_path=wav_path,
        duration_s=0.25,
        on_block=lambda t, s: logged.append((t, s.copy())),
    )
    await sink.run(RecordingRenderer())

    meta = json.loads((tmp_path / "site.wav.json").read_text())
    assert meta["start_true_ns"] == sink.start_true_ns
    assert meta["block"] == 960
    assert meta["dac_ppm"] == 50.0
    assert meta["sample_rate"] == 48_000
    assert meta["blocks"] == 13  # ceil(0.25 s / 20 ms)
    assert meta["xruns"] == 0

    with wave.open(str(wav_path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 48_000)
        assert w.getnframes() == 13 * 960
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    rendered = np.concatenate([s for _, s in logged])
    assert np.max(np.abs(pcm / 32767.0 - rendered)) < 1e-4
    # the sidecar formula dates sample i exactly as the sink logged each block
    for k, (t, _) in enumerate(logged):
        i = k * 960
        formula = meta["start_true_ns"] + i * 1e9 / (meta["sample_rate"] * (1 + meta["dac_ppm"] * 1e-6))
        assert abs(formula - t) <= 1


async def test_a_long_block_is_asked_for_a_block_ahead() -> None:
    # A card of two 50 ms periods wakes its writer with one period still to play: a 20 ms lead would count a
    # render 30 ms late as in time on such a card, and one 25 ms late as an xrun that a card would not have.
    renderer = RecordingRenderer()
    sink = TimedSink(block=2400, duration_s=0.25, on_block=lambda t, s: None)
    assert sink.lead_ns == 50_000_000
    assert TimedSink(block=480).lead_ns == 20_000_000  # short blocks keep the 20 ms floor
    await sink.run(renderer)
    leads = [round(sink.true_time_of_sample(k * 2400)) - c[2] for k, c in enumerate(renderer.calls)]
    assert len(leads) == 5 and min(leads) > 0
    assert np.median(leads) == pytest.approx(50e6, abs=10e6)


async def test_slow_render_counts_xrun_and_keeps_schedule() -> None:
    renderer = RecordingRenderer(block_once_s=0.06, block_at_call=5)
    logged: list[int] = []
    sink = TimedSink(block=960, duration_s=0.5, on_block=lambda t, s: logged.append(t))
    await sink.run(renderer)
    assert sink.xruns >= 1
    assert sink.blocks == len(logged) == 25  # every block still rendered and logged
    assert np.allclose(np.diff(logged), 20_000_000, atol=1)


async def test_cancellation_is_prompt_and_closes_wav(tmp_path: Path) -> None:
    wav_path = tmp_path / "cut.wav"
    sink = TimedSink(wav_path=wav_path)  # unbounded
    task = asyncio.create_task(sink.run(RecordingRenderer()))
    await let_time_pass(0.15)  # some blocks rendered into the file
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 0.05
    with wave.open(str(wav_path), "rb") as w:  # header fixed up: a valid file with what was rendered
        assert w.getnframes() == sink.blocks * 960
        assert sink.blocks >= 5
    assert json.loads((tmp_path / "cut.wav.json").read_text())["blocks"] == sink.blocks


async def test_wrong_sample_count_is_a_sink_error() -> None:
    class Short:
        def render(self, n: int, dac_local_ns: int) -> Samples:
            return np.zeros(n - 1, dtype=np.float32)

    with pytest.raises(SinkError, match="expected"):
        await TimedSink(duration_s=0.05).run(Short())


async def test_unpaced_wav_sink_renders_fast(tmp_path: Path) -> None:
    sink = WavSink(tmp_path / "offline.wav", paced=False, duration_s=5.0, start_true_ns=1_000_000_000)
    t0 = time.monotonic()
    renderer = RecordingRenderer()
    await sink.run(renderer)
    assert time.monotonic() - t0 < 1.0
    assert sink.blocks == 250 and sink.xruns == 0
    assert renderer.calls[-1][1] == 1_000_000_000 + 249 * 20_000_000
    with wave.open(str(tmp_path / "offline.wav"), "rb") as w:
        assert w.getnframes() == 250 * 960


def test_open_sink_specs(tmp_path: Path) -> None:
    clock = SystemClock()
    timed = open_sink("timed", clock)
    assert isinstance(timed, TimedSink) and timed.dac_ppm == 0.0
    skewed = open_sink("timed:-42.5", clock)
    assert isinstance(skewed, TimedSink) and skewed.dac_ppm == -42.5
    wav = open_sink(f"wav:{tmp_path / 'x.wav'}", clock)
    assert isinstance(wav, WavSink) and wav.wav_path == tmp_path / "x.wav" and wav.dac_ppm == 0.0
    for bad in ("timed:fast", "wav:", "speaker", ""):
        with pytest.raises(SinkError):
            open_sink(bad, clock)


def test_true_time_needs_a_start() -> None:
    with pytest.raises(SinkError):
        TimedSink().true_time_of_sample(0)
    assert TimedSink(start_true_ns=10, dac_ppm=0).true_time_of_sample(48_000) == 10 + 1e9


def test_missing_output_device_is_a_clear_error() -> None:
    with pytest.raises(SinkError, match="no audio output device"):
        SoundDeviceSink(device="citycast-no-such-device")
