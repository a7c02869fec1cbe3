import itertools
import wave
from pathlib import Path

import numpy as np
import pytest

from citycast.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.chirp import chirp
from citycast.media.sources import (
    FileSource,
    LineInSource,
    MarkerSource,
    SourceError,
    ToneSource,
    open_source,
    read_audio,
)
from citycast.tooling.markers import detect_markers

ASSET = Path(__file__).parents[2] / "src" / "citycast" / "assets" / "speech.opus"


def _write_wav(path: Path, data: np.ndarray, rate: int) -> None:
    """`data` shaped (samples, channels), float in [-1, 1] → 16-bit WAV."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(data.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(data, -1, 1) * 32767).astype("<i2").tobytes())


def _check_blocks(blocks: list[np.ndarray]) -> None:
    assert blocks
    for b in blocks:
        assert b.dtype == np.float32 and b.shape == (FRAME_SAMPLES,)


def test_speech_asset() -> None:
    assert ASSET.stat().st_size < 100_000
    source = FileSource(ASSET)
    assert source.duration_s is not None and 6.0 < source.duration_s < 10.0
    blocks = list(source.blocks())
    _check_blocks(blocks)
    seconds = len(blocks) * FRAME_SAMPLES / SAMPLE_RATE
    assert abs(seconds - source.duration_s) < 0.03
    audio = np.concatenate(blocks)
    rms = np.sqrt(np.mean(audio**2))
    assert 0.03 < rms < 0.5 and np.abs(audio).max() <= 1.0


def test_wav_44k1_stereo_becomes_48k_mono(tmp_path: Path) -> None:
    rate, seconds, freq = 44_100, 1.5, 1000.0
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.4 * np.sin(2 * np.pi * freq * t)
    path = tmp_path / "in.wav"
    _write_wav(path, np.stack([tone, tone], axis=1), rate)
    source = FileSource(path)
    assert (source.input_rate, source.input_channels) == (rate, 2)
    blocks = list(source.blocks())
    _check_blocks(blocks)
    audio = np.concatenate(blocks)
    assert abs(audio.size - seconds * SAMPLE_RATE) <= FRAME_SAMPLES
    body = audio[4800:60_000]
    spectrum = np.abs(np.fft.rfft(body * np.hanning(body.size)))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / body.size
    assert abs(peak_hz - freq) < 2
    assert 0.1 < np.abs(body).max() < 0.6


def test_last_block_zero_padded(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    _write_wav(path, np.full((1000, 1), 0.25), SAMPLE_RATE)
    blocks = list(FileSource(path).blocks())
    assert len(blocks) == 2
    assert np.allclose(blocks[0], 0.25, atol=1e-4)
    assert np.allclose(blocks[1][:40], 0.25, atol=1e-4) and np.all(blocks[1][40:] == 0)


def test_loop_is_seamless(tmp_path: Path) -> None:
    path = tmp_path / "ramp.wav"
    ramp = (np.arange(1000) / 1000 * 0.5).reshape(-1, 1)
    _write_wav(path, ramp, SAMPLE_RATE)
    source = FileSource(path, loop=True)
    audio = np.concatenate(list(itertools.islice(source.blocks(), 5)))
    expected = np.tile(np.round(ramp[:, 0] * 32767) / 32767, 5)[: audio.size]
    assert np.allclose(audio, expected, atol=1e-4)


def test_missing_file() -> None:
    with pytest.raises(SourceError, match="no such file"):
        FileSource("/nonexistent/x.mp3")


def test_non_audio_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp3"
    path.write_text("this is not audio at all\n" * 50)
    with pytest.raises(SourceError, match="cannot decode") as info:
        FileSource(path)
    assert "notes.mp3" in str(info.value)


def test_open_source_file_errors_are_source_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(SourceError):
        open_source(str(empty))


def test_marker_positions_exact() -> None:
    source = MarkerSource(0.5, count=6)
    audio = np.concatenate(list(source.blocks()))
    assert audio.size == 6 * 24_000 and audio.size % FRAME_SAMPLES == 0
    c = chirp()
    for k in range(6):
        start = k * source.period_samples
        assert np.array_equal(audio[start : start + c.size], c)
        assert np.all(audio[start + c.size : start + source.period_samples] == 0)
    assert np.allclose(detect_markers(audio), [k * 24_000 for k in range(6)], atol=1e-3)


def test_marker_period_not_block_aligned() -> None:
    source = MarkerSource(0.0301)  # 1445 samples: markers straddle block edges
    audio = np.concatenate(list(itertools.islice(source.blocks(), 50)))
    c = chirp()
    for k in range(audio.size // 1445 - 1):
        assert np.array_equal(audio[k * 1445 : k * 1445 + c.size], c)


def test_marker_endless() -> None:
    blocks = list(itertools.islice(MarkerSource().blocks(), 200))
    _check_blocks(blocks)


def test_tone() -> None:
    blocks = list(ToneSource(440.0, duration_s=0.1).blocks())
    _check_blocks(blocks)
    audio = np.concatenate(blocks)
    t = np.arange(audio.size) / SAMPLE_RATE
    assert np.allclose(audio, 0.5 * np.sin(2 * np.pi * 440 * t), atol=1e-5)


def test_line_in_without_device() -> None:
    try:
        source = LineInSource()
    except SourceError as exc:
        assert "line-in" in str(exc)
    else:  # a machine with a sound card: it should at least describe itself
        assert source.description.startswith("line-in")


def test_open_source_specs() -> None:
    assert isinstance(open_source("marker"), MarkerSource)
    marker = open_source("marker:0.5")
    assert isinstance(marker, MarkerSource) and marker.period_samples == 24_000
    tone = open_source("tone:1000")
    assert isinstance(tone, ToneSource) and tone.frequency == 1000
    assert isinstance(open_source(str(ASSET)), FileSource)
    with pytest.raises(SourceError):
        open_source("marker:fast")


def test_read_audio() -> None:
    audio = read_audio(ASSET)
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size > 6 * SAMPLE_RATE
