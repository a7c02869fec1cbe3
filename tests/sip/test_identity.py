"""Who a call is from for the PIN limits (sans-IO): the signalling IP unless the peer is a trusted trunk, then the
asserted identity, else the From URI; real INVITEs parsed from bytes."""

from __future__ import annotations

import pytest

from citycast.sip.identity import caller_source, is_trusted, normalise_uri, parse_trunks
from citycast.sip.message import parse

TRUNKS = parse_trunks(["203.0.113.0/28", "2001:db8::5"])


def invite(*extra: str, from_: str = '"Caller" <sip:+923001234567@Trunk.Example:5060;user=phone>;tag=a1') -> bytes:
    lines = [
        "INVITE sip:citycast@192.0.2.1 SIP/2.0",
        "Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK-1",
        f"From: {from_}",
        "To: <sip:citycast@192.0.2.1>",
        "Call-ID: id-1",
        "CSeq: 1 INVITE",
        "Max-Forwards: 70",
        *extra,
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_an_untrusted_peer_is_its_ip_whatever_it_asserts() -> None:
    msg = parse(invite("P-Asserted-Identity: <sip:+923009999999@trunk.example>"))
    assert caller_source(msg, "198.51.100.7", TRUNKS) == "198.51.100.7"
    assert caller_source(msg, "198.51.100.7", ()) == "198.51.100.7"


def test_a_trusted_trunk_gives_the_asserted_identity_else_from() -> None:
    asserted = parse(invite('P-Asserted-Identity: "X" <sip:+923009999999@trunk.example>, <tel:+923009999999>'))
    assert caller_source(asserted, "203.0.113.5", TRUNKS) == "sip:+923009999999@trunk.example"
    plain = parse(invite())
    assert caller_source(plain, "203.0.113.5", TRUNKS) == "sip:+923001234567@trunk.example"
    assert caller_source(plain, "2001:db8::5", TRUNKS) == "sip:+923001234567@trunk.example"
    broken = parse(invite("P-Asserted-Identity: not a uri"))
    assert caller_source(broken, "203.0.113.5", TRUNKS) == "sip:+923001234567@trunk.example"  # falls back to From


def test_identities_are_normalised_and_bounded() -> None:
    assert normalise_uri("SIP:+92300@Trunk.Example:5060;user=phone?x=y") == "sip:+92300@trunk.example"
    assert normalise_uri("tel:+923001234567;phone-context=x") == "tel:+923001234567"
    assert normalise_uri("sip:alice@[2001:db8::1]:5060") == "sip:alice@[2001:db8::1]"
    assert len(normalise_uri("sip:" + "a" * 5000 + "@x")) == 128


def test_trunk_specs() -> None:
    assert is_trusted("203.0.113.15", TRUNKS) and not is_trusted("203.0.113.16", TRUNKS)
    assert not is_trusted("not-an-ip", TRUNKS)
    with pytest.raises(ValueError, match="IP address or CIDR"):
        parse_trunks(["trunk.example"])
