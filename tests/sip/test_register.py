"""Trunk registration: the `Registration` state machine in simulated time, sans-IO. The digest is tested in
test_digest.py; the `Telephone` registering with sipp as the registrar in tests/hub/telephone/test_trunk_register.py."""

from __future__ import annotations

import re

import pytest

from citycast.sip.digest import best_challenge, digest_response
from citycast.sip.message import SipMessage, parse, response_for
from citycast.sip.register import RegisterConfig, Registration

AOR = "sip:4711@trunk.example"
CHALLENGE = 'Digest realm="trunk.example", nonce="abc123", qop="auth", algorithm=MD5, opaque="xyz"'


# -- the state machine in simulated time ---------------------------------------------------------------------
def reg(**kw: object) -> Registration:
    cfg = RegisterConfig(AOR, "s3cret", **kw)  # type: ignore[arg-type]
    return Registration(cfg, contact="sip:4711@192.0.2.10:5060", sent_by="192.0.2.10:5060")


def answer(req: SipMessage, status: int, reason: str, headers: list[tuple[str, str]] | None = None) -> SipMessage:
    wire = parse(req.to_bytes())  # what the registrar would see
    return parse(response_for(wire, status, reason, to_tag="reg1", headers=headers or []).to_bytes())


def auth_params(req: SipMessage, header: str = "Authorization") -> dict[str, str]:
    value = req.header(header)
    assert value is not None and value.startswith("Digest "), req.headers
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|[^,\s]+)', value)}


def check_digest(req: SipMessage, password: str, header: str = "Authorization") -> None:
    """What a registrar does: recompute the response from the request's own parameters."""
    p = auth_params(req, header)
    assert p["uri"] == req.uri and p["username"] == "4711"
    expected = digest_response(algorithm=p["algorithm"], username=p["username"], realm=p["realm"], password=password,
                               method="REGISTER", uri=p["uri"], nonce=p["nonce"], qop=p.get("qop"), nc=p.get("nc"),
                               cnonce=p.get("cnonce"))  # fmt: skip
    assert p["response"] == expected


def register_ok(r: Registration, now: float, expires: str = "60") -> SipMessage:
    first = r.start(now)
    assert first.header("Authorization") is None and first.header("Expires") == "3600"
    second = r.on_response(answer(first, 401, "Unauthorized", [("WWW-Authenticate", CHALLENGE)]), now)
    assert second is not None
    assert r.on_response(answer(second, 200, "OK", [("Expires", expires)]), now) is None
    return second


def test_register_answers_the_challenge_and_refreshes_at_half_the_expiry() -> None:
    r = reg()
    second = register_ok(r, 100.0)
    check_digest(second, "s3cret")
    p = auth_params(second)
    assert (p["nc"], p["qop"], p["opaque"], p["realm"]) == ("00000001", "auth", "xyz", "trunk.example")
    assert second.uri == "sip:trunk.example" and second.header("Contact") == "<sip:4711@192.0.2.10:5060>"
    assert second.from_.uri == AOR and second.to.uri == AOR and second.from_.tag
    assert r.status == "registered" and r.error is None and r.granted == 60
    assert r.next_deadline() == 130.0  # half of 60 s
    assert r.tick(129.9) is None
    refresh = r.tick(130.0)
    assert refresh is not None
    # Same Call-ID and From tag, the next CSeq, a fresh branch, the nonce reused with the next nonce count.
    assert refresh.call_id == second.call_id and refresh.from_.tag == second.from_.tag
    assert refresh.cseq[0] == second.cseq[0] + 1 and refresh.vias[0].branch != second.vias[0].branch
    assert auth_params(refresh)["nc"] == "00000002"
    check_digest(refresh, "s3cret")
    # The registrar grants less through our Contact's expires parameter than its Expires header says.
    ok = answer(refresh, 200, "OK", [("Contact", "<sip:4711@192.0.2.10:5060>;expires=600"), ("Expires", "3600")])
    assert r.on_response(ok, 130.0) is None
    assert r.granted == 600 and r.next_deadline() == 430.0
    assert r.snapshot(130.0)["expires_in_s"] == 600.0 and r.snapshot(130.0)["status"] == "registered"
    assert "s3cret" not in repr(r.config) and "s3cret" not in repr(r.snapshot(130.0))


def test_short_expiry_refreshes_no_more_often_than_the_minimum_but_before_it_lapses() -> None:
    r = reg()
    register_ok(r, 0.0, expires="40")
    assert r.next_deadline() == 30.0  # half would be 20: not more often than every 30 s
    r = reg()
    register_ok(r, 0.0, expires="20")
    assert r.next_deadline() == 18.0  # 30 s would let it lapse: refresh at 90 %


def test_wrong_password_fails_clearly_after_one_answer_and_waits_long() -> None:
    r = reg()
    first = r.start(0.0)
    second = r.on_response(answer(first, 401, "Unauthorized", [("WWW-Authenticate", CHALLENGE)]), 0.0)
    assert second is not None
    again = answer(second, 401, "Unauthorized", [("WWW-Authenticate", CHALLENGE.replace("abc123", "def456"))])
    assert r.on_response(again, 0.5) is None
    assert r.status == "failed" and "wrong user name or password" in (r.error or "")
    assert r.next_deadline() == 0.5 + 3600 and r.tick(1000.0) is None and r.sent == 2
    # An hour later it tries once more, from scratch.
    retry = r.tick(3600.5)
    assert retry is not None and retry.header("Authorization") is None and r.status == "registering"


def test_403_fails_without_retrying_soon() -> None:
    r = reg()
    first = r.start(0.0)
    assert r.on_response(answer(first, 403, "Forbidden"), 0.0) is None
    assert r.status == "failed" and "403" in (r.error or "") and r.next_deadline() == 3600.0


def test_stale_nonce_is_answered_again_not_counted_as_a_failure() -> None:
    r = reg()
    second = register_ok(r, 0.0)
    refresh = r.tick(30.0)
    assert refresh is not None
    stale = CHALLENGE.replace("abc123", "fresh9") + ", stale=true"
    again = r.on_response(answer(refresh, 401, "Unauthorized", [("WWW-Authenticate", stale)]), 30.0)
    assert again is not None and r.status == "registering"
    p = auth_params(again)
    assert (p["nonce"], p["nc"]) == ("fresh9", "00000001")
    check_digest(again, "s3cret")
    assert auth_params(second)["nonce"] == "abc123"
    # A registrar that never reuses nonces answers a preemptive Authorization with a plain new challenge: fine once.
    r.on_response(answer(again, 200, "OK", [("Expires", "60")]), 30.0)
    refresh = r.tick(60.0)
    assert refresh is not None
    plain = CHALLENGE.replace("abc123", "n3w")
    again = r.on_response(answer(refresh, 401, "Unauthorized", [("WWW-Authenticate", plain)]), 60.0)
    assert again is not None and auth_params(again)["nonce"] == "n3w" and r.status == "registering"


def test_proxy_challenge_and_strongest_algorithm() -> None:
    r = reg()
    first = r.start(0.0)
    headers = [("Proxy-Authenticate", CHALLENGE), ("Proxy-Authenticate", CHALLENGE.replace("MD5", "SHA-256"))]
    resp = answer(first, 407, "Proxy Authentication Required", headers)
    assert best_challenge(resp).algorithm == "SHA-256"
    second = r.on_response(resp, 0.0)
    assert second is not None and second.header("Authorization") is None
    assert auth_params(second, "Proxy-Authorization")["algorithm"] == "SHA-256"
    check_digest(second, "s3cret", "Proxy-Authorization")
    # A challenge we cannot answer is a clear failure too.
    r = reg()
    first = r.start(0.0)
    assert r.on_response(answer(first, 401, "Unauthorized", [("WWW-Authenticate", 'Basic realm="x"')]), 0.0) is None
    assert r.status == "failed" and "not Digest" in (r.error or "")


def test_failures_back_off_exponentially_and_honour_retry_after() -> None:
    r = reg(retry_s=30.0, max_retry_s=120.0)
    now = 0.0
    waits = []
    r.start(now)
    for _ in range(4):
        r.on_timeout(now)
        assert r.status == "retrying" and r.error == "the registrar did not answer"
        deadline = r.next_deadline()
        assert deadline is not None
        waits.append(deadline - now)
        now = deadline
        assert r.tick(now) is not None
    assert waits == [30.0, 60.0, 120.0, 120.0]
    req = r.tick(now) or r.start(now)
    assert r.on_response(answer(req, 503, "Service Unavailable", [("Retry-After", "300")]), now) is None
    assert r.next_deadline() == now + 300 and r.error == "503 Service Unavailable"


def test_423_raises_the_expiry_and_late_answers_are_ignored() -> None:
    r = reg(expires=60)
    first = r.start(0.0)
    second = r.on_response(answer(first, 423, "Interval Too Brief", [("Min-Expires", "600")]), 0.0)
    assert second is not None and second.header("Expires") == "600"
    assert r.on_response(answer(first, 200, "OK"), 0.0) is None and r.status == "registering"  # stale CSeq
    assert r.on_response(answer(second, 200, "OK"), 0.0) is None
    assert r.status == "registered" and r.granted == 600  # no Expires in the 200: what we asked for


def test_stop_unregisters_with_credentials_and_only_when_bound() -> None:
    r = reg()
    register_ok(r, 0.0)
    bye = r.stop(10.0)
    assert bye is not None and bye.header("Expires") == "0" and r.status == "unregistering"
    check_digest(bye, "s3cret")
    assert r.next_deadline() is None
    assert r.on_response(answer(bye, 200, "OK"), 10.0) is None
    assert r.status == "stopped" and r.expires_at is None
    never = reg()
    assert never.stop(0.0) is None and never.status == "stopped"


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="sip:user@host"):
        RegisterConfig("trunk.example", "x")
    with pytest.raises(ValueError, match="sip:user@host"):
        RegisterConfig("sip:trunk.example", "x")
    with pytest.raises(ValueError, match="bad registrar"):
        RegisterConfig(AOR, "x", registrar="host:99999")
    with pytest.raises(ValueError, match="positive"):
        RegisterConfig(AOR, "x", expires=0)
    cfg = RegisterConfig("sip:4711@trunk.example:5080", "x", username="auth-4711")
    assert (cfg.user, cfg.auth_user, cfg.registrar_address()) == ("4711", "auth-4711", ("trunk.example", 5080))
    assert RegisterConfig(AOR, "x", registrar="[::1]:5070").registrar_address() == ("::1", 5070)


def test_a_register_is_in_flight_until_its_final_answer_or_its_timeout() -> None:
    """What the telephone waits for before it unregisters at stop (RFC 3261 §10.2: one REGISTER at a time)."""
    r = reg()
    assert not r.in_flight
    register_ok(r, 100.0, expires="60")
    assert not r.in_flight
    refresh = r.tick(130.0)
    assert refresh is not None and r.in_flight
    assert r.on_response(answer(refresh, 100, "Trying"), 130.0) is None and r.in_flight  # provisional
    assert r.on_response(answer(refresh, 200, "OK", [("Expires", "60")]), 130.1) is None
    assert not r.in_flight
    assert r.tick(160.1) is not None and r.in_flight
    r.on_timeout(192.1)
    assert not r.in_flight
