from __future__ import annotations

import struct

import pytest

from citycast.rtp.jitter import RtpReceiver
from citycast.rtp.packet import RtpPacket
from citycast.rtp.rtcp import (
    Bye,
    ReceiverReport,
    ReceptionReporter,
    ReportBlock,
    RtcpError,
    SdesChunk,
    SenderInfo,
    SenderReport,
    SourceDescription,
    UnknownRtcp,
    build_bye,
    build_rr,
    build_sr,
    ntp_from_unix,
    parse_compound,
)


def test_rr_compound_round_trip() -> None:
    block = ReportBlock(ssrc=0xCAFE, fraction_lost=64, cumulative_lost=-3, highest_seq=0x1_0005,
                        jitter=123, lsr=0x12345678, dlsr=65536)  # fmt: skip
    data = build_rr(0xBEEF, [block], "citycast@hub")
    assert len(data) % 4 == 0
    rr, sdes = parse_compound(data)
    assert rr == ReceiverReport(0xBEEF, (block,))
    assert sdes == SourceDescription((SdesChunk(0xBEEF, ((1, b"citycast@hub"),)),))
    assert isinstance(sdes, SourceDescription) and sdes.chunks[0].cname == "citycast@hub"
    # the wire layout of the RR header (RFC 3550 §6.4.2): V=2, RC=1, PT=201, length 7 words
    assert data[:4] == bytes([0x81, 201, 0, 7])


def test_sr_and_bye() -> None:
    ntp = ntp_from_unix(1_700_000_000.5)
    assert ntp >> 32 == 1_700_000_000 + 2_208_988_800 and ntp & 0xFFFFFFFF == 2**31
    info = SenderInfo(ntp, 160_000, 1000, 160_000)
    sr, _sdes = parse_compound(build_sr(7, info, [], "x"))
    assert sr == SenderReport(7, info, ())
    assert isinstance(sr, SenderReport) and sr.sender.middle32 == ((ntp >> 16) & 0xFFFFFFFF)
    packets = parse_compound(build_bye(7, "x", "hang up"))
    assert isinstance(packets[0], ReceiverReport) and isinstance(packets[1], SourceDescription)
    assert packets[2] == Bye((7,), "hang up")


def test_parses_foreign_compound_with_app_and_padding() -> None:
    # an SR with one block, SDES with two items in two chunks, then an APP packet padded at the end
    sr = struct.pack("!BBHIIIIII", 0x81, 200, 12, 1, 2, 3, 4, 5, 6) + struct.pack("!IIIIII", 9, 0x02FFFFFF, 7, 8, 0, 0)
    chunk1 = struct.pack("!I", 1) + b"\x01\x03abc\x02\x01z" + b"\x00" * 4
    chunk2 = struct.pack("!I", 2) + b"\x01\x02de" + b"\x00" * 4
    sdes = struct.pack("!BBH", 0x82, 202, (len(chunk1) + len(chunk2)) // 4) + chunk1 + chunk2
    app = struct.pack("!BBH", 0xA0, 204, 2) + b"name" + b"\x01\x02" + b"\x00\x02"
    packets = parse_compound(sr + sdes + app)
    assert isinstance(packets[0], SenderReport)
    assert packets[0].reports[0].fraction_lost == 2 and packets[0].reports[0].cumulative_lost == -1
    assert isinstance(packets[1], SourceDescription)
    assert [c.cname for c in packets[1].chunks] == ["abc", "de"]
    assert packets[1].chunks[0].items[1] == (2, b"z")
    assert packets[2] == UnknownRtcp(204, 0, b"name\x01\x02")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x81\xc9", "too short"),
        (b"\x81\xc9\x00\x01\x00\x00\x00", "multiple of 4"),
        (bytes([0x41, 201, 0, 1]) + bytes(4), "version"),
        (bytes([0x80, 100, 0, 1]) + bytes(4), "not RTCP"),
        (bytes([0x80, 201, 0, 5]) + bytes(4), "overruns"),
        (bytes([0x81, 201, 0, 1]) + bytes(4), "report blocks"),
        (bytes([0x81, 202, 0, 1]) + bytes([0, 0, 0, 1]), "terminating"),
        (bytes([0x81, 202, 0, 2]) + bytes([0, 0, 0, 1, 1, 9, 0, 0]), "runs past"),
        (bytes([0x81, 203, 0, 0]), "BYE"),
        (bytes([0xA0, 201, 0, 1]) + bytes([0, 0, 0, 9]), "padding"),
        (bytes([0xA0, 201, 0, 1]) + bytes(4) + bytes([0x80, 201, 0, 1]) + bytes(4), "last packet"),
    ],
)
def test_malformed_compounds_raise(data: bytes, message: str) -> None:
    with pytest.raises(RtcpError, match=message):
        parse_compound(data)


def test_reception_reporter_follows_rfc3550_a3() -> None:
    rx = RtpReceiver(8000, 20, 60)
    reporter = ReceptionReporter()
    assert reporter.report_block(rx.stats, 0.0) is None
    # 100 packets with 10 missing, crossing the 16-bit sequence wrap
    for i in range(100):
        if i % 10 != 3:
            rx.push(RtpPacket(0, (65_500 + i) & 0xFFFF, i * 160, 77, b"x"), i * 0.02)
    sr = SenderReport(77, SenderInfo(ntp_from_unix(1000.0), 0, 1, 1))
    reporter.on_packet(sr, 2.0)
    block = reporter.report_block(rx.stats, 2.5)
    assert block is not None
    assert block.ssrc == 77
    assert block.cumulative_lost == 10
    assert block.fraction_lost == (10 << 8) // 100  # 25 ≈ 10 %
    assert block.highest_seq == 65_500 + 99  # one wrap: cycles in the upper 16 bits
    assert block.lsr == sr.sender.middle32 and block.dlsr == 32768  # 0.5 s in 1/65536 s
    # next interval: 50 packets, none lost
    for i in range(100, 150):
        rx.push(RtpPacket(0, (65_500 + i) & 0xFFFF, i * 160, 77, b"x"), i * 0.02)
    block2 = reporter.report_block(rx.stats, 3.0)
    assert block2 is not None and block2.fraction_lost == 0 and block2.cumulative_lost == 10
    # it encodes and parses back
    (rr, _) = parse_compound(build_rr(1, [block2], "c"))
    assert isinstance(rr, ReceiverReport) and rr.reports == (block2,)


def test_report_interval_is_randomised_around_five_seconds() -> None:
    reporter = ReceptionReporter()
    intervals = [reporter.next_interval() for _ in range(200)]
    assert all(2.0 < i < 6.2 for i in intervals)
    assert max(intervals) - min(intervals) > 1.0


def test_builders_reject_out_of_range() -> None:
    with pytest.raises(RtcpError):
        build_rr(1, [ReportBlock(1, 300, 0, 0, 0)], "c")
    with pytest.raises(RtcpError):
        build_rr(2**32, [], "c")
    with pytest.raises(RtcpError):
        build_rr(1, [], "")
    assert issubclass(RtcpError, ValueError)
