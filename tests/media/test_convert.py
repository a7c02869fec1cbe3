from __future__ import annotations

import os

import av
import numpy as np
import pytest

from citycast.media.convert import AudioConverter


def threads() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/task"))


def frame(samples: np.ndarray, rate: int, fmt: str = "s16") -> av.AudioFrame:
    f = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format=fmt, layout="mono")
    f.sample_rate = rate
    return f


def test_converts_rate_and_format_like_pyav_and_flushes() -> None:
    t = np.arange(8000) / 8000
    tone = (np.sin(2 * np.pi * 440 * t) * 16000).astype(np.int16)
    ours = AudioConverter(format="flt", layout="mono", rate=48_000)
    theirs = av.AudioResampler(format="flt", layout="mono", rate=48_000)
    got_ours, got_theirs = [], []
    for chunk in np.split(tone, 50):  # 20 ms at a time, as a call delivers it
        got_ours += [f.to_ndarray().reshape(-1) for f in ours.convert(frame(chunk, 8000))]
        got_theirs += [f.to_ndarray().reshape(-1) for f in theirs.resample(frame(chunk, 8000))]
    got_ours += [f.to_ndarray().reshape(-1) for f in ours.convert(None)]
    got_theirs += [f.to_ndarray().reshape(-1) for f in theirs.resample(None)]
    a, b = np.concatenate(got_ours), np.concatenate(got_theirs)
    assert a.dtype == np.float32 and a.size == b.size == 48_000  # every input sample out, flushed at the end
    assert np.max(np.abs(a - b)) < 1e-6  # the same filters, the same result


def test_runs_on_the_callers_thread() -> None:
    before = threads()
    converters = [AudioConverter(rate=16_000) for _ in range(8)]
    for c in converters:
        c.convert(frame(np.zeros(960, np.float32), 48_000, "flt"))
    assert threads() == before  # av.AudioResampler would have started one thread per core for each


def test_a_frame_that_does_not_match_the_first_is_refused() -> None:
    c = AudioConverter(rate=48_000)
    assert c.convert(None) == []  # nothing yet: nothing to flush
    c.convert(frame(np.zeros(160, np.int16), 8000))
    with pytest.raises(ValueError, match="set up for"):
        c.convert(frame(np.zeros(320, np.int16), 16000))
