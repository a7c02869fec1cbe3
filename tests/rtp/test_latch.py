"""The media latch, sans-IO: which datagrams a call takes and where it may send, for the callers we must serve
(same host, behind NAT, a trunk with a separate media address) and the strangers we must not (another address,
the caller's IP from another port, another SSRC, a burst before the caller's first packet, RTCP)."""

from __future__ import annotations

import pytest

from citycast.rtp.latch import MediaLatch, SdpMedia, SendBudget, parse_networks
from citycast.rtp.packet import RtpPacket

PTS = frozenset({8, 101})


def rtp(ssrc: int = 0xCA11, pt: int = 8, seq: int = 1, size: int = 160) -> bytes:
    return RtpPacket(payload_type=pt, seq=seq, timestamp=seq * 160, ssrc=ssrc, payload=b"\xd5" * size).build()


def answered(latch: MediaLatch) -> MediaLatch:
    latch.answered = True
    return latch


def test_no_nat_only_the_sdp_port_of_the_signalling_ip_latches_even_after_a_strangers_burst() -> None:
    latch = MediaLatch("198.51.100.7", SdpMedia(("198.51.100.7", 4000), None, PTS))
    assert latch.on_rtp(rtp(), ("198.51.100.7", 4000)).reason == "before_answer"  # nobody knows our port yet
    answered(latch)
    assert latch.rtp_target() is None  # no ACK, no packet: we send nothing
    # A burst before the caller speaks: another host, and the caller's own host from another port.
    for i in range(50):
        assert latch.on_rtp(rtp(0xBAD, seq=i), ("203.0.113.9", 4000)).reason == "foreign_source"
        assert latch.on_rtp(rtp(0xBAD, seq=i), ("198.51.100.7", 4002)).reason == "foreign_source"
    assert latch.latched is None and latch.rtp_target() is None
    latch.acked = True
    assert latch.rtp_target() == ("198.51.100.7", 4000)  # after the ACK: the SDP address, the signalling IP's
    assert latch.rtcp_target() == ("198.51.100.7", 4001)
    # Junk from the right address does not latch either.
    assert latch.on_rtp(b"\x00\x01" * 20, ("198.51.100.7", 4000)).reason == "bad_packet"
    assert latch.on_rtp(rtp(pt=0), ("198.51.100.7", 4000)).reason == "payload_type"
    assert latch.on_rtp(rtp(size=2000), ("198.51.100.7", 4000)).reason == "bad_packet"
    assert latch.latched is None
    got = latch.on_rtp(rtp(), ("198.51.100.7", 4000))
    assert got.packet is not None and latch.latched == ("198.51.100.7", 4000) and latch.ssrc == 0xCA11
    # Latched: another SSRC from the caller's very address, or the right SSRC from elsewhere, is dropped.
    assert latch.on_rtp(rtp(0xBAD, seq=2), ("198.51.100.7", 4000)).reason == "foreign_ssrc"
    assert latch.on_rtp(rtp(seq=3), ("198.51.100.7", 4002)).reason == "foreign_source"
    assert latch.on_rtp(rtp(seq=4), ("203.0.113.9", 4000)).reason == "foreign_source"
    assert latch.on_rtp(rtp(pt=101, seq=5, size=4), ("198.51.100.7", 4000)).packet is not None
    assert latch.accepted == 2
    assert +latch.dropped == {"before_answer": 1, "foreign_source": 102, "bad_packet": 2, "payload_type": 1,
                             "foreign_ssrc": 1}  # fmt: skip


def test_behind_nat_the_first_valid_packet_from_the_signalling_ip_latches_whatever_its_port() -> None:
    latch = answered(MediaLatch("198.51.100.7", SdpMedia(("10.0.0.5", 4000), None, PTS)))
    latch.acked = True
    assert latch.rtp_target() is None  # a private c= is never sent to: we wait for the caller's packet
    assert latch.on_rtp(rtp(), ("10.0.0.5", 4000)).reason == "foreign_source"
    assert latch.on_rtp(rtp(), ("198.51.100.7", 61_234)).packet is not None
    assert latch.rtp_target() == ("198.51.100.7", 61_234) and latch.rtcp_target() == ("198.51.100.7", 61_235)
    assert latch.on_rtp(rtp(seq=2), ("198.51.100.7", 61_236)).reason == "foreign_source"


def test_a_foreign_c_line_is_neither_a_source_nor_a_destination() -> None:
    latch = answered(MediaLatch("198.51.100.7", SdpMedia(("192.0.2.99", 4000), None, PTS)))
    latch.acked = True
    assert latch.rtp_target() is None and latch.rtcp_target() is None
    assert latch.on_rtp(rtp(), ("192.0.2.99", 4000)).reason == "foreign_source"
    assert latch.latched is None


def test_a_trusted_trunk_range_admits_its_media_address_only() -> None:
    trusted = parse_networks(["203.0.113.0/28"])
    sdp = SdpMedia(("203.0.113.5", 30_000), 30_011, PTS)
    latch = answered(MediaLatch("203.0.113.2", sdp, trusted=trusted))
    latch.acked = True
    assert latch.media_ips == {"203.0.113.2", "203.0.113.5"}
    assert latch.rtp_target() == ("203.0.113.5", 30_000) and latch.rtcp_target() == ("203.0.113.5", 30_011)
    assert latch.on_rtp(rtp(), ("203.0.113.6", 30_000)).reason == "foreign_source"  # in range, not named
    assert latch.on_rtp(rtp(), ("203.0.113.5", 30_002)).reason == "foreign_source"  # named IP, other port
    assert latch.on_rtp(rtp(), ("203.0.113.5", 30_000)).packet is not None
    # RTCP: the latched IP from the a=rtcp port (or RTP + 1) with the caller's SSRC, and nothing else.
    assert latch.on_rtcp(("203.0.113.5", 30_011), 0xCA11) and latch.on_rtcp(("203.0.113.5", 30_001), 0xCA11)
    assert not latch.on_rtcp(("203.0.113.5", 30_011), 0xBAD)
    assert not latch.on_rtcp(("203.0.113.6", 30_011), 0xCA11)
    assert not latch.on_rtcp(("203.0.113.5", 30_003), 0xCA11)
    assert latch.dropped["rtcp_foreign"] == 3
    # A c= in the trusted range from a signalling peer outside it is foreign: the range names the trunk.
    outsider = answered(MediaLatch("198.51.100.7", sdp, trusted=trusted))
    outsider.acked = True
    assert outsider.rtp_target() is None
    assert outsider.on_rtp(rtp(), ("203.0.113.5", 30_000)).reason == "foreign_source"


def test_rtcp_before_the_rtp_latch_is_dropped() -> None:
    latch = answered(MediaLatch("198.51.100.7", SdpMedia(("198.51.100.7", 4000), None, PTS)))
    assert not latch.on_rtcp(("198.51.100.7", 4001), 0xCA11)


def test_a_reinvite_to_a_new_address_relatches_under_the_same_rules() -> None:
    latch = answered(MediaLatch("198.51.100.7", SdpMedia(("198.51.100.7", 4000), None, PTS)))
    assert latch.on_rtp(rtp(), ("198.51.100.7", 4000)).packet is not None
    assert latch.on_rtp(rtp(0xB0B, seq=2), ("198.51.100.7", 4000)).reason == "foreign_ssrc"
    latch.renegotiate(SdpMedia(("198.51.100.7", 4000), None, PTS))  # same address (hold, resume, a transfer)
    assert latch.latched == ("198.51.100.7", 4000) and latch.ssrc is None
    assert latch.on_rtp(rtp(0xB0B, seq=3), ("198.51.100.8", 4000)).reason == "foreign_source"
    assert latch.on_rtp(rtp(0xB0B, seq=3), ("198.51.100.7", 4000)).packet is not None and latch.ssrc == 0xB0B
    latch.renegotiate(SdpMedia(("198.51.100.7", 5000), None, PTS))
    assert latch.latched is None
    assert latch.on_rtp(rtp(0xD00D), ("198.51.100.7", 4000)).reason == "foreign_source"
    assert latch.on_rtp(rtp(0xD00D), ("198.51.100.7", 5000)).packet is not None and latch.ssrc == 0xD00D


def test_srtp_failures_never_latch() -> None:
    latch = answered(MediaLatch("198.51.100.7", SdpMedia(("198.51.100.7", 4000), None, PTS), srtp=True))

    def unprotect(data: bytes) -> bytes:
        raise ValueError("auth")

    assert latch.on_rtp(rtp(), ("198.51.100.7", 4000), unprotect).reason == "srtp_auth"
    assert latch.latched is None


def test_send_budget_caps_the_rate_and_the_burst() -> None:
    budget = SendBudget(rate=50, burst=4, now=0.0)
    assert sum(budget.take(0.0) for _ in range(100)) == 4  # a burst is cut at 4
    sent = sum(budget.take(i * 0.001) for i in range(1, 10_001))  # 10 s of asking every millisecond
    assert 499 <= sent <= 504 and budget.refused > 9000


def test_bad_trusted_range_is_refused() -> None:
    with pytest.raises(ValueError, match="not an IP"):
        parse_networks(["10.0.0.0/33"])
