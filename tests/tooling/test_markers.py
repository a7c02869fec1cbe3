import time
import wave
from pathlib import Path

import numpy as np
import pytest

from citycast.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.codec import OpusDecoder, OpusEncoder
from citycast.media.sources import read_audio
from citycast.tooling.markers import (
    chirp,
    chirp_at,
    correlate_lag,
    detect_markers,
    detect_markers_in_wav,
)

ASSET = Path(__file__).parents[2] / "src" / "citycast" / "assets" / "speech.opus"


def _place(length: int, starts: list[float]) -> np.ndarray:
    """Markers at fractional starts, each sampled from the continuous chirp (a true fractional delay)."""
    x = np.zeros(length)
    n = chirp().size
    for s in starts:
        i0 = int(np.floor(s)) - 1
        m = np.arange(i0, i0 + n + 3)
        x[i0 : i0 + n + 3] += chirp_at(m - s)
    return x.astype(np.float32)


def test_chirp_shape() -> None:
    c = chirp()
    assert c.dtype == np.float32 and c.size == 960
    assert 0.45 < np.abs(c).max() <= 0.5
    assert abs(c[0]) < 1e-6 and abs(c[-1]) < 1e-6
    assert np.allclose(chirp_at(np.arange(960)), c, atol=1e-7)


def test_integer_positions_exact() -> None:
    starts = [1000.0, 49_000.0, 97_000.0]
    found = detect_markers(_place(150_000, starts))
    assert np.allclose(found, starts, atol=1e-3)


def test_fractional_accuracy_clean() -> None:
    rng = np.random.default_rng(1)
    starts = [k * 24_000 + 500 + rng.uniform(0, 1) for k in range(40)]
    found = detect_markers(_place(41 * 24_000, starts))
    assert len(found) == len(starts)
    assert np.max(np.abs(np.array(found) - starts)) < 0.05


def test_accuracy_in_noise_and_at_low_volume() -> None:
    rng = np.random.default_rng(2)
    starts = [k * 48_000 + 700 + rng.uniform(0, 1) for k in range(10)]
    x = 0.1 * _place(11 * 48_000, starts) + rng.normal(0, 0.003, 11 * 48_000).astype(np.float32)
    found = detect_markers(x)
    assert len(found) == len(starts)
    assert np.max(np.abs(np.array(found) - starts)) < 0.1


def test_accuracy_after_opus_at_64kbps() -> None:
    rng = np.random.default_rng(3)
    starts = [k * 48_000 + 3000 + rng.uniform(0, 1) for k in range(15)]
    x = _place(16 * 48_000, starts)
    enc, dec = OpusEncoder(64_000), OpusDecoder()
    y = np.concatenate([dec.decode(enc.encode(x[i : i + FRAME_SAMPLES])) for i in range(0, x.size, FRAME_SAMPLES)])
    found = np.array(detect_markers(y)) - enc.lookahead_samples
    assert len(found) == len(starts)
    errors = found - np.array(starts)
    assert np.max(np.abs(errors)) < 0.5
    assert abs(np.mean(errors)) < 0.1  # the round trip delay is the lookahead, nothing more


def test_silence_and_noise_give_nothing() -> None:
    rng = np.random.default_rng(4)
    assert detect_markers(np.zeros(100_000, dtype=np.float32)) == []
    assert detect_markers(rng.normal(0, 0.1, 200_000).astype(np.float32)) == []
    assert detect_markers(np.zeros(10, dtype=np.float32)) == []


def test_speech_is_not_a_marker() -> None:
    assert detect_markers(read_audio(ASSET)) == []


def test_min_spacing() -> None:
    x = _place(20_000, [1000.0, 1500.0 + 960])
    assert len(detect_markers(x)) == 2
    assert len(detect_markers(x, min_spacing_samples=5000)) == 1


def test_long_input_is_fast(tmp_path: Path) -> None:
    period = SAMPLE_RATE
    starts = [k * period + 123.25 for k in range(119)]
    x = _place(120 * SAMPLE_RATE, starts)
    t0 = time.perf_counter()
    found = detect_markers(x)
    elapsed = time.perf_counter() - t0
    assert len(found) == 119
    assert np.max(np.abs(np.array(found) - starts)) < 0.05
    assert elapsed < 2.0, elapsed


def test_detect_in_wav(tmp_path: Path) -> None:
    starts = [2000.0, 50_000.0]
    x = _place(100_000, starts)
    path = tmp_path / "site.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    found = detect_markers_in_wav(path)
    assert np.allclose(found, starts, atol=0.05)


def _fractional_delay(x: np.ndarray, delay: float, pad: int) -> np.ndarray:
    """x delayed by `delay` samples (band-limited, via the FFT), with `pad` zeros room at both ends."""
    y = np.concatenate([np.zeros(pad), x.astype(np.float64), np.zeros(pad)])
    n = y.size
    spectrum = np.fft.rfft(y) * np.exp(-2j * np.pi * np.fft.rfftfreq(n) * delay)
    return np.fft.irfft(spectrum, n)


@pytest.mark.parametrize("shift", [12_345.0, 777.3, 20_000.71])
def test_correlate_lag_speech(shift: float) -> None:
    clip = read_audio(ASSET)
    pad = 30_000
    signal = 0.3 * _fractional_delay(clip, shift, pad)  # clip starts at pad + shift
    rng = np.random.default_rng(5)
    signal += rng.normal(0, 0.001, signal.size)
    lag, peak = correlate_lag(clip, signal.astype(np.float32))
    assert abs(lag - (pad + shift)) < 0.5, lag
    assert peak > 0.95


def test_correlate_lag_after_opus() -> None:
    clip = read_audio(ASSET)
    signal = np.concatenate([np.zeros(5000, np.float32), clip, np.zeros(5000, np.float32)])
    signal = np.concatenate([signal, np.zeros(-signal.size % FRAME_SAMPLES, np.float32)])
    enc, dec = OpusEncoder(), OpusDecoder()
    y = np.concatenate(
        [dec.decode(enc.encode(signal[i : i + FRAME_SAMPLES])) for i in range(0, signal.size, FRAME_SAMPLES)]
    )
    lag, peak = correlate_lag(clip, y)
    assert abs(lag - (5000 + enc.lookahead_samples)) < 0.5
    assert peak > 0.8


def test_correlate_lag_rejects_short_signal() -> None:
    with pytest.raises(ValueError):
        correlate_lag(np.ones(100), np.ones(50))
