"""Trunk registration: the digest against the RFC examples, the `Registration` state machine in simulated time,
and the `Telephone` registering with sipp acting as the trunk's registrar (401 challenge, verifyauth, refreshes,
unregister; a wrong password ends in a "failed" status after two REGISTERs)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from citycast.bus.server import free_port
from citycast.hub.runtime import Hub, HubOptions
from citycast.hub.telephone.service import Telephone
from citycast.sip.message import SipMessage, parse, response_for
from citycast.sip.register import (
    Challenge,
    DigestError,
    RegisterConfig,
    Registration,
    best_challenge,
    digest_response,
)

SCENARIOS = Path(__file__).parents[1] / "hub" / "telephone" / "scenarios"
AOR = "sip:4711@trunk.example"
CHALLENGE = 'Digest realm="trunk.example", nonce="abc123", qop="auth", algorithm=MD5, opaque="xyz"'


# -- the digest ------------------------------------------------------------------------------------------------
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


# -- the Telephone against sipp as the registrar -------------------------------------------------------------
needs_sipp = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed")


async def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    h = Hub(HubOptions(data_dir=tmp_path / "hub", http_port=free_port(), nats_port=free_port(), delay_ms=120))
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


async def registrar(tmp: Path, port: int, password: str, expires: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        "sipp", "-sf", str(SCENARIOS / "registrar.xml"), "-i", "127.0.0.1", "-p", str(port), "-t", "u1",
        "-m", "1", "-key", "user", "4711", "-key", "pass", password, "-key", "expires", str(expires),
        "-timeout", "40s", "-timeout_error", "-nostdin", "-trace_msg", "-message_file", str(tmp / "registrar.log"),
        "-trace_err", "-error_file", str(tmp / "registrar.err"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp,
    )  # fmt: skip
    await asyncio.sleep(0.5)  # let it bind; a REGISTER sent earlier is retransmitted by Timer E anyway
    return proc


async def finish(proc: asyncio.subprocess.Process, tmp: Path) -> tuple[int, str, str]:
    out, _ = await asyncio.wait_for(proc.communicate(), 50)
    text = out.decode(errors="replace")
    err = tmp / "registrar.err"
    text += err.read_text(errors="replace") if err.exists() else ""
    log = tmp / "registrar.log"
    return proc.returncode or 0, text, log.read_text(errors="replace") if log.exists() else ""


@pytest.mark.slow
@needs_sipp
async def test_telephone_registers_refreshes_and_unregisters(hub: Hub, tmp_path: Path) -> None:
    port = free_port()
    proc = await registrar(tmp_path, port, "s3cret", expires=2)
    cfg = RegisterConfig(f"sip:4711@127.0.0.1:{port}", "s3cret", min_refresh_s=1.0, retry_s=1.0)
    phone = Telephone(hub, "127.0.0.1", free_port(), register=cfg)
    try:
        await phone.start()
        reg = phone.registration
        assert reg is not None
        await wait_for(lambda: reg.status == "registered", 15, f"never registered: {phone.registration_status()}")
        assert reg.granted == 2
        # Two refreshes of the 2 s binding (at 1 s each), both accepted by verifyauth.
        await wait_for(lambda: reg.sent >= 4 and reg.status == "registered", 15, "never refreshed")
        status = phone.registration_status()
        assert status is not None and status["status"] == "registered" and status["error"] is None
        # The console's view of it: GET /api/telephone on the hub that runs this telephone.
        hub.context.telephone_status = phone.status
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=10) as api:
            r = await api.post("/api/login", json={"username": "admin", "password": hub.admin_password})
            api.headers["Authorization"] = f"Bearer {r.json()['token']}"
            shown = (await api.get("/api/telephone")).json()
        assert shown["enabled"] and shown["sip"] == f"127.0.0.1:{phone.port}" and shown["calls"] == 0
        assert shown["registration"]["status"] == "registered" and shown["registration"]["aor"] == cfg.aor
        assert "password" not in json.dumps(shown) and "s3cret" not in json.dumps(shown)
        assert shown["signalling"]["unparseable"] == 0
    finally:
        await phone.stop()
    code, out, trace = await finish(proc, tmp_path)
    assert code == 0, out  # the scenario reached its end: our Expires: 0 was authenticated and answered
    assert reg.status == "stopped" and reg.error is None
    received = [m for m in re.split(r"^-{20,}.*$", trace, flags=re.M) if "message received" in m]
    registers = [m for m in received if re.search(r"^\s*REGISTER sip:", m, re.M)]
    assert len(registers) >= 4, trace[-3000:]
    assert "Authorization" not in registers[0] and "nc=00000002" in trace  # the nonce reused on refresh
    assert re.search(r"^\s*Expires: 0\s*$", registers[-1], re.M), registers[-1]
    assert "SIP/2.0 403" not in trace


@pytest.mark.slow
@needs_sipp
async def test_wrong_password_ends_in_failed_status_without_hammering(hub: Hub, tmp_path: Path) -> None:
    port = free_port()
    proc = await registrar(tmp_path, port, "right-one", expires=60)
    cfg = RegisterConfig(f"sip:4711@127.0.0.1:{port}", "wrong-one", min_refresh_s=1.0, retry_s=0.5)
    phone = Telephone(hub, "127.0.0.1", free_port(), register=cfg)
    try:
        await phone.start()
        reg = phone.registration
        assert reg is not None
        await wait_for(lambda: reg.status == "failed", 15, f"did not fail: {phone.registration_status()}")
        assert "403" in (reg.error or "")
        await asyncio.sleep(2.0)  # four back-off periods of a transient failure: nothing more is sent
        assert reg.sent == 2 and reg.status == "failed"
        status = phone.registration_status()
        assert status is not None and status["next_attempt_in_s"] > 3000
    finally:
        await phone.stop()
    code, out, trace = await finish(proc, tmp_path)
    assert code == 0, out
    assert "SIP/2.0 403" in trace and "Expires: 0" not in trace  # never bound: nothing to unregister
