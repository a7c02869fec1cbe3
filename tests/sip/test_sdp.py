"""SDP parsing and offer/answer against offers from real peers (sipp 3.6.1, baresip 1.0.0)."""

from __future__ import annotations

import re

import pytest

from citycast.sip.sdp import CodecSpec, SdpError, build_answer, negotiate, parse_sdp

SIPP_OFFER = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
BARESIP_OFFER = (
    b"v=0\r\no=- 2086609618 671355111 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\n"
    b"a=tool:baresip 1.0.0\r\nm=audio 25504 RTP/AVP 96 9 0 8 101\r\na=rtpmap:96 opus/48000/2\r\n"
    b"a=fmtp:96 stereo=1;sprop-stereo=1\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\na=label:1\r\na=rtcp-rsize\r\n"
    b"a=ssrc:794974634 cname:sip:speaker@127.0.0.1\r\na=minptime:20\r\na=ptime:20\r\n"
)


def offer(media: str, *, session: str = "c=IN IP4 198.51.100.7\n") -> bytes:
    text = "v=0\no=- 1 1 IN IP4 198.51.100.7\ns=-\n" + session + "t=0 0\n" + media
    return text.replace("\n", "\r\n").encode()


def test_parse_baresip_offer() -> None:
    sd = parse_sdp(BARESIP_OFFER)
    assert sd.origin.session_id == "2086609618" and sd.origin.address == "192.0.2.2"
    assert sd.connection is not None and sd.connection.address == "192.0.2.2"
    assert sd.attributes[0] == ("tool", "baresip 1.0.0")
    (m,) = sd.media
    assert (m.media, m.port, m.proto, m.formats) == ("audio", 25504, "RTP/AVP", ["96", "9", "0", "8", "101"])
    opus = m.rtpmap(96)
    assert opus is not None and (opus.encoding, opus.clock_rate, opus.channels) == ("opus", 48000, 2)
    pcma = m.rtpmap(8)
    assert pcma is not None and (pcma.encoding, pcma.clock_rate) == ("PCMA", 8000)
    assert m.fmtp == {"96": "stereo=1;sprop-stereo=1", "101": "0-15"}
    assert (m.ptime_ms, m.direction) == (20.0, "sendrecv")
    assert parse_sdp(sd.to_bytes()) == sd


def test_sipp_offer_gives_pcmu() -> None:
    neg = negotiate(parse_sdp(SIPP_OFFER))
    assert neg.codec == CodecSpec("PCMU", 0, 8000, 1, None)
    assert (neg.dtmf_pt, neg.remote_addr, neg.ptime_ms, neg.direction) == (None, ("127.0.0.1", 6000), 20, "sendrecv")


def test_baresip_offer_preferences() -> None:
    sd = parse_sdp(BARESIP_OFFER)
    neg = negotiate(sd)
    assert neg.codec == CodecSpec("opus", 96, 48000, 2, "stereo=1;sprop-stereo=1")
    assert neg.dtmf_pt == 101 and neg.remote_addr == ("192.0.2.2", 25504)
    assert negotiate(sd, prefer=("G722", "PCMU")).codec == CodecSpec("G722", 9, 8000, 1, None)
    assert negotiate(sd, prefer=("PCMA",)).codec.payload_type == 8
    answer = build_answer(neg, local_ip="203.0.113.5", local_port=40000, session_id=77, version=2)
    assert answer == (
        b"v=0\r\no=citycast 77 2 IN IP4 203.0.113.5\r\ns=citycast\r\nc=IN IP4 203.0.113.5\r\nt=0 0\r\n"
        b"m=audio 40000 RTP/AVP 96 101\r\na=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    )
    back = negotiate(parse_sdp(answer))  # the answer is itself a valid description the peer can read
    assert (back.codec.name, back.codec.payload_type, back.dtmf_pt) == ("opus", 96, 101)
    assert back.remote_addr == ("203.0.113.5", 40000)


def test_static_payload_types_without_rtpmap() -> None:
    neg = negotiate(parse_sdp(offer("m=audio 4000 RTP/AVP 18 8 9 0\n")), prefer=("PCMA", "G722"))
    assert neg.codec == CodecSpec("PCMA", 8, 8000, 1, None)
    assert negotiate(parse_sdp(offer("m=audio 4000 RTP/AVP 9\n"))).codec == CodecSpec("G722", 9, 8000, 1, None)


def test_no_common_codec() -> None:
    gsm_g729 = parse_sdp(offer("m=audio 4000 RTP/AVP 3 18 97\na=rtpmap:97 opus/48000/1\n"))
    with pytest.raises(SdpError, match="no common codec"):
        negotiate(gsm_g729)  # opus with one channel is not RFC 7587 opus
    with pytest.raises(SdpError, match="no audio stream"):
        negotiate(parse_sdp(offer("m=video 5000 RTP/AVP 96\na=rtpmap:96 VP8/90000\n")))
    with pytest.raises(SdpError, match="RTP/SAVP without an a=crypto line"):
        negotiate(parse_sdp(offer("m=audio 4000 RTP/SAVP 0\n")))
    with pytest.raises(SdpError, match="without a c= line"):
        negotiate(parse_sdp(offer("m=audio 4000 RTP/AVP 0\n", session="")))
    with pytest.raises(SdpError, match="not an IP address"):
        negotiate(parse_sdp(offer("m=audio 4000 RTP/AVP 0\n", session="c=IN IP4 host.example\n")))


def test_hold_sendonly_and_rejected_streams() -> None:
    sd = parse_sdp(
        offer(
            "m=video 5000 RTP/AVP 96\na=rtpmap:96 VP8/90000\n"
            "m=audio 4000 RTP/AVP 8 0 101\nc=IN IP4 0.0.0.0\na=rtpmap:101 telephone-event/8000\na=ptime:30\n"
        )
    )
    neg = negotiate(sd, prefer=("PCMU", "PCMA"))
    assert neg.media_index == 1 and neg.codec.name == "PCMU" and neg.ptime_ms == 30
    assert neg.direction == "sendonly"  # c=0.0.0.0: an old-style hold, the peer does not listen
    answer = build_answer(neg, local_ip="2001:db8::5", local_port=4002, session_id=1, version=3).decode()
    lines = answer.split("\r\n")
    assert "c=IN IP6 2001:db8::5" in lines
    assert lines.index("m=video 0 RTP/AVP 96") < lines.index("m=audio 4002 RTP/AVP 0 101")  # offer order kept
    assert "a=recvonly" in lines and "a=sendrecv" not in lines  # narrowed: we never send to a peer on hold
    inactive = negotiate(parse_sdp(offer("m=audio 4000 RTP/AVP 0\na=inactive\n")))
    assert inactive.direction == "inactive"
    body = build_answer(inactive, local_ip="192.0.2.1", local_port=4000, session_id=1, version=1, direction="sendonly")
    assert b"a=inactive" in body
    recv = negotiate(parse_sdp(offer("a=recvonly\nm=audio 4000 RTP/AVP 0\n")))  # session-level direction
    assert recv.direction == "recvonly"
    assert b"a=sendonly" in build_answer(recv, local_ip="192.0.2.1", local_port=4000, session_id=1, version=1)


def test_odd_ptime_falls_back_to_default() -> None:
    assert negotiate(parse_sdp(offer("m=audio 4000 RTP/AVP 0\na=ptime:1000\n"))).ptime_ms == 20
    assert negotiate(parse_sdp(offer("a=ptime:40\nm=audio 4000 RTP/AVP 0\n"))).ptime_ms == 40


BAD = [
    (b"", "must start with v=0"),
    (b"o=- 1 1 IN IP4 1.2.3.4\r\n", "must start with v=0"),
    (b"v=0\r\ns=-\r\n", "without an o= line"),
    (b"v=0\r\no=- 1 IN IP4 1.2.3.4\r\n", "malformed o= line"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4\r\n", "malformed c= line"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=ATM NSAP x\r\n", "unsupported connection"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nbogus line\r\n", "malformed SDP line"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n\r\nm=audio 1 RTP/AVP 0\r\n", "malformed SDP line"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n", "malformed port"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP\r\n", "without payload types"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 200\r\n", "not a number 0..127"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n", "malformed a=rtpmap"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4 RTP/AVP 0\r\na=rtpmap:0 PCMU/0\r\n", "out of range"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4 RTP/AVP 0\r\na=rtpmap:0 A/1\r\na=rtpmap:0 B/1\r\n", "two a=rtpmap"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4 RTP/AVP 0\r\na=ptime:fast\r\n", "malformed a=ptime"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4 RTP/AVP 0\r\na=fmtp:x y\r\n", "malformed a=fmtp"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=\xff\r\n", "not UTF-8"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=a\x00b\r\n", "control character"),
    (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n" + b"a=x\r\n" * 1000, "more than 1000 lines"),
]


@pytest.mark.parametrize(("data", "message"), BAD)
def test_malformed_sdp(data: bytes, message: str) -> None:
    with pytest.raises(SdpError, match=re.escape(message)):
        parse_sdp(data)


def test_build_answer_rejects_bad_arguments() -> None:
    neg = negotiate(parse_sdp(SIPP_OFFER))
    with pytest.raises(ValueError, match="direction"):
        build_answer(neg, local_ip="192.0.2.1", local_port=4000, session_id=1, version=1, direction="both")
    with pytest.raises(ValueError):
        build_answer(neg, local_ip="not-an-ip", local_port=4000, session_id=1, version=1)
    with pytest.raises(ValueError, match="local_port"):
        build_answer(neg, local_ip="192.0.2.1", local_port=0, session_id=1, version=1)


KEY_A = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"  # RFC 4568 §4's example key (30 bytes)


def test_sdes_offer_is_answered_with_our_own_key_and_plain_offers_stay_plain() -> None:
    from citycast.rtp.srtp import answer_crypto

    savp = offer(
        "m=audio 4000 RTP/SAVP 0\na=crypto:1 AES_CM_128_HMAC_SHA1_99 inline:" + KEY_A + "\n"
        "a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:" + KEY_A + "|2^20|1:4\n"
        "a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:" + KEY_A + "|2^20\na=rtcp:4005\n"
    )
    neg = negotiate(parse_sdp(savp))
    # The unknown suite and the MKI line are passed over; the third line is usable.
    assert neg.crypto is not None and (neg.crypto.tag, neg.crypto.suite) == (3, "AES_CM_128_HMAC_SHA1_32")
    assert len(neg.crypto.key) == 30 and neg.rtcp_port == 4005
    ours = answer_crypto(neg.crypto)
    answer = build_answer(neg, local_ip="192.0.2.1", local_port=4000, session_id=1, version=1, crypto=ours).decode()
    assert "m=audio 4000 RTP/SAVP 0\r\n" in answer
    line = next(x for x in answer.split("\r\n") if x.startswith("a=crypto:"))
    assert line.startswith("a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:") and KEY_A not in line
    # a=crypto in a plain RTP/AVP offer means nothing (RFC 4568 §5.1.1): the call stays plain.
    plain = negotiate(parse_sdp(offer("m=audio 4000 RTP/AVP 0\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + KEY_A)))
    assert plain.crypto is None and plain.rtcp_port is None
    # RTP/SAVP whose every key is unusable is refused, saying why.
    with pytest.raises(SdpError, match="want 30"):
        negotiate(parse_sdp(offer("m=audio 4000 RTP/SAVP 0\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA\n")))
