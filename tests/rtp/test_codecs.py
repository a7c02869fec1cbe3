from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from citycast.media.render import Samples
from citycast.rtp.codecs import CodecError, PcmDecoder, decoder_for, encoder_for
from citycast.rtp.jitter import RtpReceiver
from citycast.rtp.packet import RtpPacket

G711A_PCAP = Path("/usr/share/sip-tester/g711a.pcap")


@dataclass(frozen=True)
class Spec:
    name: str
    clock_rate: int
    payload_type: int = 96


SPECS = {"PCMU": Spec("PCMU", 8000, 0), "PCMA": Spec("PCMA", 8000, 8), "G722": Spec("G722", 8000, 9),
         "opus": Spec("opus", 48000, 111)}  # fmt: skip


def _pcap(path: Path) -> list[tuple[float, bytes]]:
    """(capture time, UDP payload) of each frame of an Ethernet/IPv4 classic pcap."""
    data = path.read_bytes()
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4
    out = []
    offset = 24
    while offset + 16 <= len(data):
        sec, usec, incl = struct.unpack_from("<III", data, offset)
        ip = data[offset + 16 + 14 : offset + 16 + incl]
        offset += 16 + incl
        out.append((sec + usec / 1e6, ip[(ip[0] & 0x0F) * 4 + 8 :]))
    return out


def _alaw_reference(payload: bytes) -> Samples:
    """G.711 A-law expansion straight from the recommendation, independent of FFmpeg."""
    out = np.empty(len(payload), dtype=np.float32)
    for i, byte in enumerate(payload):
        a = byte ^ 0x55
        exp, mant = (a >> 4) & 7, a & 0x0F
        mag = (mant << 4) + 8 if exp == 0 else ((mant << 4) + 0x108) << (exp - 1)
        out[i] = (mag if a & 0x80 else -mag) / 32768.0
    return out


def _tone(seconds: float = 1.0) -> Samples:
    t = np.arange(int(48_000 * seconds)) / 48_000
    return (0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1300 * t)).astype(np.float32)


def _aligned_corr(y: Samples, x: Samples, max_lag: int = 2000) -> tuple[float, int]:
    n = min(x.size, y.size - max_lag) - 2000
    lag = max(range(max_lag), key=lambda k: float(np.dot(y[k : k + n], x[:n])))
    return float(np.corrcoef(y[lag : lag + n], x[:n])[0, 1]), lag


@pytest.mark.parametrize("name", list(SPECS))
def test_round_trip_tone(name: str) -> None:
    spec = SPECS[name]
    enc, dec = encoder_for(spec), decoder_for(spec)
    x = _tone()
    payloads: list[bytes] = []
    for i in range(0, x.size, 480):  # 10 ms pushes: the encoder gathers its 20 ms itself
        payloads += enc.encode(x[i : i + 480])
    assert len(payloads) == 50
    assert enc.payload_type == spec.payload_type
    if name == "opus":
        assert enc.timestamp_step() == 960
    else:
        assert enc.timestamp_step() == 160  # G.722 too: RTP clock 8000 though the audio is 16 kHz
        assert {len(p) for p in payloads} == {160}
    pieces = [dec.decode(p) for p in payloads]
    assert {p.size for p in pieces} == {960}
    y = np.concatenate(pieces)
    corr, lag = _aligned_corr(y, x)
    assert corr > 0.9, (name, corr, lag)
    gain = float(np.std(y[lag : lag + 40_000]) / np.std(x[:40_000]))
    assert 0.8 < gain < 1.2, gain


def test_g711a_capture_decodes_to_speech_band_audio() -> None:
    packets = [RtpPacket.parse(d) for _, d in _pcap(G711A_PCAP)]
    assert {p.payload_type for p in packets} == {8}
    assert {len(p.payload) for p in packets} == {240}  # this capture is 30 ms per packet
    dec = decoder_for(SPECS["PCMA"])
    y = np.concatenate([dec.decode(p.payload) for p in packets])
    assert y.size == len(packets) * 240 * 6
    ref = np.concatenate([_alaw_reference(p.payload) for p in packets])
    # FFmpeg's A-law agrees with the recommendation's table, through our resampling to 48 kHz
    corr, lag = _aligned_corr(y[::6], ref, max_lag=100)
    assert corr > 0.99, (corr, lag)
    rms = float(np.sqrt(np.mean(y**2)))
    assert 0.01 < rms < 0.5
    assert rms == pytest.approx(float(np.sqrt(np.mean(ref**2))), rel=0.05)
    spectrum = np.abs(np.fft.rfft(y - y.mean())) ** 2
    freqs = np.fft.rfftfreq(y.size, 1 / 48_000)
    voice = spectrum[(freqs > 100) & (freqs < 3800)].sum() / spectrum.sum()
    assert voice > 0.8, voice  # a telephone-band signal, not noise or a resampling image


def test_g711a_capture_through_receiver_at_30ms_ptime() -> None:
    """A 30 ms sender through the jitter buffer still comes out as our 20 ms frames, whole and in order."""
    captured = _pcap(G711A_PCAP)
    dec = decoder_for(SPECS["PCMA"])
    rx = RtpReceiver(8000, 20, 60, decoder=decoder_for(SPECS["PCMA"]))
    direct = np.concatenate([dec.decode(RtpPacket.parse(d).payload) for _, d in captured])
    t0 = captured[0][0]
    frames: list[Samples] = []
    i = 0
    for step in range(int((captured[-1][0] - t0) / 0.02) + 20):
        now = step * 0.02
        while i < len(captured) and captured[i][0] - t0 <= now:
            rx.push(RtpPacket.parse(captured[i][1]), now)
            i += 1
        frames.append(rx.pop_audio(now))
    assert {f.size for f in frames} == {960}
    out = np.concatenate(frames)
    st = rx.stats
    assert st.received == len(captured) and st.lost == 0 and st.duplicates == 0
    assert st.played == len(captured)
    # the first packet arrived at 0; playout starts at the first pop 60 ms later, i.e. with the 4th frame
    assert not np.any(frames[0]) and not np.any(frames[2])
    corr, lag = _aligned_corr(out[3 * 960 :], direct, max_lag=50)
    assert lag == 0 and corr > 0.999, (corr, lag)


def test_pcm_concealment_repeats_then_fades_to_silence() -> None:
    dec = PcmDecoder("PCMU")
    enc = encoder_for(SPECS["PCMU"])
    x = _tone(0.2)
    for payload in enc.encode(x):
        last = dec.decode(payload)
    first = dec.conceal(960)
    second = dec.conceal(960)
    third = dec.conceal(960)
    # the first lost frame repeats the last one, fading from full level
    assert np.allclose(first[:20], last[:20], atol=0.01)
    assert np.corrcoef(first[:480], last[:480])[0, 1] > 0.99
    assert np.abs(first[:480]).max() > 0.3
    assert np.abs(second).max() < np.abs(first).max()
    assert np.abs(third).max() == 0.0
    assert dec.concealed_samples == 3 * 960
    # and recovery decodes normally afterwards
    after = dec.decode(enc.encode(x[:960])[0])
    assert np.abs(after[480:]).max() > 0.3


def test_opus_concealment_and_garbage_never_raise() -> None:
    dec = decoder_for(SPECS["opus"])
    enc = encoder_for(SPECS["opus"])
    payloads = enc.encode(_tone(0.1))
    for p in payloads:
        dec.decode(p)
    assert dec.conceal(960).size == 960
    assert dec.conceal(480).size == 480
    rng = np.random.default_rng(1)
    for _ in range(50):
        assert dec.decode(rng.bytes(int(rng.integers(0, 200)))).dtype == np.float32
    for name in ("PCMU", "PCMA", "G722"):
        pcm = decoder_for(SPECS[name])
        assert pcm.decode(b"").size == 960  # empty: concealed, not an exception
        assert pcm.decode(rng.bytes(160)).size == 960


def test_g722_is_16khz_audio_on_an_8khz_clock() -> None:
    enc = encoder_for(SPECS["G722"])
    dec = decoder_for(SPECS["G722"])
    t = np.arange(48_000) / 48_000
    x = (0.3 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)  # above G.711's 4 kHz band
    y = np.concatenate([dec.decode(p) for p in enc.encode(x)])
    corr, _ = _aligned_corr(y, x, max_lag=400)
    assert corr > 0.9
    assert dec.clock_rate == 8000


def test_unsupported_codecs_are_refused() -> None:
    with pytest.raises(CodecError, match="unsupported"):
        decoder_for(Spec("GSM", 8000))
    with pytest.raises(CodecError, match="8000"):
        decoder_for(Spec("G722", 16000))
    with pytest.raises(CodecError, match="48000"):
        encoder_for(Spec("opus", 16000))
    assert issubclass(CodecError, ValueError)
