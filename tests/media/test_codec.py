import time

import numpy as np
import pytest

from citycast.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.chirp import chirp
from citycast.media.codec import OpusDecoder, OpusEncoder, parse_opus_head, toc_frame_samples


def _tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _round_trip(pcm: np.ndarray, encoder: OpusEncoder, decoder: OpusDecoder) -> np.ndarray:
    out = [decoder.decode(encoder.encode(pcm[i : i + FRAME_SAMPLES])) for i in range(0, pcm.size, FRAME_SAMPLES)]
    return np.concatenate(out)


def test_extradata_is_opushead_and_lookahead_is_pre_skip() -> None:
    enc = OpusEncoder()
    assert enc.extradata.startswith(b"OpusHead")
    channels, pre_skip, rate = parse_opus_head(enc.extradata)
    assert (channels, rate) == (1, SAMPLE_RATE)
    assert enc.lookahead_samples == pre_skip == 312
    assert OpusEncoder(application="lowdelay").lookahead_samples < 312


def test_one_packet_per_frame_and_20ms_toc() -> None:
    enc = OpusEncoder()
    pcm = _tone(0.2)
    for i in range(0, pcm.size, FRAME_SAMPLES):
        packet = enc.encode(pcm[i : i + FRAME_SAMPLES])
        assert isinstance(packet, bytes) and len(packet) > 1
        assert toc_frame_samples(packet[0]) == FRAME_SAMPLES


def test_encode_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        OpusEncoder().encode(np.zeros(480, dtype=np.float32))


def test_round_trip_snr_after_lookahead() -> None:
    pcm = _tone(1.0)
    out = _round_trip(pcm, OpusEncoder(), OpusDecoder())
    assert out.dtype == np.float32 and out.size == pcm.size
    delay = 312
    ref, got = pcm[: pcm.size - delay], out[delay:]
    ref, got = ref[4800:], got[4800:]  # past the encoder's start-up
    snr = 10 * np.log10(np.sum(ref**2) / np.sum((got - ref) ** 2))
    assert snr > 15, snr


def test_round_trip_delay_is_exactly_the_lookahead() -> None:
    """A chirp placed at sample s comes out at s + 312: the group delay of encode→decode."""
    enc, dec = OpusEncoder(), OpusDecoder()
    pcm = np.zeros(SAMPLE_RATE, dtype=np.float32)
    start = 10_000
    marker = chirp()
    pcm[start : start + marker.size] = marker
    out = _round_trip(pcm, enc, dec)
    corr = np.correlate(out, marker, mode="valid")
    assert int(np.argmax(corr)) - start == enc.lookahead_samples


def test_conceal_lengths_and_values() -> None:
    enc, dec = OpusEncoder(), OpusDecoder()
    assert np.all(dec.conceal() == 0)  # nothing decoded yet: silence
    _round_trip(_tone(0.2), enc, dec)
    for n in (FRAME_SAMPLES, 480, 120, 2880, 1920, 360, 5 * FRAME_SAMPLES):
        plc = dec.conceal(n)
        assert plc.dtype == np.float32 and plc.shape == (n,)
        assert np.all(np.isfinite(plc)) and np.abs(plc).max() <= 1.5
    plc = OpusDecoder()
    _round_trip(_tone(0.2), OpusEncoder(), plc)
    assert np.abs(plc.conceal()).max() > 0.05  # a plausible continuation, not silence
    with pytest.raises(ValueError):
        dec.conceal(100)


def test_garbage_never_raises() -> None:
    enc, dec = OpusEncoder(), OpusDecoder()
    _round_trip(_tone(0.1), enc, dec)
    rng = np.random.default_rng(7)
    garbage = [b"", b"\xff", b"\xff\xfe garbage", bytes(3), bytes([0xFB, 0xFF, 0xFF, 0xFF])]
    garbage += [rng.bytes(int(rng.integers(2, 1500))) for _ in range(200)]
    for packet in garbage:
        out = dec.decode(packet)
        assert out.dtype == np.float32 and out.ndim == 1 and out.size > 0
        assert np.all(np.isfinite(out))
    assert dec.decode_errors > 0
    # still decodes real audio afterwards
    assert dec.decode(enc.encode(_tone(0.02))).shape == (FRAME_SAMPLES,)


def test_reset_forgets_state() -> None:
    enc, dec = OpusEncoder(), OpusDecoder()
    _round_trip(_tone(0.1), enc, dec)
    dec.reset()
    assert np.all(dec.conceal() == 0)
    assert dec.decode(enc.encode(_tone(0.02))).shape == (FRAME_SAMPLES,)


def test_cost_per_frame() -> None:
    """Not a benchmark, a guard: both well under the 20 ms a frame lasts (≈ 0.15 ms / 0.04 ms here)."""
    enc, dec = OpusEncoder(), OpusDecoder()
    pcm = _tone(2.0)
    frames = [pcm[i : i + FRAME_SAMPLES] for i in range(0, pcm.size, FRAME_SAMPLES)]
    t0 = time.perf_counter()
    packets = [enc.encode(f) for f in frames]
    t1 = time.perf_counter()
    for p in packets:
        dec.decode(p)
    t2 = time.perf_counter()
    assert (t1 - t0) / len(frames) < 0.005
    assert (t2 - t1) / len(frames) < 0.002


def test_bitrate_is_kept() -> None:
    """Constrained VBR by default: the average rate stays near the target (unconstrained spent ≈ 1.5×)."""
    rng = np.random.default_rng(3)
    speechlike = (_tone(2.0, 220.0) * (0.5 + 0.5 * np.sin(np.arange(96_000) / 3000))).astype(np.float32)
    speechlike += (0.01 * rng.standard_normal(speechlike.size)).astype(np.float32)
    for vbr in ("constrained", "off"):
        enc = OpusEncoder(64_000, vbr=vbr)
        sizes = [len(enc.encode(speechlike[i : i + FRAME_SAMPLES])) for i in range(0, speechlike.size, FRAME_SAMPLES)]
        assert abs(np.mean(sizes) * 8 * 50 - 64_000) < 6_400
    with pytest.raises(ValueError):
        OpusEncoder(vbr="sometimes")
