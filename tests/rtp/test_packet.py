from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest

from citycast.rtp.packet import RtpError, RtpExtension, RtpPacket

PCAP_DIR = Path("/usr/share/sip-tester")


def _pcap_udp_payloads(path: Path) -> list[bytes]:
    """UDP payloads of an Ethernet/IPv4 classic pcap (the sipp sample captures)."""
    data = path.read_bytes()
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4
    out = []
    offset = 24
    while offset + 16 <= len(data):
        incl = struct.unpack_from("<I", data, offset + 8)[0]
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        ip = frame[14:]
        out.append(ip[(ip[0] & 0x0F) * 4 + 8 :])
    return out


def test_parse_known_bytes() -> None:
    # V=2 P=0 X=0 CC=0, M=1 PT=0, seq 0x1234, ts 0xDEADBEEF, SSRC 0x01020304, payload "abc"
    data = bytes.fromhex("8080 1234 deadbeef 01020304") + b"abc"
    pkt = RtpPacket.parse(data)
    assert (pkt.version, pkt.marker, pkt.payload_type, pkt.seq) == (2, True, 0, 0x1234)
    assert (pkt.timestamp, pkt.ssrc, pkt.payload, pkt.csrc, pkt.extension, pkt.padding) == (
        0xDEADBEEF, 0x01020304, b"abc", (), None, 0)  # fmt: skip
    assert pkt.build() == data


def test_round_trip_with_csrc_extension_and_padding() -> None:
    pkt = RtpPacket(
        payload_type=111,
        seq=65535,
        timestamp=0xFFFFFFFF,
        ssrc=7,
        payload=bytes(range(50)),
        marker=True,
        csrc=(1, 2, 0xFFFFFFFF),
        extension=RtpExtension(0xBEDE, b"\x10\xaa\x00\x00"),
        padding=3,
    )
    data = pkt.build()
    assert len(data) == 12 + 12 + 8 + 50 + 3
    assert data[0] == 0x80 | 0x20 | 0x10 | 3
    assert data[-1] == 3
    assert RtpPacket.parse(data) == pkt


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x00\x00", "too short"),
        (bytes.fromhex("4000000100000000 00000001"), "version must be 2"),
        (bytes.fromhex("8300000100000000 00000001 00000002"), "CSRC"),
        (bytes.fromhex("9000000100000000 00000001 bede"), "extension"),
        (bytes.fromhex("9000000100000000 00000001 bede0002 00000000"), "overruns"),
        (bytes.fromhex("a000000100000000 00000001 aa00"), "padding count is 0"),
        (bytes.fromhex("a000000100000000 00000001 aa05"), "exceeds"),
        (bytes.fromhex("80c8000100000000 00000001"), "RTCP"),
    ],
)
def test_strict_errors(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        RtpPacket.parse(data)


@pytest.mark.parametrize(
    "pkt",
    [
        RtpPacket(payload_type=128, seq=0, timestamp=0, ssrc=0),
        RtpPacket(payload_type=0, seq=70000, timestamp=0, ssrc=0),
        RtpPacket(payload_type=0, seq=0, timestamp=2**32, ssrc=0),
        RtpPacket(payload_type=0, seq=0, timestamp=0, ssrc=-1),
        RtpPacket(payload_type=0, seq=0, timestamp=0, ssrc=0, csrc=tuple(range(16))),
        RtpPacket(payload_type=0, seq=0, timestamp=0, ssrc=0, extension=RtpExtension(1, b"abc")),
        RtpPacket(payload_type=0, seq=0, timestamp=0, ssrc=0, padding=256),
        RtpPacket(payload_type=73, seq=0, timestamp=0, ssrc=0),
    ],
)
def test_build_rejects_out_of_range(pkt: RtpPacket) -> None:
    with pytest.raises(RtpError):
        pkt.build()


def test_rtp_error_is_value_error() -> None:
    assert issubclass(RtpError, ValueError)


@pytest.mark.parametrize("name", ["g711a.pcap", "dtmf_2833_0.pcap", "dtmf_2833_pound.pcap"])
def test_real_captures_round_trip(name: str) -> None:
    datagrams = _pcap_udp_payloads(PCAP_DIR / name)
    assert datagrams
    packets = [RtpPacket.parse(d) for d in datagrams]
    assert [p.build() for p in packets] == datagrams
    seqs = [p.seq for p in packets]
    assert all(b - a in (0, 1) for a, b in itertools.pairwise(seqs))
