"""SIP message parsing and building against real peers' messages (captured from sipp 3.6.1 and baresip 1.0.0)."""

from __future__ import annotations

import re

import pytest

from citycast.sip.message import (
    MAX_MESSAGE,
    SipMessage,
    SipParseError,
    StreamFramer,
    Via,
    parse,
    request,
    response_for,
)

# `sipp -sn uac -m 1 127.0.0.1:5098` (the default uac scenario), captured on the wire.
SIPP_INVITE = (
    b"INVITE sip:service@127.0.0.1:5098 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5097;branch=z9hG4bK-24163-1-0\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5097>;tag=24163SIPpTag001\r\n"
    b"To: service <sip:service@127.0.0.1:5098>\r\n"
    b"Call-ID: 1-24163@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: sip:sipp@127.0.0.1:5097\r\n"
    b"Max-Forwards: 70\r\n"
    b"Subject: Performance Test\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length:   129\r\n"
    b"\r\n"
    b"v=0\r\n"
    b"o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)

# `baresip -e "/dial sip:live@127.0.0.1:5095"` with opus, g722 and g711 loaded, captured on the wire.
BARESIP_INVITE = (
    b"INVITE sip:live@127.0.0.1:5095 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5096;branch=z9hG4bK8440371ca796f7f6;rport\r\n"
    b"Contact: <sip:speaker-0x56156801cd80@127.0.0.1:5096>\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:live@127.0.0.1:5095>\r\n"
    b"From: <sip:speaker@127.0.0.1>;tag=b0603f5a96261343\r\n"
    b"Call-ID: bb8763484e902b51\r\n"
    b"CSeq: 41866 INVITE\r\n"
    b"User-Agent: baresip v1.0.0 (x86_64/linux)\r\n"
    b"Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,REFER\r\n"
    b"Supported:\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 427\r\n"
    b"\r\n"
    b"v=0\r\n"
    b"o=- 2086609618 671355111 IN IP4 192.0.2.2\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.2\r\n"
    b"t=0 0\r\n"
    b"a=tool:baresip 1.0.0\r\n"
    b"m=audio 25504 RTP/AVP 96 9 0 8 101\r\n"
    b"a=rtpmap:96 opus/48000/2\r\n"
    b"a=fmtp:96 stereo=1;sprop-stereo=1\r\n"
    b"a=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=sendrecv\r\n"
    b"a=label:1\r\n"
    b"a=rtcp-rsize\r\n"
    b"a=ssrc:794974634 cname:sip:speaker@127.0.0.1\r\n"
    b"a=minptime:20\r\n"
    b"a=ptime:20\r\n"
)

BYE = (
    b"BYE sip:service@127.0.0.1:5098 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5097;branch=z9hG4bK-24163-1-2\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5097>;tag=24163SIPpTag001\r\n"
    b"To: service <sip:service@127.0.0.1:5098>;tag=hub1\r\n"
    b"Call-ID: 1-24163@127.0.0.1\r\n"
    b"CSeq: 2 BYE\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def test_sipp_invite() -> None:
    m = parse(SIPP_INVITE)
    assert (m.method, m.uri, m.is_request) == ("INVITE", "sip:service@127.0.0.1:5098", True)
    assert m.vias == [Via("UDP", "127.0.0.1", 5097, {"branch": "z9hG4bK-24163-1-0"})]
    assert m.from_.display == "sipp" and m.from_.uri == "sip:sipp@127.0.0.1:5097"
    assert m.from_.tag == "24163SIPpTag001"
    assert m.to.tag is None and m.to.uri == "sip:service@127.0.0.1:5098"
    assert m.call_id == "1-24163@127.0.0.1"
    assert m.cseq == (1, "INVITE")
    assert m.contact is not None and m.contact.uri == "sip:sipp@127.0.0.1:5097"
    assert m.content_type == "application/sdp"
    assert m.max_forwards == 70
    assert m.header("content-length") == "129" and m.header("l") == "129"
    assert m.body.startswith(b"v=0\r\n") and len(m.body) == 129


def test_baresip_invite_lists_and_empty_header() -> None:
    m = parse(BARESIP_INVITE)
    assert m.headers_all("Allow") == [
        *("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "NOTIFY", "SUBSCRIBE", "INFO", "MESSAGE", "REFER")
    ]
    assert m.headers_all("Supported") == [""]  # an empty list header is kept, not dropped
    via = m.vias[0]
    assert via.branch == "z9hG4bK8440371ca796f7f6" and via.wants_rport and via.rport is None
    assert m.from_.display is None and m.from_.tag == "b0603f5a96261343"
    assert m.contact is not None and m.contact.uri == "sip:speaker-0x56156801cd80@127.0.0.1:5096"
    assert m.cseq == (41866, "INVITE")
    assert len(m.body) == 427


@pytest.mark.parametrize("sample", [SIPP_INVITE, BARESIP_INVITE, BYE])
def test_round_trip(sample: bytes) -> None:
    m = parse(sample)
    again = parse(m.to_bytes())
    assert again == m
    assert again.to_bytes() == m.to_bytes()


def test_compact_forms_folding_quotes_ipv6() -> None:
    data = (
        b"OPTIONS sip:hub.example SIP/2.0\r\n"
        b"v: SIP/2.0/TCP [2001:db8::1]:5060 ;branch=z9hG4bKopt;received=2001:db8::9, SIP/2.0/UDP p.example\r\n"
        b'f: "A \\"quoted\\", name" <sip:a@example.com;transport=tcp>;tag=1\r\n'
        b"t: sip:hub.example;tag=xyz\r\n"
        b"i: opt-1@example.com\r\n"
        b"cseq: 7 OPTIONS\r\n"
        b"Route: <sip:p1.example;lr>,\r\n <sip:p2.example;lr>\r\n"
        b"Subject: folded\r\n\tacross lines\r\n"
        b"k: timer, 100rel\r\n"
        b"X-Custom: kept as is\r\n"
        b"l: 0\r\n\r\n"
    )
    m = parse(data)
    assert [n for n, _ in m.headers][:5] == ["Via", "Via", "From", "To", "Call-ID"]
    assert m.vias[0] == Via("TCP", "2001:db8::1", 5060, {"branch": "z9hG4bKopt", "received": "2001:db8::9"})
    assert m.vias[1].host == "p.example" and m.vias[1].port is None
    assert m.from_.display == 'A "quoted", name' and m.from_.uri == "sip:a@example.com;transport=tcp"
    assert m.to.uri == "sip:hub.example" and m.to.tag == "xyz"  # addr-spec: ;tag belongs to the header
    assert m.cseq == (7, "OPTIONS") and m.call_id == "opt-1@example.com"
    assert m.headers_all("Route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
    assert m.header("Subject") == "folded across lines"
    assert m.headers_all("Supported") == ["timer", "100rel"]
    assert m.header("x-custom") == "kept as is"
    assert parse(m.to_bytes()) == m
    assert str(m.vias[0]) == "SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bKopt;received=2001:db8::9"


def test_content_length_rules_on_datagrams() -> None:
    head = BYE.split(b"Content-Length")[0]
    no_length = parse(head + b"\r\nhello")  # no Content-Length on UDP: the rest of the datagram is the body
    assert no_length.body == b"hello" and no_length.header("Content-Length") == "5"
    extra = parse(head + b"Content-Length: 2\r\n\r\nhello")  # §18.3: bytes beyond it are dropped
    assert extra.body == b"he"
    with pytest.raises(SipParseError, match="shorter than Content-Length 9"):
        parse(head + b"Content-Length: 9\r\n\r\nhello")
    with pytest.raises(SipParseError, match="more than one Content-Length"):
        parse(head + b"Content-Length: 5\r\nl: 5\r\n\r\nhello")
    with pytest.raises(SipParseError, match="malformed Content-Length"):
        parse(head + b"Content-Length: -5\r\n\r\nhello")


def test_keepalive_crlfs_before_start_line_are_ignored() -> None:
    assert parse(b"\r\n\r\n" + BYE) == parse(BYE)


BAD = [
    (b"", "empty message", 400),
    (b"\r\n\r\n", "empty message", 400),
    (BYE.replace(b"\r\n\r\n", b"\r\n"), "no blank line", 400),
    (BYE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), "unsupported SIP version 'SIP/3.0'", 505),
    (BYE.replace(b"BYE sip:", b"BYE  sip:", 1), "malformed request line", 400),
    (BYE.replace(b"BYE sip:service", b"BYE service", 1), "malformed Request-URI", 400),
    (BYE.replace(b"BYE sip", b"B(E sip", 1), "malformed method", 400),
    (BYE.replace(b"CSeq: 2 BYE", b"CSeq: 2 INVITE"), "differs from the request method", 400),
    (BYE.replace(b"CSeq: 2 BYE", b"CSeq: two BYE"), "malformed CSeq", 400),
    (BYE.replace(b"CSeq: 2 BYE", b"CSeq: 4294967296 BYE"), "is not below 2**31", 400),
    (BYE.replace(b"CSeq: 2 BYE\r\n", b""), "missing CSeq header", 400),
    (BYE.replace(b"Call-ID: 1-24163@127.0.0.1\r\n", b""), "missing Call-ID", 400),
    (BYE.replace(b"Via: SIP/2.0/UDP", b"Via: SIP/2.0 UDP"), "malformed Via", 400),
    (BYE.replace(b"5097;branch", b"99999;branch"), "malformed Via port", 400),
    (BYE.replace(b"From: sipp <", b'From: "sipp <'), "unterminated", 400),
    (BYE.replace(b"5098>;tag=hub1", b"5098;tag=hub1"), "unterminated '<'", 400),
    (BYE.replace(b"tag=hub1", b"tag=a;tag=b"), "duplicate parameter 'tag'", 400),
    (BYE.replace(b"Max-Forwards: 70", b"Max-Forwards: 7000"), "malformed Max-Forwards", 400),
    (BYE.replace(b"Max-Forwards: 70", b"Max-Forwards 70"), "header line without ':'", 400),
    (BYE.replace(b"Max-Forwards: 70", b"Max Forwards: 70"), "malformed header name", 400),
    (BYE.replace(b"Max-Forwards: 70", b"Max-Forwards: 7\x000"), "control character", 400),
    (BYE.replace(b"Max-Forwards: 70", b"Max-Forwards: \xff"), "not UTF-8", 400),
    (BYE.replace(b"Via:", b" Via:"), "folded header line before any header", 400),
    (BYE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nTo: <sip:x@y>\r\n"), "more than one To", 400),
    (b"SIP/2.0 2000 OK\r\n\r\n", "malformed status line", 400),
]


@pytest.mark.parametrize(("data", "message", "status"), BAD)
def test_malformed_messages(data: bytes, message: str, status: int) -> None:
    with pytest.raises(SipParseError, match=re.escape(message)) as err:
        parse(data)
    assert err.value.status == status


def test_limits() -> None:
    many = BYE.replace(b"Content-Length", b"X-A: 1\r\n" * 100 + b"Content-Length")
    with pytest.raises(SipParseError, match="more than 100 header lines"):
        parse(many)
    wide = BYE.replace(b"Content-Length", b"Allow: " + b"A," * 600 + b"\r\nContent-Length")
    with pytest.raises(SipParseError, match="more than 512 header values"):
        parse(wide)
    with pytest.raises(SipParseError, match="exceeds") as err:
        parse(BYE + b"x" * MAX_MESSAGE)
    assert err.value.status == 513


def test_partial_message_still_gets_a_400() -> None:
    with pytest.raises(SipParseError) as err:
        parse(BYE.replace(b"CSeq: 2 BYE", b"CSeq: 2 INVITE"))
    assert err.value.partial is not None
    reply = parse(response_for(err.value.partial, 400, "Bad Request", to_tag="x").to_bytes())
    assert reply.status == 400 and reply.call_id == "1-24163@127.0.0.1"
    assert reply.to.tag == "hub1"  # the request's To tag is kept, not replaced


def test_response_for_copies_per_8_2_6() -> None:
    invite = parse(SIPP_INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nTimestamp: 54\r\n"))
    trying = parse(response_for(invite, 100, "Trying").to_bytes())
    assert trying.to.tag is None and trying.header("Timestamp") == "54"
    ok = response_for(
        invite,
        200,
        "OK",
        to_tag="hub-tag",
        headers=[("m", "<sip:hub@192.0.2.1:5060>")],
        body=b"v=0\r\n",
        content_type="application/sdp",
    )
    wire = ok.to_bytes()
    assert wire.startswith(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5097;branch=z9hG4bK-24163-1-0\r\n")
    back = parse(wire)
    assert back.status == 200 and back.reason == "OK"
    assert back.to.tag == "hub-tag" and back.to.uri == invite.to.uri
    assert (back.from_, back.call_id, back.cseq) == (invite.from_, invite.call_id, invite.cseq)
    assert back.header("Timestamp") is None
    assert back.contact is not None and back.contact.uri == "sip:hub@192.0.2.1:5060"
    assert back.body == b"v=0\r\n" and back.header("Content-Length") == "5"
    with pytest.raises(ValueError, match="needs a request"):
        response_for(back, 200, "OK")


def test_request_building_and_injection() -> None:
    bye = request(
        "BYE",
        "sip:sipp@127.0.0.1:5097",
        [
            ("v", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx;rport"),
            ("From", "<sip:live@192.0.2.1>;tag=hub1"),
            ("To", "sipp <sip:sipp@127.0.0.1:5097>;tag=24163SIPpTag001"),
            ("Call-ID", "1-24163@127.0.0.1"),
            ("CSeq", "1 BYE"),
            ("Max-Forwards", "70"),
            ("Content-Length", "999"),  # replaced by the true length
        ],
    )
    back = parse(bye.to_bytes())
    headers = [*bye.headers[:-1], ("Content-Length", "0")]
    assert back == SipMessage(method="BYE", uri="sip:sipp@127.0.0.1:5097", headers=headers)
    assert back.headers[0][0] == "Via"  # the compact form was expanded
    evil = request("BYE", "sip:a@b", [("Subject", "x\r\nVia: SIP/2.0/UDP evil")])
    with pytest.raises(ValueError, match="line break"):
        evil.to_bytes()
    with pytest.raises(ValueError, match="not a token"):
        request("BY E", "sip:a@b", [])


def test_stream_framer_pipelined_drip_feed() -> None:
    stream = b"\r\n\r\n" + SIPP_INVITE + b"\r\n\r\n" + BYE + BARESIP_INVITE  # with RFC 5626 keep-alives
    framer = StreamFramer()
    frames: list[bytes] = []
    for i in range(len(stream)):
        frames += framer.feed(stream[i : i + 1])
    assert frames == [SIPP_INVITE, BYE, BARESIP_INVITE]
    assert framer.buffered == 0
    whole = StreamFramer().feed(stream)
    assert [parse(f) for f in whole] == [parse(SIPP_INVITE), parse(BYE), parse(BARESIP_INVITE)]


def test_stream_framer_errors_are_final() -> None:
    framer = StreamFramer()
    assert framer.feed(BYE[:30]) == []
    with pytest.raises(SipParseError, match="Content-Length is required"):
        framer.feed(BYE[30:].replace(b"Content-Length: 0\r\n", b""))
    with pytest.raises(SipParseError, match="already failed"):
        framer.feed(BYE)
    with pytest.raises(SipParseError, match="garbage"):
        StreamFramer().feed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n")  # a TLS hello on the SIP port
    with pytest.raises(SipParseError, match="exceeds") as err:
        StreamFramer().feed(BYE.replace(b"Content-Length: 0", b"Content-Length: 70000"))
    assert err.value.status == 513
    with pytest.raises(SipParseError, match="head larger"):
        StreamFramer(max_message=1024).feed(b"OPTIONS sip:x SIP/2.0\r\n" + b"X-A: b\r\n" * 200)
    with pytest.raises(SipParseError, match="conflicting"):
        StreamFramer().feed(BYE.replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 3"))
