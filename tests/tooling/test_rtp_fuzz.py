"""Property fuzzing of the RTP path: 10,500 hypothesis examples over the parsers and the jitter buffer.

Only the documented exceptions may come out (all `ValueError` subclasses: `RtpError`, `RtcpError`, `DtmfError`);
the receiver's state stays bounded; a packet that parses re-encodes to the same packet.
"""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citycast.rtp.dtmf import DtmfError, Rfc4733Decoder, parse_sip_info
from citycast.rtp.jitter import SEEN_WINDOW, RtpReceiver
from citycast.rtp.packet import RtpError, RtpExtension, RtpPacket
from citycast.rtp.rtcp import RtcpError, parse_compound
from citycast.tooling.rtp_fuzz import fuzz_rtp


def fast(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)


packets = st.builds(
    RtpPacket,
    payload_type=st.sampled_from([0, 8, 9, 101, 111, 127]),
    seq=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.sampled_from([1, 2, 0xFFFFFFFF]),
    payload=st.binary(max_size=64),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.none()
    | st.builds(RtpExtension, st.integers(0, 0xFFFF), st.binary(max_size=12).map(lambda b: b[: len(b) // 4 * 4])),
    padding=st.integers(0, 255),
)


def _mutated(data: bytes, flips: list[tuple[int, int]], cut: int) -> bytes:
    buf = bytearray(data)
    for pos, val in flips:
        if buf:
            buf[pos % len(buf)] = val
    return bytes(buf[: len(buf) - cut % (len(buf) + 1)])


@fast(3000)
@given(st.binary(max_size=200))
def test_random_bytes_through_every_parser(data: bytes) -> None:
    try:
        pkt = RtpPacket.parse(data)
    except RtpError:
        pass
    else:
        assert RtpPacket.parse(pkt.build()) == pkt
        Rfc4733Decoder().push(pkt)
    with contextlib.suppress(RtcpError):
        parse_compound(data)
    for ctype in ("application/dtmf-relay", "application/dtmf"):
        try:
            digit = parse_sip_info(ctype, data)
        except DtmfError:
            continue
        assert digit is not None and digit in "0123456789*#ABCD"


@fast(3000)
@given(packets, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4), st.integers(0, 20))
def test_mutated_rtp(pkt: RtpPacket, flips: list[tuple[int, int]], cut: int) -> None:
    data = pkt.build()
    assert RtpPacket.parse(data) == pkt
    try:
        parsed = RtpPacket.parse(_mutated(data, flips, cut))
    except RtpError:
        return
    assert RtpPacket.parse(parsed.build()) == parsed


@fast(2500)
@given(st.binary(min_size=4, max_size=120).map(lambda b: b[: len(b) // 4 * 4]), st.integers(0, 255), st.integers(0, 3))
def test_rtcp_shaped_inputs(body: bytes, pt_low: int, count: int) -> None:
    # a plausible RTCP header in front of arbitrary content: gets further into the parser than random bytes
    words = len(body) // 4
    data = bytes([0x80 | count, 200 + pt_low % 8, words >> 8, words & 0xFF]) + body
    with contextlib.suppress(RtcpError):
        parse_compound(data)


@fast(2000)
@given(
    st.lists(
        st.tuples(
            st.integers(-3, 3) | st.integers(0, 0xFFFF),  # sequence step or absolute value
            st.sampled_from([160, 0, -160, 320, 2**31, 80]),
            st.sampled_from([7, 7, 7, 8]),
            st.sampled_from([0.0, 0.005, 0.02, 0.02, 0.3]),
            st.booleans(),  # pop after it
        ),
        max_size=120,
    )
)
def test_receiver_state_stays_bounded(events: list[tuple[int, int, int, float, bool]]) -> None:
    rx = RtpReceiver(8000, 20, 60, max_packets=16)
    dtmf = Rfc4733Decoder()
    seq, ts, now = 65_000, 2**32 - 1000, 0.0
    for step, ts_step, ssrc, dt, pop in events:
        seq = (seq + step) & 0xFFFF if -3 <= step <= 3 else step
        ts = (ts + ts_step) & 0xFFFFFFFF
        now += dt
        pkt = RtpPacket(0, seq, ts, ssrc, b"\x05\x0a\x00\xa0")
        rx.push(pkt, now)
        dtmf.push(pkt)
        if pop:
            rx.pop(now)
        assert rx.state_size <= 16 + 2 * SEEN_WINDOW + 1
        s = rx.stats
        assert s.played <= s.received and s.buffered <= 16 and s.jitter >= 0


def test_fuzz_benchmark_function_runs_clean() -> None:
    result = fuzz_rtp(5000, seed=7)
    assert result["inputs"] == 5000
    # every branch was exercised: accepted and rejected inputs on each parser
    for key in ("rtp_ok", "rtp_rejected", "rtcp_ok", "rtcp_rejected", "info_ok", "info_rejected", "played"):
        assert result[key] > 0, key
    assert result["max_state"] <= 64 + 2 * SEEN_WINDOW + 1
