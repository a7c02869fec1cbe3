"""HTTP Digest as SIP uses it (sip/digest.py): the hash against the RFC examples, challenge parsing, the header
that answers a challenge (checked the way a registrar checks it), and the choice among several challenges."""

from __future__ import annotations

import re

import pytest

from citycast.sip.digest import Challenge, DigestError, authorization, best_challenge, digest_response
from citycast.sip.message import SipMessage, parse, request, response_for


def test_md5_digest_matches_rfc2617_example() -> None:
    # RFC 2617 §3.5.
    r = digest_response(algorithm="MD5", username="Mufasa", realm="testrealm@host.com", password="Circle Of Life",
                        method="GET", uri="/dir/index.html", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", qop="auth",
                        nc="00000001", cnonce="0a4f113b")  # fmt: skip
    assert r == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_digest_matches_rfc7616_examples(algorithm: str, expected: str) -> None:
    # RFC 7616 §3.9.1.
    r = digest_response(algorithm=algorithm, username="Mufasa", realm="http-auth@example.org",
                        password="Circle of Life", method="GET", uri="/dir/index.html",
                        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", qop="auth", nc="00000001",
                        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")  # fmt: skip
    assert r == expected


def test_digest_variants_differ_and_bad_ones_are_refused() -> None:
    base = dict(username="u", realm="r", password="p", method="REGISTER", uri="sip:r", nonce="n")
    plain = digest_response(algorithm="MD5", **base)  # RFC 2069 form: no qop
    sess = digest_response(algorithm="MD5-sess", qop="auth", nc="00000001", cnonce="c", **base)
    auth = digest_response(algorithm="MD5", qop="auth", nc="00000001", cnonce="c", **base)
    auth_int = digest_response(algorithm="MD5", qop="auth-int", nc="00000001", cnonce="c", body=b"x", **base)
    assert len({plain, sess, auth, auth_int}) == 4
    with pytest.raises(DigestError, match="not supported"):
        digest_response(algorithm="SHA-512-256", **base)
    with pytest.raises(DigestError, match="cnonce"):
        digest_response(algorithm="MD5", qop="auth", **base)


def test_challenge_parsing() -> None:
    ch = Challenge.parse('Digest realm="a, \\"b\\"", nonce="n1", qop="auth,auth-int", stale=TRUE, algorithm=sha-256')
    assert (ch.realm, ch.nonce, ch.qop, ch.stale, ch.algorithm) == ('a, "b"', "n1", ("auth", "auth-int"), True,
                                                                     "SHA-256")  # fmt: skip
    for bad, why in [
        ('Basic realm="x"', "not Digest"),
        ('Digest realm="x"', "without a nonce"),
        ('Digest realm="x", nonce="n", algorithm=SHA-512', "not supported"),
        ('Digest realm="x", nonce="n", qop="auth-conf"', "no supported qop"),
        ('Digest realm="x", nonce="n" garbage', "malformed"),
    ]:
        with pytest.raises(DigestError, match=why):
            Challenge.parse(bad)


def _params(value: str) -> dict[str, str]:
    assert value.startswith("Digest "), value
    found = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|[^,\s]+)', value.removeprefix("Digest "))
    return {k: re.sub(r"\\(.)", r"\1", v[1:-1]) if v.startswith('"') else v for k, v in found}


@pytest.mark.parametrize(
    ("challenge", "qop"),
    [
        ('Digest realm="trunk", nonce="n1", qop="auth,auth-int", algorithm=SHA-256, opaque="o\\"1"', "auth"),
        ('Digest realm="trunk", nonce="n1", qop="auth-int", algorithm=MD5-sess', "auth-int"),
        ('Digest realm="trunk", nonce="n1"', None),
    ],
)
def test_authorization_answers_the_challenge_as_a_registrar_checks_it(challenge: str, qop: str | None) -> None:
    ch = Challenge.parse(challenge)
    body = b"v=0\r\n"
    value = authorization(ch, username='a"b', password="s3cret", method="REGISTER", uri="sip:trunk", nc=2,
                          cnonce="c0ffee", body=body)  # fmt: skip
    p = _params(value)
    assert (p["username"], p["realm"], p["nonce"], p["uri"], p["algorithm"]) == ('a"b', "trunk", "n1", "sip:trunk",
                                                                                  ch.algorithm)  # fmt: skip
    assert p.get("qop") == qop and p.get("opaque") == ch.opaque
    if qop is not None:
        assert (p["nc"], p["cnonce"]) == ("00000002", "c0ffee")
    # The registrar's side: the same hash from what the header says, with the password it knows.
    expected = digest_response(algorithm=p["algorithm"], username=p["username"], realm=p["realm"], password="s3cret",
                               method="REGISTER", uri=p["uri"], nonce=p["nonce"], qop=p.get("qop"), nc=p.get("nc"),
                               cnonce=p.get("cnonce"), body=body)  # fmt: skip
    assert p["response"] == expected
    wrong = digest_response(algorithm=p["algorithm"], username=p["username"], realm=p["realm"], password="guess",
                            method="REGISTER", uri=p["uri"], nonce=p["nonce"], qop=p.get("qop"), nc=p.get("nc"),
                            cnonce=p.get("cnonce"), body=body)  # fmt: skip
    assert p["response"] != wrong


def _challenged(status: int, header: str, values: list[str]) -> SipMessage:
    req = request("REGISTER", "sip:trunk", [("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1"),
                  ("From", "<sip:4711@trunk>;tag=1"), ("To", "<sip:4711@trunk>"), ("Call-ID", "c1"),
                  ("CSeq", "1 REGISTER"), ("Max-Forwards", "70")])  # fmt: skip
    wire = parse(req.to_bytes())
    return parse(
        response_for(wire, status, "Unauthorized", to_tag="r", headers=[(header, v) for v in values]).to_bytes()
    )


def test_best_challenge_takes_the_strongest_it_can_answer() -> None:
    md5 = 'Digest realm="t", nonce="a", algorithm=MD5'
    sha = 'Digest realm="t", nonce="b", algorithm=SHA-256'
    unknown = 'Digest realm="t", nonce="c", algorithm=SHA-512-256'
    ch = best_challenge(_challenged(401, "WWW-Authenticate", [md5, unknown, sha]))
    assert (ch.algorithm, ch.nonce, ch.proxy) == ("SHA-256", "b", False)
    ch = best_challenge(_challenged(407, "Proxy-Authenticate", [md5]))
    assert (ch.algorithm, ch.proxy) == ("MD5", True)
    with pytest.raises(DigestError, match="without a WWW-Authenticate"):
        best_challenge(_challenged(401, "Proxy-Authenticate", [md5]))  # a 401 is answered from WWW-Authenticate
    with pytest.raises(DigestError, match=r"'SHA-512-256' is not supported .*; .*'Basic' is not Digest"):
        best_challenge(_challenged(401, "WWW-Authenticate", [unknown, 'Basic realm="t"']))
