from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest

from citycast.media.render import Samples
from citycast.rtp.codecs import decoder_for, encoder_for
from citycast.rtp.jitter import RtpReceiver
from citycast.rtp.packet import RtpPacket


def _stream(n: int, *, seq0: int = 1000, ts0: int = 5000, step: int = 160, ssrc: int = 42) -> list[RtpPacket]:
    """n 20 ms packets at 8 kHz whose payload names their index."""
    return [
        RtpPacket(0, (seq0 + i) & 0xFFFF, (ts0 + i * step) & 0xFFFFFFFF, ssrc, payload=i.to_bytes(4, "big"))
        for i in range(n)
    ]


def _run(
    rx: RtpReceiver, arrivals: Iterable[tuple[float, RtpPacket]], pops: int, period: float = 0.02
) -> list[int | None]:
    """Deliver (arrival time, packet) and pop every `period`; the popped payloads as indices."""
    pending = sorted(arrivals, key=lambda a: a[0])
    out: list[int | None] = []
    i = 0
    for k in range(pops):
        now = k * period
        while i < len(pending) and pending[i][0] <= now + 1e-9:
            rx.push(pending[i][1], pending[i][0])
            i += 1
        payload = rx.pop(now)
        out.append(None if payload is None else int.from_bytes(payload, "big"))
    return out


def _played(out: list[int | None]) -> list[int | None]:
    """Output from the first played packet on."""
    first = next(i for i, v in enumerate(out) if v is not None)
    return out[first:]


def test_in_order_stream_plays_after_target_delay() -> None:
    rx = RtpReceiver(8000, 20, 60)
    pkts = _stream(50)
    out = _run(rx, ((i * 0.02, p) for i, p in enumerate(pkts)), 60)
    assert out[:3] == [None, None, None]  # priming: 60 ms of buffer first
    assert out[3:53] == list(range(50))
    st = rx.stats
    assert (st.received, st.lost, st.late, st.duplicates, st.played) == (50, 0, 0, 0, 50)
    assert st.jitter == pytest.approx(0.0, abs=1e-6)


def test_sequence_and_timestamp_wrap() -> None:
    rx = RtpReceiver(8000, 20, 60)
    pkts = _stream(100, seq0=65_500, ts0=2**32 - 160 * 40)
    out = _run(rx, ((i * 0.02, p) for i, p in enumerate(pkts)), 110)
    assert _played(out)[:100] == list(range(100))
    st = rx.stats
    assert st.ext_highest_seq == 65_500 + 99  # crossed 65535 into the next cycle
    assert st.expected == 100 and st.lost == 0


def test_reordering_and_duplicates() -> None:
    rx = RtpReceiver(8000, 20, 60)
    pkts = _stream(60)
    arrivals = []
    for i, p in enumerate(pkts):
        t = i * 0.02 + (0.025 if i % 4 == 1 else 0.0)  # every 4th packet overtaken by the next
        arrivals.append((t, p))
        if i % 5 == 0:
            arrivals.append((t + 0.001, p))  # and duplicated
    out = _run(rx, arrivals, 70)
    assert _played(out)[:60] == list(range(60))
    st = rx.stats
    assert st.duplicates == 12 and st.lost == 0 and st.late == 0 and st.received == 60


def test_loss_and_late_packets() -> None:
    rx = RtpReceiver(8000, 20, 60)
    pkts = _stream(40)
    arrivals = [(i * 0.02, p) for i, p in enumerate(pkts) if i != 10]
    arrivals = [(t + (0.3 if p.seq == 1020 else 0.0), p) for t, p in arrivals]  # #20 arrives 300 ms late
    out = _run(rx, arrivals, 50)
    played = _played(out)
    assert played[:40] == [None if i in (10, 20) else i for i in range(40)]
    st = rx.stats
    # 20 did arrive (late), 10 never did
    assert st.lost == 1 and st.late == 1 and st.concealed >= 2


def test_interarrival_jitter_matches_rfc3550_a8() -> None:
    rx = RtpReceiver(8000, 20, 60)
    pkts = _stream(200)
    delays = [0.005 * (i % 3) for i in range(200)]  # 0, 5, 10 ms network delay in turn
    for i, p in enumerate(pkts):
        rx.push(p, i * 0.02 + delays[i])
    # the A.8 estimator computed independently, in timestamp units
    j = 0.0
    for i in range(1, 200):
        d = abs((delays[i] - delays[i - 1]) * 8000)
        j += (d - j) / 16
    assert rx.stats.jitter == pytest.approx(j, rel=1e-6)
    assert 40 < rx.stats.jitter < 70  # mean |ΔD| is 6.7 ms ≈ 53 units
    assert rx.stats.jitter_ms == pytest.approx(rx.stats.jitter / 8)


def test_ssrc_change_restarts() -> None:
    rx = RtpReceiver(8000, 20, 60)
    first = _stream(20, ssrc=1)
    second = [RtpPacket(0, 7 + i, 999 + 160 * i, 2, payload=(100 + i).to_bytes(4, "big")) for i in range(20)]
    arrivals = [(i * 0.02, p) for i, p in enumerate(first)] + [(0.4 + i * 0.02, p) for i, p in enumerate(second)]
    out = _run(rx, arrivals, 60)
    values = [v for v in out if v is not None]
    assert values[-20:] == list(range(100, 120))
    st = rx.stats
    assert st.ssrc == 2 and st.restarts == 1 and st.received == 20 and st.lost == 0


def test_sequence_jump_needs_confirmation() -> None:
    rx = RtpReceiver(8000, 20, 60)
    pkts = _stream(10)
    stray = RtpPacket(0, 40_000, 6000, 42, payload=b"\xff" * 4)
    for i, p in enumerate(pkts[:5]):
        rx.push(p, i * 0.02)
    rx.push(stray, 0.1)  # one wild sequence number: ignored
    assert rx.stats.restarts == 0 and rx.stats.received == 5
    rx.push(RtpPacket(0, 40_001, 6160, 42, payload=b"\xff" * 4), 0.12)  # confirmed: the sender restarted
    assert rx.stats.restarts == 1 and rx.stats.received == 1


def test_timestamp_jump_restarts_playout() -> None:
    rx = RtpReceiver(8000, 20, 60)
    pkts = _stream(30)
    jumped = [RtpPacket(0, p.seq + 30, p.timestamp + 8000 * 100, 42, payload=(50 + i).to_bytes(4, "big"))
              for i, p in enumerate(_stream(30))]  # fmt: skip
    arrivals = [(i * 0.02, p) for i, p in enumerate(pkts)] + [(0.6 + i * 0.02, p) for i, p in enumerate(jumped)]
    out = _run(rx, arrivals, 80)
    values = [v for v in out if v is not None]
    assert values == list(range(30)) + list(range(50, 80))
    assert rx.stats.restarts == 1 and rx.stats.lost == 0


def test_sender_paused_without_advancing_timestamps_recovers() -> None:
    """A run of late packets (the sender's timeline slid behind ours) resynchronises instead of dropping forever."""
    rx = RtpReceiver(8000, 20, 60)
    pkts = _stream(60)
    arrivals = [(i * 0.02 + (0.5 if i >= 20 else 0.0), p) for i, p in enumerate(pkts)]
    out = _run(rx, arrivals, 120)
    values = [v for v in out if v is not None]
    assert values[-20:] == list(range(40, 60))
    assert rx.stats.restarts == 1


def test_burst_after_stall_is_trimmed_back_to_target() -> None:
    rx = RtpReceiver(8000, 20, 60)
    pkts = _stream(100)
    # packets 20..39 are held up 400 ms by the network and then arrive together
    arrivals = [(max(i * 0.02, 0.78) if 20 <= i < 40 else i * 0.02, p) for i, p in enumerate(pkts)]
    out = _run(rx, arrivals, 110)
    st = rx.stats
    assert st.skipped + st.late > 0  # the stalled audio is not all played late
    played = [v for v in out if v is not None]
    assert played == sorted(played) and played[-60:] == list(range(40, 100))
    # after the burst latency is back at the target: packet 99 (sent at 1.98 s) plays within 60 ms + one frame
    assert out.index(99) * 0.02 - 99 * 0.02 <= 0.06 + 0.02 + 1e-9


def test_buffer_is_bounded() -> None:
    rx = RtpReceiver(8000, 20, 60, max_packets=64)
    for i, p in enumerate(_stream(5000)):
        rx.push(p, 0.0 + i * 1e-6)  # a flood, never popped
    assert rx.stats.buffered <= 64
    assert rx.stats.received == 5000


@dataclass(frozen=True)
class Spec:
    name: str
    clock_rate: int
    payload_type: int = 0


def _tone(seconds: float) -> Samples:
    """A 300 Hz → 3 kHz chirp: within every codec's band, and not periodic, so its alignment is unambiguous."""
    t = np.arange(int(48_000 * seconds)) / 48_000
    return (0.4 * np.sin(2 * np.pi * (300 * t + 2700 / (2 * seconds) * t**2))).astype(np.float32)


def _lag(y: Samples, x: Samples, max_lag: int) -> int:
    n = x.size + y.size
    xc = np.fft.irfft(np.fft.rfft(y, n) * np.conj(np.fft.rfft(x, n)), n)
    return int(np.argmax(xc[:max_lag]))


def _opus_packets(x: Samples, ptime_ms: int) -> list[bytes]:
    """What a peer packetising Opus at `ptime_ms` sends (our own encoder only makes 20 ms)."""
    ctx: Any = av.CodecContext.create("libopus", "w")
    ctx.sample_rate, ctx.layout, ctx.format, ctx.bit_rate = 48_000, "mono", "flt", 48_000
    ctx.time_base = Fraction(1, 48_000)
    ctx.options = {"application": "voip", "frame_duration": str(ptime_ms)}
    ctx.open()
    size = 48 * ptime_ms
    out = []
    for i in range(0, x.size - size + 1, size):
        frame = av.AudioFrame.from_ndarray(x[i : i + size].reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate, frame.pts = 48_000, i
        out += [bytes(p) for p in ctx.encode(frame)]
    return out


def _send(x: Samples, ptime_ms: int, spec: Spec) -> list[RtpPacket]:
    payloads = _opus_packets(x, ptime_ms) if spec.name == "opus" else encoder_for(spec, ptime_ms=ptime_ms).encode(x)
    step = spec.clock_rate * ptime_ms // 1000
    return [
        RtpPacket(spec.payload_type, (60_000 + i) & 0xFFFF, (2**32 - 3 * step + i * step) & 0xFFFFFFFF, 9, payload=p)
        for i, p in enumerate(payloads)
    ]


def _receive(
    pkts: list[RtpPacket], ptime_ms: int, spec: Spec, drop: Callable[[int], bool] = lambda i: False
) -> tuple[Samples, RtpReceiver, int]:
    """Received audio, the receiver, and how many concealments happened before the last packet played
    (the pops past the end of the stream conceal too)."""
    rx = RtpReceiver(spec.clock_rate, 20, 60, decoder=decoder_for(spec))
    frames = []
    concealed = -1
    i = 0
    for k in range(len(pkts) * ptime_ms // 20 + 10):
        now = k * 0.02
        while i < len(pkts) and i * ptime_ms / 1000 <= now + 1e-9:
            if not drop(i):
                rx.push(pkts[i], i * ptime_ms / 1000)
            i += 1
        frames.append(rx.pop_audio(now))
        if concealed < 0 and i == len(pkts) and not rx.stats.buffered:
            concealed = rx.stats.concealed
    assert {f.size for f in frames} == {960}
    return np.concatenate(frames), rx, concealed


@pytest.mark.parametrize("ptime_ms", [10, 20, 30, 40])
@pytest.mark.parametrize("codec", ["PCMU", "G722", "opus"])
def test_any_sender_ptime_comes_out_as_20ms_frames(codec: str, ptime_ms: int) -> None:
    spec = Spec(codec, 48_000 if codec == "opus" else 8000)
    if codec == "opus" and ptime_ms == 30:
        ptime_ms = 60  # Opus has no 30 ms frame; a 60 ms peer is the harder case anyway
    x = _tone(1.2)
    out, rx, concealed = _receive(_send(x, ptime_ms, spec), ptime_ms, spec)
    st = rx.stats
    assert st.lost == 0 and st.late == 0 and concealed == 0 and st.skipped == 0 and st.restarts == 0
    n = 50_000
    lag = _lag(out, x, 6000)
    assert np.corrcoef(out[lag : lag + n], x[:n])[0, 1] > 0.9
    assert 60 * 48 <= lag <= 60 * 48 + 400  # the target delay plus codec/resampler delay


def test_pop_audio_conceals_a_lost_30ms_packet() -> None:
    spec = Spec("PCMA", 8000, 8)
    x = _tone(1.0)
    out, rx, concealed = _receive(_send(x, 30, spec), 30, spec, drop=lambda i: i == 12)
    st = rx.stats
    assert st.lost == 1 and concealed == 1
    assert out.size == (33 * 30 // 20 + 10) * 960
    # the concealment repeats the tone rather than leaving a hole of silence at 60 ms + 12·30 ms
    hole = out[(60 + 360) * 48 : (60 + 380) * 48]
    assert np.abs(hole).max() > 0.1


def test_pop_audio_without_decoder_is_an_error() -> None:
    with pytest.raises(ValueError, match="decoder"):
        RtpReceiver(8000).pop_audio(0.0)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        RtpReceiver(0)
    with pytest.raises(ValueError):
        RtpReceiver(8000, ptime_ms=0)


def test_fast_sender_clock_keeps_latency_bounded() -> None:
    """A sender whose clock runs 2 % fast fills the buffer; the oldest audio is skipped, latency stays bounded."""
    rx = RtpReceiver(8000, 20, 60)
    pkts = _stream(500)
    depth = []
    pending = [(i * 0.0196, p) for i, p in enumerate(pkts)]
    i = 0
    for k in range(490):
        now = k * 0.02
        while i < len(pending) and pending[i][0] <= now:
            rx.push(pending[i][1], pending[i][0])
            i += 1
        rx.pop(now)
        depth.append(rx.stats.buffered)
    st = rx.stats
    assert st.skipped > 0 and st.late == 0
    assert max(depth) <= 7  # 60 ms target + 60 ms slack, in 20 ms packets, plus the one arriving
