"""The site renders a whole frame per call to the playout engine, whatever the sink's block (issue 11)."""

from __future__ import annotations

import numpy as np
import pytest
from tests.media.pulses import RawDecoder, pulse_train

from citycast.media.audio import FRAME_NS, FRAME_SAMPLES, NS_PER_SAMPLE
from citycast.media.playout import ClockMap, PlayoutEngine
from citycast.media.render import Samples
from citycast.site.agent import StageTimer, TimedRenderer

T0 = 1_000_000_000_000


def _engine() -> PlayoutEngine:
    engine = PlayoutEngine(delay_ns=80_000_000, decoder_factory=RawDecoder)
    engine.set_clock(ClockMap(0, 0, 1.0))
    for k in range(150):  # 3 s of pulses, raw PCM
        packet = pulse_train(k * FRAME_SAMPLES, FRAME_SAMPLES).tobytes()
        engine.push(7, k, T0 + k * FRAME_NS, FRAME_NS, packet)
    return engine


def _counted(engine: PlayoutEngine, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    real = engine.render

    def render(n: int, dac_local_ns: int) -> Samples:
        calls.append((n, dac_local_ns))
        return real(n, dac_local_ns)

    monkeypatch.setattr(engine, "render", render)
    return calls


def test_half_frame_blocks_play_what_whole_frames_play_at_half_the_engine_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start = T0 + 80_000_000
    whole = _engine()
    reference = np.concatenate([whole.render(960, start + k * FRAME_NS) for k in range(100)])
    engine = _engine()
    calls = _counted(engine, monkeypatch)
    renderer = TimedRenderer(engine, StageTimer())
    half = np.concatenate([renderer.render(480, start + k * 10_000_000) for k in range(200)])
    assert len(calls) == 100 and all(n == FRAME_SAMPLES for n, _ in calls)
    assert [dac for _, dac in calls] == [start + k * FRAME_NS for k in range(100)]
    np.testing.assert_array_equal(half, reference)
    assert engine.stats.underruns == 0 and engine.stats.resyncs == 0


def test_odd_blocks_continue_the_rest_and_a_restarted_sink_drops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine()
    calls = _counted(engine, monkeypatch)
    renderer = TimedRenderer(engine, StageTimer())
    start = T0 + 80_000_000
    out = renderer.render(600, start)  # 960 rendered, 360 left
    assert out.shape == (600,) and calls == [(960, start)]
    second = start + round(600 * NS_PER_SAMPLE)
    out = renderer.render(600, second)  # the 360 left, then 240 of a new frame placed right after them
    assert out.shape == (600,) and calls[1] == (960, second + round(360 * NS_PER_SAMPLE))
    jumped = start + 500_000_000  # the sink restarted half a second later: what was left is not due any more
    renderer.render(480, jumped)
    assert calls[2] == (960, jumped)


def test_volume_applies_to_blocks_served_from_the_rest() -> None:
    engine = _engine()
    renderer = TimedRenderer(engine, StageTimer())
    renderer.gain = 0.0
    start = T0 + 80_000_000
    blocks = [renderer.render(480, start + k * 10_000_000) for k in range(20)]
    assert all(b.dtype == np.float32 and not b.any() for b in blocks)
