from __future__ import annotations

import struct
from pathlib import Path

import pytest

from citycast.rtp.dtmf import DtmfError, Rfc4733Decoder, parse_event, parse_sip_info
from citycast.rtp.packet import RtpPacket

PCAP_DIR = Path("/usr/share/sip-tester")
FILES = {f"dtmf_2833_{d}.pcap": d for d in "0123456789"} | {"dtmf_2833_pound.pcap": "#", "dtmf_2833_star.pcap": "*"}


def _pcap_udp_payloads(path: Path) -> list[bytes]:
    """UDP payloads of an Ethernet/IPv4 classic pcap (the sipp sample captures)."""
    data = path.read_bytes()
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4
    assert struct.unpack_from("<I", data, 20)[0] == 1  # Ethernet
    out = []
    offset = 24
    while offset + 16 <= len(data):
        incl = struct.unpack_from("<I", data, offset + 8)[0]
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        assert frame[12:14] == b"\x08\x00" and frame[14 + 9] == 17  # IPv4, UDP
        ip = frame[14:]
        out.append(ip[(ip[0] & 0x0F) * 4 + 8 :])
    return out


@pytest.mark.parametrize(("name", "digit"), sorted(FILES.items()))
def test_sipp_captures_give_their_digit_exactly_once(name: str, digit: str) -> None:
    packets = [RtpPacket.parse(d) for d in _pcap_udp_payloads(PCAP_DIR / name)]
    assert sum(parse_event(p.payload).end for p in packets) == 3  # the end packet, sent three times
    dec = Rfc4733Decoder()
    assert [d for d in (dec.push(p) for p in packets) if d is not None] == [digit]
    # the same packets again carry the same timestamp: retransmissions of a known event, not a new key press
    assert [d for d in (dec.push(p) for p in packets) if d is not None] == []


def test_a_pin_typed_as_a_sequence_of_captures() -> None:
    dec = Rfc4733Decoder()
    typed = []
    for k, digit in enumerate("4711#"):
        name = next(n for n, d in FILES.items() if d == digit)
        for p in (RtpPacket.parse(d) for d in _pcap_udp_payloads(PCAP_DIR / name)):
            # as a phone would: each key press under its own timestamp
            shifted = RtpPacket(p.payload_type, p.seq, (p.timestamp + k * 8000) & 0xFFFFFFFF, p.ssrc, p.payload)
            if (d := dec.push(shifted)) is not None:
                typed.append(d)
    assert "".join(typed) == "4711#"


def _event(ts: int, event: int, end: bool, duration: int, ssrc: int = 5) -> RtpPacket:
    return RtpPacket(101, 0, ts, ssrc, struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration))


def test_lost_start_packets_still_report_once() -> None:
    dec = Rfc4733Decoder()
    assert dec.push(_event(1000, 12, True, 800)) == "A"  # only the end packets made it
    assert dec.push(_event(1000, 12, True, 800)) is None
    assert dec.push(_event(1000, 12, True, 800)) is None
    assert [dec.push(_event(2000 + 1000 * i, e, False, 160)) for i, e in enumerate((13, 14, 15, 10, 11))] == [
        "B", "C", "D", "*", "#"]  # fmt: skip


def test_stale_retransmission_after_next_digit_is_ignored() -> None:
    dec = Rfc4733Decoder()
    assert dec.push(_event(1000, 1, False, 160)) == "1"
    assert dec.push(_event(2000, 2, False, 160)) == "2"
    assert dec.push(_event(1000, 1, True, 800)) is None  # reordered end of the previous key press


def test_long_event_segments_are_one_key_press() -> None:
    dec = Rfc4733Decoder()
    assert dec.push(_event(1000, 5, False, 0xFFFF)) == "5"
    assert dec.push(_event(1000 + 0xFFFF, 5, True, 100)) is None  # RFC 4733 §2.5.1.3 continuation
    assert dec.push(_event(1000 + 0xFFFF + 800, 5, False, 160)) == "5"  # a real second press


def test_non_dtmf_events_and_malformed_payloads() -> None:
    dec = Rfc4733Decoder()
    assert dec.push(_event(1000, 16, False, 160)) is None  # flash
    assert dec.push(RtpPacket(101, 0, 2000, 5, b"\x01\x02")) is None
    assert dec.malformed == 1 and dec.digits == 0
    with pytest.raises(DtmfError, match="4 bytes"):
        parse_event(b"\x01")
    ev = parse_event(bytes([11, 0x8A, 0x03, 0x20]))
    assert (ev.digit, ev.end, ev.volume, ev.duration) == ("#", True, 10, 800)


@pytest.mark.parametrize(
    ("content_type", "body", "digit"),
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", "5"),
        ("Application/DTMF-Relay; charset=utf-8", "Signal= #\r\nDuration= 250", "#"),
        ("application/dtmf-relay", b"Duration=100\nsignal=*\n", "*"),
        ("application/dtmf-relay", b"Signal=10\r\nDuration=160", "*"),
        ("application/dtmf-relay", b"Signal=11\r\nDuration=160", "#"),
        ("application/dtmf-relay", b"Signal=d\r\n", "D"),
        ("application/dtmf", b"7", "7"),
        ("application/dtmf", b" 0\r\n", "0"),
        ("application/sdp", b"v=0", None),
        (None, b"Signal=5", None),
    ],
)
def test_parse_sip_info(content_type: str | None, body: bytes | str, digit: str | None) -> None:
    assert parse_sip_info(content_type, body) == digit


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/dtmf-relay", b"Duration=160"),
        ("application/dtmf-relay", b"Signal=55"),
        ("application/dtmf-relay", b"Signal=E"),
        ("application/dtmf", b""),
        ("application/dtmf", b"12"),
        ("application/dtmf", b"x" * 5000),
    ],
)
def test_parse_sip_info_rejects_bad_bodies(content_type: str, body: bytes) -> None:
    with pytest.raises(DtmfError):
        parse_sip_info(content_type, body)
