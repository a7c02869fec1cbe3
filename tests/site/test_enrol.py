"""Enrolment against a small real HTTP hub (FastAPI under uvicorn, in a thread) that mints with a real
NatsAuthority; the credentials then open a real nats-server in JWT mode. The plaintext contract (`insecure`),
then HTTPS with the token's pin: the real hub, and a rogue hub with another certificate."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import nats
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel
from tests.helpers import wait_until_sync

from citycast.bus import jwt
from citycast.bus.authority import NatsAuthority, site_inbox_prefix
from citycast.bus.connection import connect, settle
from citycast.bus.jwt import KeyKind
from citycast.bus.server import EmbeddedNats, free_port
from citycast.bus.tls import HubTls
from citycast.hub.runtime import Hub, HubOptions, ServeError
from citycast.site.enrol import CredentialsFileError, EnrolError, SiteCredentials, default_path, enrol

TRUSTED = "ab" * 32


class EnrolIn(BaseModel):
    token: str
    nkey_public: str


@dataclass
class FakeHub:
    """The hub's side of the contract in docs/hub-internals.md, reduced to one site and one token."""

    authority: NatsAuthority
    nats_url: str
    tokens: dict[str, str] = field(default_factory=lambda: {"tok-1": "s1"})
    received: list[dict[str, str]] = field(default_factory=list)
    answer_override: dict[str, object] | None = None

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/api/enrol")
        def do_enrol(body: EnrolIn) -> dict[str, object]:
            self.received.append(body.model_dump())
            site = self.tokens.pop(body.token, None)
            if site is None:
                raise HTTPException(401, "enrolment token unknown, used or expired")
            try:
                user_jwt = self.authority.mint_site_jwt(site, body.nkey_public)
            except ValueError as e:
                raise HTTPException(400, str(e)) from e
            if self.answer_override is not None:
                return self.answer_override
            return {
                "site": site,
                "prefix": "citycast",
                "nats_urls": [self.nats_url],
                "user_jwt": user_jwt,
                "trusted_keys": [TRUSTED],
                "delay_ms": 250,
                "time_subject": "citycast.time",
                "inbox_prefix": site_inbox_prefix(site),
            }

        return app


@pytest.fixture
def hub(authority: NatsAuthority, auth_nats: EmbeddedNats) -> Iterator[tuple[str, FakeHub]]:
    fake = FakeHub(authority, auth_nats.url)
    port = free_port()
    web = uvicorn.Server(uvicorn.Config(fake.app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    wait_until_sync(lambda: web.started, "uvicorn to start", timeout=10, every=0.02)
    try:
        yield f"http://127.0.0.1:{port}", fake
    finally:
        web.should_exit = True
        thread.join(timeout=10)


async def test_enrol_keeps_the_seed_local_and_the_creds_work(hub: tuple[str, FakeHub], tmp_path: Path) -> None:
    url, fake = hub
    path = tmp_path / "etc" / "citycast" / "site.json"
    creds = await enrol(url + "/", "tok-1", path, insecure=True)
    assert creds.site == "s1" and creds.trusted_keys == [TRUSTED] and creds.delay_ms == 250
    # Only the public key went over the wire; the seed is the site's own.
    assert fake.received == [{"token": "tok-1", "nkey_public": creds.nkey_public}]
    assert creds.seed not in json.dumps(fake.received)
    assert jwt.decode(creds.user_jwt)["sub"] == creds.nkey_public
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert SiteCredentials.load(path) == creds
    creds_path = path.with_suffix(".creds")
    assert creds_path.stat().st_mode & 0o777 == 0o600

    nc = await nats.connect(creds.nats_urls[0], user_credentials=str(creds_path), inbox_prefix=creds.inbox_prefix)
    sub = await nc.subscribe("citycast.cmd.s1")
    await nc.publish("citycast.telemetry.s1", b"{}")
    await settle(nc, 3)
    assert nc.is_connected and sub is not None
    await nc.close()

    # The token worked once.
    with pytest.raises(EnrolError, match=r"refused enrolment \(401\): enrolment token unknown"):
        await enrol(url, "tok-1", tmp_path / "again.json", insecure=True)
    assert not (tmp_path / "again.json").exists()


async def test_enrol_errors_are_clear(hub: tuple[str, FakeHub], tmp_path: Path) -> None:
    url, fake = hub
    path = tmp_path / "site.json"
    with pytest.raises(EnrolError, match="token is empty"):
        await enrol(url, "  ", path)
    with pytest.raises(EnrolError, match="cannot reach the hub"):
        await enrol(f"http://127.0.0.1:{free_port()}", "tok-1", path, timeout=2, insecure=True)
    fake.answer_override = {"site": "s1", "prefix": "citycast"}
    with pytest.raises(EnrolError, match=r"not usable: missing .*user_jwt"):
        await enrol(url, "tok-1", path, insecure=True)
    # A JWT minted for another key than the one this site sent must not be stored.
    fake.tokens["tok-2"] = "s1"
    other = fake.authority.mint_site_jwt("s1", jwt.public_key(jwt.new_seed(KeyKind.USER)))
    fake.answer_override = {
        "site": "s1",
        "prefix": "citycast",
        "nats_urls": ["nats://x:4222"],
        "user_jwt": other,
        "trusted_keys": [],
        "delay_ms": 100,
        "time_subject": "citycast.time",
        "inbox_prefix": "_INBOX_s1",
    }
    with pytest.raises(EnrolError, match="not issued for this site's key"):
        await enrol(url, "tok-2", path, insecure=True)
    assert not path.exists()


def _sample(tmp_path: Path) -> SiteCredentials:
    seed = jwt.new_seed(KeyKind.USER)
    authority = NatsAuthority.load_or_create(tmp_path / "auth")
    return SiteCredentials(
        site="s1",
        prefix="citycast",
        nats_urls=["nats://127.0.0.1:4222"],
        user_jwt=authority.mint_site_jwt("s1", jwt.public_key(seed)),
        seed=seed,
        trusted_keys=[TRUSTED],
        delay_ms=80.0,
        time_subject="citycast.time",
        inbox_prefix="_INBOX_s1",
    )


def test_load_refuses_missing_corrupt_and_exposed_files(tmp_path: Path) -> None:
    path = tmp_path / "site.json"
    with pytest.raises(CredentialsFileError, match="does not exist: enrol"):
        SiteCredentials.load(path)
    creds = _sample(tmp_path)
    creds.save(path)
    assert SiteCredentials.load(path) == creds
    os.chmod(path, 0o644)
    with pytest.raises(CredentialsFileError, match=r"readable by others .*0644.*chmod 600"):
        SiteCredentials.load(path)
    os.chmod(path, 0o600)
    path.write_text("{not json")
    with pytest.raises(CredentialsFileError, match="not readable JSON"):
        SiteCredentials.load(path)
    data = json.loads(creds.to_json())
    for broken, message in (
        ({k: v for k, v in data.items() if k != "seed"}, "missing seed"),
        ({**data, "delay_ms": "soon"}, "delay_ms"),
        ({**data, "trusted_keys": ["xyz"]}, "64 hex digits"),
        ({**data, "seed": jwt.new_seed(KeyKind.USER)}, "not issued for this site's key"),
        ([1, 2], "not a JSON object"),
    ):
        path.write_text(json.dumps(broken))
        with pytest.raises(CredentialsFileError, match=message):
            SiteCredentials.load(path)


def test_creds_file_is_what_nats_reads(tmp_path: Path) -> None:
    creds = _sample(tmp_path)
    written = creds.creds_file(tmp_path / "box" / "site.json")
    assert written == tmp_path / "box" / "site.creds"
    assert written.stat().st_mode & 0o777 == 0o600
    assert jwt.load_creds(written) == jwt.Credentials(creds.user_jwt, creds.seed)
    assert replace(creds, delay_ms=90.0).delay_ms == 90.0


def test_default_path_depends_on_who_runs_it() -> None:
    expected = Path("/etc/citycast/site.json") if os.geteuid() == 0 else Path.home() / ".config/citycast/site.json"
    assert default_path() == expected


# -- HTTPS and the token's pin -----------------------------------------------------------------------------------


@dataclass
class RogueHub:
    """A server that is not the hub the token is for: it answers the CA request with `ca_answer` and records
    every enrolment it receives (what an impostor wants: the token)."""

    ca_answer: str
    ca_requests: int = 0
    received: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/api/enrol/ca", response_class=PlainTextResponse)
        def ca() -> str:
            self.ca_requests += 1
            return self.ca_answer

        @app.post("/api/enrol")
        def do_enrol(body: EnrolIn) -> dict[str, object]:
            self.received.append(body.model_dump())
            seed = jwt.new_seed(KeyKind.USER)
            rogue_auth = NatsAuthority.load_or_create(Path(tempfile.mkdtemp()) / "auth")
            return {  # credentials of the attacker's own bus, his own "trusted" key, his own CA
                "site": "s1",
                "prefix": "citycast",
                "nats_urls": ["nats://127.0.0.1:4222"],
                "user_jwt": rogue_auth.mint_site_jwt("s1", body.nkey_public),
                "trusted_keys": ["cd" * 32],
                "delay_ms": 80,
                "time_subject": "citycast.time",
                "inbox_prefix": site_inbox_prefix("s1"),
                "hub_ca": self.ca_answer,
                "unused": jwt.public_key(seed),
            }

        return app


@contextlib.contextmanager
def _serve(app: FastAPI, tls: HubTls | None = None) -> Iterator[str]:
    port = free_port()
    extra = {"ssl_certfile": str(tls.cert_path), "ssl_keyfile": str(tls.key_path)} if tls else {}
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **extra))  # type: ignore[arg-type]
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    wait_until_sync(lambda: web.started, "uvicorn to start", timeout=10, every=0.02)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        thread.join(timeout=10)


async def test_a_rogue_hub_gets_no_token_and_the_site_keeps_nothing(tmp_path: Path) -> None:
    """The token pins the real hub's CA. An impostor over HTTPS with its own CA and certificate (for the very
    same address) is refused before the token is sent, whether it shows its own CA or the real (public) one;
    an impostor on this machine's plain HTTP that does get the token cannot make the site keep its bus, keys
    or CA."""
    real = HubTls.load_or_create(tmp_path / "real-tls", [])
    token = f"secret-token.{real.fingerprint()}"
    rogue_tls = HubTls.load_or_create(tmp_path / "rogue-tls", [])
    path = tmp_path / "site.json"
    for shown in (rogue_tls.ca_pem(), real.ca_pem()):
        rogue = RogueHub(ca_answer=shown)
        with (
            _serve(rogue.app(), rogue_tls) as url,
            pytest.raises(EnrolError, match=r"not the hub this token is for|cannot reach the hub"),
        ):
            await enrol(url, token, path)
        assert rogue.ca_requests == 1 and rogue.received == []  # asked for its CA, never given the token
        assert not path.exists() and not path.with_suffix(".creds").exists()
    rogue = RogueHub(ca_answer=rogue_tls.ca_pem())
    with _serve(rogue.app()) as url, pytest.raises(EnrolError, match="CA that is not the token's"):
        await enrol(url, token, path)
    assert not path.exists() and not path.with_suffix(".creds").exists()


async def test_plaintext_enrolment_is_refused_off_this_machine(tmp_path: Path) -> None:
    """http:// to another machine sends nothing without --insecure; neither does a token without a pin."""
    path = tmp_path / "site.json"
    with pytest.raises(EnrolError, match="refusing to send the enrolment token in plaintext"):
        await enrol("http://192.0.2.10:8000", "secret.fingerprint", path, timeout=2)
    with pytest.raises(EnrolError, match="carries no fingerprint"):
        await enrol("https://127.0.0.1:1", "secret", path, timeout=2)
    with pytest.raises(EnrolError, match="must be https://"):
        await enrol("ftp://hub", "secret.fp", path)
    assert not path.exists()


async def test_enrol_over_https_with_the_real_hub(tmp_path: Path) -> None:
    """The whole path as an operator runs it: a hub with --https, the token from its API (SECRET.FINGERPRINT),
    `enrol https://…`, then the site's bus connection is TLS to that hub's CA."""
    hub = Hub(HubOptions(data_dir=tmp_path / "hub", http_port=free_port(), nats_port=free_port(),
                         https=("127.0.0.1", free_port())))  # fmt: skip
    await hub.start()
    try:
        assert hub.tls is not None and hub.https_url is not None
        async with httpx.AsyncClient(base_url=hub.https_url, timeout=20, verify=hub.tls.client_context()) as api:
            r = await api.post("/api/login", json={"username": "admin", "password": hub.admin_password})
            api.headers["Authorization"] = f"Bearer {r.json()['token']}"
            r = await api.post("/api/sites", json={"name": "s1", "lat": 24.86, "lon": 67.02})
            assert r.status_code in (200, 201), r.text
            token = r.json()["enrol_token"]
            assert token.endswith("." + hub.tls.fingerprint())
            assert r.json()["enrol_command"].startswith(f"citycast site --enrol {hub.https_url} ")
        path = tmp_path / "site" / "site.json"
        creds = await enrol(hub.https_url, token, path)
        assert creds.hub_ca == hub.tls.ca_pem() and creds.nats_urls[0].startswith("tls://")
        assert SiteCredentials.load(path).hub_ca == hub.tls.ca_pem()
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=20) as plain:
            transport = (await plain.get("/api/transport")).json()
            assert transport == {"insecure": False, "ca_fingerprint": hub.tls.fingerprint()}
        nc = await connect(creds.nats_urls[0], name="site:s1", creds=creds.creds_file(path), forever=False,
                           inbox_prefix=creds.inbox_prefix)  # fmt: skip
        await nc.publish("citycast.telemetry.s1", b"{}")
        await settle(nc, 3)
        await nc.close()
    finally:
        await hub.stop()


async def test_a_hub_serves_plain_http_off_loopback_only_when_told(tmp_path: Path) -> None:
    hub = Hub(HubOptions(data_dir=tmp_path / "hub", http_host="0.0.0.0", http_port=free_port(), nats_port=free_port()))
    with pytest.raises(ServeError, match="--insecure"):
        await hub.start()


async def test_an_insecure_hub_says_so_and_its_sites_must_too(tmp_path: Path) -> None:
    """--insecure: plaintext NATS, tokens without a pin (a site enrols only with --insecure), and the hub shows
    it in /metrics (citycast_insecure 1) and to the console's banner (/api/transport, no login needed)."""
    hub = Hub(HubOptions(data_dir=tmp_path / "hub", http_port=free_port(), nats_port=free_port(), insecure=True))
    await hub.start()
    try:
        assert hub.nats_url.startswith("nats://") and hub.authority is not None and hub.authority.hub_ca is None
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=20) as api:
            assert (await api.get("/api/transport")).json() == {"insecure": True, "ca_fingerprint": None}
            r = await api.post("/api/login", json={"username": "admin", "password": hub.admin_password})
            api.headers["Authorization"] = f"Bearer {r.json()['token']}"
            assert "citycast_insecure 1.0" in (await api.get("/metrics")).text
            token = (await api.post("/api/sites", json={"name": "s1", "lat": 24.86, "lon": 67.02})).json()[
                "enrol_token"
            ]
        assert "." not in token
        with pytest.raises(EnrolError, match="carries no fingerprint"):
            await enrol(hub.http_url, token, tmp_path / "site.json")
        creds = await enrol(hub.http_url, token, tmp_path / "site.json", insecure=True)
        assert creds.hub_ca == "" and creds.nats_urls[0].startswith("nats://")
    finally:
        await hub.stop()
