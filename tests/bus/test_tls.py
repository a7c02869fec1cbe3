"""TLS on the hub's NATS, played against as an attacker would: a plaintext client, a man in the middle with a
certificate of his own (that also relays plaintext to whoever speaks it), and a city leaf dialling through him.
Real nats-server processes in JWT mode, real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from tests.helpers import start_auth_nats, wait_until

from citycast.bus import jwt
from citycast.bus.authority import NatsAuthority, site_inbox_prefix
from citycast.bus.city_bundle import export_city_bundle
from citycast.bus.connection import connect, settle
from citycast.bus.jwt import KeyKind
from citycast.bus.rawnats import WireError, open_wire
from citycast.bus.server import EmbeddedNats, ServerTls, free_port
from citycast.bus.tls import CA_KEY, HubTls, ca_in_creds, creds_with_ca, fingerprint
from citycast.clock.local import SystemClock


@dataclass
class Bus:
    server: EmbeddedNats
    authority: NatsAuthority
    tls: HubTls
    leaf_port: int


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    tls = HubTls.load_or_create(tmp_path / "tls", [])
    NatsAuthority.trust_hub_ca(tmp_path / "auth", tls.ca_pem())
    authority = NatsAuthority.load_or_create(tmp_path / "auth")
    leaf_port = free_port()
    server = start_auth_nats(
        authority, tmp_path / "nats", leaf_listen_port=leaf_port, tls=ServerTls(tls.cert_path, tls.key_path)
    )
    try:
        yield Bus(server, authority, tls, leaf_port)
    finally:
        server.stop()


def _site_creds(bus: Bus, path: Path) -> Path:
    seed = jwt.new_seed(KeyKind.USER)
    text = jwt.creds_text(bus.authority.mint_site_jwt("s1", jwt.public_key(seed)), seed)
    jwt.write_private(path, creds_with_ca(text, bus.tls.ca_pem()))
    return path


class Interceptor:
    """A man in the middle between clients and the port `upstream`: a client that opens with a TLS ClientHello
    gets the attacker's certificate; one that waits for the server to speak first (plaintext NATS, as every
    client did before TLS) is relayed in plaintext. Upstream the attacker dials the real server as any client
    can: over TLS when the server has it (server authentication is one-way)."""

    def __init__(self, upstream_port: int, attacker: ssl.SSLContext, upstream_tls: ssl.SSLContext | None) -> None:
        self.upstream_port = upstream_port
        self.attacker = attacker
        self.upstream_tls = upstream_tls
        self.from_clients = bytearray()  # plaintext the attacker got to read from clients
        self.refused_handshakes = 0  # clients that would not accept the attacker's certificate
        self.relayed_sessions = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=self._session, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _session(self, conn: socket.socket) -> None:
        client: socket.socket = conn
        try:
            conn.settimeout(0.5)
            try:
                first = conn.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                first = b""
            conn.settimeout(5)
            if first == b"\x16":  # a TLS ClientHello: present the attacker's certificate
                try:
                    client = self.attacker.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    self.refused_handshakes += 1
                    return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            if self.upstream_tls is not None:
                upstream = self.upstream_tls.wrap_socket(upstream, server_hostname="127.0.0.1")
            self.relayed_sessions += 1
            self._relay(client, upstream)
        except OSError:
            pass
        finally:
            client.close()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        for s in (client, upstream):
            s.settimeout(0.05)
        peer = {client: upstream, upstream: client}
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([client, upstream], [], [], 0.1)
                ready += [s for s in (client, upstream) if isinstance(s, ssl.SSLSocket) and s.pending()]
                for s in dict.fromkeys(ready):
                    try:
                        data = s.recv(65536)
                    except (TimeoutError, ssl.SSLWantReadError):
                        continue
                    if not data:
                        return
                    if s is client:
                        self.from_clients += data
                    peer[s].sendall(data)
        except OSError:
            pass
        finally:
            upstream.close()


def _attacker_context(tmp: Path) -> tuple[ssl.SSLContext, HubTls]:
    rogue = HubTls.load_or_create(tmp / "rogue-tls", [])  # a CA and a certificate for the very same names
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(rogue.cert_path, rogue.key_path)
    return ctx, rogue


# -- the tests ----------------------------------------------------------------------------------------------------


def test_hub_ca_is_made_once_and_the_server_certificate_follows_the_names(tmp_path: Path) -> None:
    tls = HubTls.load_or_create(tmp_path / "tls", ["hub.example", "10.1.2.3"])
    assert (tmp_path / "tls" / CA_KEY).stat().st_mode & 0o777 == 0o600
    assert tls.key_path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    assert set(tls.server_names()) == {"127.0.0.1", "::1", "localhost", "hub.example", "10.1.2.3"}
    fp, cert = tls.fingerprint(), tls.cert_path.read_bytes()
    again = HubTls.load_or_create(tmp_path / "tls", ["hub.example", "10.1.2.3"])
    assert again.fingerprint() == fp and again.cert_path.read_bytes() == cert  # nothing changed, nothing remade
    moved = HubTls.load_or_create(tmp_path / "tls", ["hub.example", "radio.example"])
    assert moved.fingerprint() == fp  # the pin the sites hold survives a new name
    assert "radio.example" in moved.server_names() and "10.1.2.3" not in moved.server_names()
    assert len(fp) == 43 and fingerprint(tls.ca_pem()) == fp
    creds = creds_with_ca(jwt.creds_text("eyJ0.eyJ0.sig", jwt.new_seed(KeyKind.USER)), tls.ca_pem())
    assert ca_in_creds(creds) is not None and fingerprint(ca_in_creds(creds) or "") == fp


def test_a_plaintext_client_gets_nothing_from_the_hub(bus: Bus) -> None:
    """The attack: speak NATS in plaintext to the hub's client port (to sniff, or to strip TLS). The server
    says nothing first (TLS comes first) and a plaintext CONNECT gets no INFO, no PONG."""
    with socket.create_connection(("127.0.0.1", bus.server.port), timeout=5) as s:
        s.settimeout(1.0)
        with contextlib.suppress(TimeoutError):
            assert s.recv(4096) == b"", "the server spoke plaintext first"
        s.sendall(b'CONNECT {"verbose":false,"protocol":1}\r\nPING\r\n')
        got = b""
        deadline = time.monotonic() + 5
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while time.monotonic() < deadline and (data := s.recv(4096)):
                got += data
        assert b"INFO" not in got and b"PONG" not in got, got[:200]


async def test_nats_py_without_the_hub_ca_cannot_connect(bus: Bus) -> None:
    """The hub's own credentials, but plaintext (nats-py's default) or TLS trusting the system store: refused."""
    plain = bus.server.url.replace("tls://", "nats://")
    with pytest.raises((nats.errors.Error, OSError, TimeoutError)):
        await nats.connect(plain, user_credentials=str(bus.authority.hub_creds_path), allow_reconnect=False,
                           connect_timeout=2, max_reconnect_attempts=1)  # fmt: skip
    with pytest.raises((nats.errors.Error, OSError, TimeoutError)):
        await nats.connect(plain, user_credentials=str(bus.authority.hub_creds_path), allow_reconnect=False,
                           connect_timeout=2, max_reconnect_attempts=1, tls=ssl.create_default_context(),
                           tls_handshake_first=True)  # fmt: skip
    # The same creds through citycast's connect() (they carry the hub's CA) work.
    nc = await connect(bus.server.url, name="hub", creds=bus.authority.hub_creds_path, forever=False)
    await settle(nc, 3)
    await nc.close()


async def test_a_man_in_the_middle_gets_no_site_connection(bus: Bus, tmp_path: Path) -> None:
    """Between a site and the hub's NATS: an interceptor with its own CA and a certificate for 127.0.0.1, that
    also relays plaintext to any client that speaks it. The site's bus connection and its clock-sync wire both
    fail, and the attacker reads nothing of theirs, while a client that trusts the attacker's CA gets a working
    session through him (so the position is real)."""
    attacker, rogue = _attacker_context(tmp_path)
    mitm = Interceptor(bus.server.port, attacker, bus.tls.client_context())
    site_creds = _site_creds(bus, tmp_path / "site.creds")
    try:
        with pytest.raises((nats.errors.Error, OSError)):  # ssl's errors are OSErrors
            await connect(mitm.url, name="site:s1", creds=site_creds, forever=False, connect_timeout=2,
                          inbox_prefix=site_inbox_prefix("s1"))  # fmt: skip
        with pytest.raises((WireError, OSError)):
            async with asyncio.timeout(10):
                await open_wire(mitm.url, lambda m: None, SystemClock(), creds=site_creds, timeout=3)
        await wait_until(
            lambda: mitm.refused_handshakes >= 2,
            "both handshakes refused at the interceptor",
            timeout=5,
            detail=lambda: mitm.refused_handshakes,
        )
        assert b"CONNECT" not in mitm.from_clients and mitm.relayed_sessions == 0
        # Control: a client that trusts the attacker is relayed to the real hub and logs in.
        async with asyncio.timeout(30):
            victim = await connect(mitm.url, name="fooled", creds=site_creds, forever=False, tls=rogue.client_context(),
                               inbox_prefix=site_inbox_prefix("s1"))  # fmt: skip
        await settle(victim, 3)
        await victim.close()
        assert mitm.relayed_sessions == 1 and b"CONNECT" in mitm.from_clients
    finally:
        mitm.close()


async def _leaf_carries_audio(bus: Bus, city: EmbeddedNats, site_creds: Path) -> bool:
    """Whether audio published at the hub reaches a site on the city server within a few seconds."""
    site = await connect(city.url, name="site:s1", creds=site_creds, forever=False,
                         inbox_prefix=site_inbox_prefix("s1"))  # fmt: skip
    hub = await connect(bus.server.url, name="hub", creds=bus.authority.hub_creds_path, forever=False)
    try:
        sub = await site.subscribe("citycast.audio.1")
        await settle(site, 3)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            await hub.publish("citycast.audio.1", b"frame")
            await settle(hub, 3)
            try:
                await sub.next_msg(timeout=0.3)
                return True
            except nats.errors.TimeoutError:
                continue
        return False
    finally:
        await site.close()
        await hub.close()


async def test_the_city_leaf_verifies_the_hub(bus: Bus, tmp_path: Path) -> None:
    """A city server dials the hub's leafnode port through the interceptor: it refuses the attacker's
    certificate, so no leaf connection (and none of its creds) reaches him, and no audio comes down. Dialled
    directly, the same bundle joins and audio flows to a site on the city server (itself TLS, with a
    certificate of the hub's CA that the site verifies)."""
    attacker, _ = _attacker_context(tmp_path)
    mitm = Interceptor(bus.leaf_port, attacker, bus.tls.client_context())
    site_creds = _site_creds(bus, tmp_path / "site.creds")
    bundle = export_city_bundle(bus.authority, tmp_path / "north.json", "north", bus.tls)
    assert bundle.hub_ca == bus.tls.ca_pem() and bundle.city_cert
    city, _ = bundle.embedded_nats(f"nats://127.0.0.1:{mitm.port}", tmp_path / "city-mitm", port=free_port())
    city.start()
    try:
        assert not await _leaf_carries_audio(bus, city, site_creds)
        assert "TLS leafnode handshake error" in city.log_text(), city.log_tail()
        await wait_until(lambda: mitm.refused_handshakes >= 1, "the handshake refused at the interceptor", timeout=5)
        assert mitm.relayed_sessions == 0 and not mitm.from_clients
    finally:
        city.stop()
        mitm.close()
    city, _ = bundle.embedded_nats(f"nats://127.0.0.1:{bus.leaf_port}", tmp_path / "city", port=free_port())
    city.start()
    try:
        assert await _leaf_carries_audio(bus, city, site_creds), city.log_tail()
    finally:
        city.stop()
