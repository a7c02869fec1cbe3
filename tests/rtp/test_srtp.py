"""SRTP with SDES keys: a packet protected with one side's key is read by the other; anything altered, replayed or
keyed otherwise fails authentication."""

from __future__ import annotations

import pytest

from citycast.rtp.packet import RtpPacket
from citycast.rtp.rtcp import build_rr, parse_compound
from citycast.rtp.srtp import SdesCrypto, SrtpContext, SrtpError, answer_crypto, parse_crypto

OFFER = "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20"


@pytest.mark.parametrize("suite, tag_len", [("AES_CM_128_HMAC_SHA1_80", 10), ("AES_CM_128_HMAC_SHA1_32", 4)])
def test_both_directions_round_trip_and_forgeries_fail(suite: str, tag_len: int) -> None:
    caller_key = parse_crypto(OFFER.replace("AES_CM_128_HMAC_SHA1_80", suite))
    ours = answer_crypto(caller_key)
    assert ours.tag == 1 and ours.suite == suite and ours.key != caller_key.key
    hub = SrtpContext(ours, caller_key)
    caller = SrtpContext(caller_key, ours)  # the caller sends with its key, reads with ours
    rtp = RtpPacket(payload_type=8, seq=7, timestamp=160, ssrc=0xABC, payload=b"\xd5" * 160).build()
    wire = caller.protect(rtp)
    assert len(wire) == len(rtp) + tag_len and wire[12:] != rtp[12:]
    assert hub.unprotect(wire) == rtp
    with pytest.raises(SrtpError):
        hub.unprotect(wire)  # a replay
    forged = bytearray(caller.protect(RtpPacket(8, 8, 320, 0xABC, b"\x00" * 160).build()))
    forged[20] ^= 1
    with pytest.raises(SrtpError):
        hub.unprotect(bytes(forged))
    # A stranger with a key of its own (or plain RTP) never passes.
    stranger = SrtpContext(SdesCrypto(1, suite, bytes(30)), ours)
    with pytest.raises(SrtpError):
        hub.unprotect(stranger.protect(RtpPacket(8, 9, 480, 0xABC, b"\x00" * 160).build()))
    with pytest.raises(SrtpError):
        hub.unprotect(RtpPacket(8, 10, 640, 0xABC, b"\x00" * 170).build())
    # RTCP both ways (always the 80-bit tag).
    rr = build_rr(0x1234, [], "citycast@test")
    assert parse_compound(caller.unprotect_rtcp(hub.protect_rtcp(rr)))[0].ssrc == 0x1234  # type: ignore[union-attr]
    with pytest.raises(SrtpError):
        caller.unprotect_rtcp(rr + b"\x80\x00\x00\x00" + bytes(10))


@pytest.mark.parametrize(
    "value, why",
    [
        ("1 AES_CM_128_HMAC_SHA1_80 inline:WVNf", "30"),
        ("1 F8_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz", "not supported"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4", "MKI"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz UNENCRYPTED_SRTP", "session"),
        ("x AES_CM_128_HMAC_SHA1_80 inline:abc", "malformed"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:!!!!", "malformed"),
    ],
)
def test_unusable_crypto_lines_say_why(value: str, why: str) -> None:
    with pytest.raises(SrtpError, match=why):
        parse_crypto(value)
