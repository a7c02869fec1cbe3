"""A site's fallback sound is read without PyAV in the site's process: a 48 kHz PCM WAV by the standard library,
anything else by a short-lived child; a bad file is a clear error."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np
import pytest
from tests.helpers import fresh_interpreter

from citycast.media.fallback_file import FallbackError, load

RATE = 48_000


def _wav(path: Path, x: np.ndarray, rate: int = RATE, width: int = 2) -> Path:
    """`x`: float in [-1, 1], shape (frames, channels)."""
    ints = np.round(x * (2 ** (8 * width - 1) - 1)).astype("<i4")
    # 24-bit: the low three bytes of each little-endian 32-bit sample
    raw = ints.astype("<i2").tobytes() if width == 2 else ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


def _tone(seconds: float, rate: int = RATE, hz: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float64)


def _loads_without_pyav(path: Path) -> tuple[int, bool]:
    """Load `path` in a fresh interpreter, as a site process does: samples read, and whether PyAV got imported."""
    code = (
        "import sys; from pathlib import Path; from citycast.media.fallback_file import load; "
        f"x = load(Path({str(path)!r})); print(0 if x is None else x.size, 'av' in sys.modules)"
    )
    n, imported = fresh_interpreter(code).split()
    return int(n), imported == "True"


@pytest.mark.parametrize("width", [2, 3])
def test_a_48k_wav_is_read_in_process_mixed_to_mono(tmp_path: Path, width: int) -> None:
    left, right = _tone(0.5), -0.25 * np.ones(24_000)
    path = _wav(tmp_path / "chime.wav", np.stack([left, right], axis=1), width=width)
    x = load(path)
    assert x is not None and x.dtype == np.float32 and x.size == 24_000
    np.testing.assert_allclose(x, (left + right) / 2, atol=2e-4)
    assert _loads_without_pyav(path) == (24_000, False)


def test_other_formats_are_decoded_by_a_child_and_pyav_stays_out_of_the_site(tmp_path: Path) -> None:
    resampled = _wav(tmp_path / "cd.wav", _tone(1.0, rate=44_100)[:, None], rate=44_100)
    ogg = tmp_path / "chime.ogg"
    with av.open(str(ogg), "w") as out:
        stream = out.add_stream("libopus", rate=RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(_tone(1.0).astype(np.float32)[None, :], format="flt", layout="mono")
        frame.sample_rate = RATE
        for p in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(p)
    for path in (resampled, ogg):
        n, imported = _loads_without_pyav(path)
        assert not imported
        assert abs(n - RATE) <= 0.05 * RATE, (path, n)  # a second at the bus's rate (codec padding aside)
        x = load(path)
        assert x is not None and 0.2 < float(np.sqrt(np.mean(x[4800:-4800] ** 2))) < 0.5  # the tone, not silence


def test_a_bad_fallback_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FallbackError, match="no such file"):
        load(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really" + bytes(range(256)) * 4)
    with pytest.raises(FallbackError, match=r"junk\.wav"):
        load(junk)
