from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import socket
import time
from pathlib import Path

import nats
import pytest

from citycast.bus.authority import NatsAuthority
from citycast.bus.server import (
    PID_FILE,
    EmbeddedNats,
    LeafRemote,
    NatsServerError,
    find_nats_server,
    free_port,
    port_is_free,
)


def test_finds_the_wheels_binary() -> None:
    assert find_nats_server().endswith("nats-server")


def test_explicit_binary_must_exist() -> None:
    with pytest.raises(NatsServerError, match="not an executable"):
        find_nats_server("/nonexistent/nats-server")


def test_starts_serves_and_stops(tmp_path: object) -> None:
    port = free_port()
    server = EmbeddedNats(port=port)
    server.start()
    try:

        async def roundtrip() -> bytes:
            nc = await nats.connect(server.url)
            sub = await nc.subscribe("x")
            await nc.publish("x", b"hello")
            msg = await sub.next_msg(timeout=2)
            js = nc.jetstream()
            await js.add_stream(name="probe", subjects=["probe.>"])  # JetStream is on
            await nc.close()
            return msg.data

        assert asyncio.run(roundtrip()) == b"hello"
    finally:
        server.stop()
    assert server.pid is None


def test_refuses_a_taken_port_with_a_clear_message() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(NatsServerError, match="already in use"):
            EmbeddedNats(port=port).start()


def test_auth_config_puts_the_server_in_operator_mode(authority: NatsAuthority, tmp_path: Path) -> None:
    server = EmbeddedNats(port=free_port(), workdir=tmp_path / "nats", auth_config=authority.server_config())
    assert server.config_text(tmp_path / "js").endswith(authority.server_config())
    assert "operator:" not in EmbeddedNats(port=1).config_text(tmp_path / "js")  # anonymous by default
    server.start()
    try:

        async def check() -> None:
            with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
                await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=1)
            nc = await nats.connect(server.url, user_credentials=str(authority.hub_creds_path))
            js = nc.jetstream()
            await js.add_stream(name="probe", subjects=["probe.>"])  # JetStream works in operator mode
            ack = await js.publish("probe.x", b"kept")
            assert ack.seq == 1
            await nc.close()

        asyncio.run(check())
    finally:
        server.stop()


def test_leaf_remote_binds_creds_and_account(tmp_path: Path) -> None:
    plain = EmbeddedNats(port=1, leaf_remotes=[LeafRemote("nats://hub:7422")]).config_text(tmp_path)
    assert '{ url: "nats://hub:7422", ignore_discovered_servers: true }' in plain
    creds = tmp_path / 'odd "dir"' / "leaf.creds"
    text = EmbeddedNats(
        port=1, leaf_listen_port=7422, leaf_remotes=[LeafRemote("nats://hub:7422", creds, "ABC")]
    ).config_text(tmp_path)
    assert 'listen: "127.0.0.1:7422"' in text
    assert 'credentials: "' + str(creds).replace('"', '\\"') + '"' in text and 'account: "ABC"' in text


def test_a_server_left_behind_by_a_dead_owner_is_stopped_at_the_next_start(tmp_path: Path) -> None:
    """The hub was killed (SIGKILL, OOM): its nats-server lives on and holds the port. The restarted hub, same data
    directory, stops that server and starts its own instead of failing on a taken port."""
    port = free_port()
    first = EmbeddedNats(port=port, workdir=tmp_path / "nats")
    first.start()
    orphan = first.pid
    assert orphan is not None
    first._proc = None  # the owner is gone without stopping it
    assert not port_is_free("127.0.0.1", port)
    second = EmbeddedNats(port=port, workdir=tmp_path / "nats")
    second.start()
    try:
        assert second.pid != orphan
        assert not Path(f"/proc/{orphan}/cmdline").exists() or Path(f"/proc/{orphan}/cmdline").read_bytes() == b""
    finally:
        second.stop()
    assert not (tmp_path / "nats" / PID_FILE).exists()


def test_only_our_own_server_is_ever_stopped(tmp_path: Path) -> None:
    """A pid file pointing at some other process (pids are reused) is not obeyed."""
    workdir = tmp_path / "nats"
    workdir.mkdir()
    (workdir / PID_FILE).write_text(f"{os.getpid()}\n")  # this very test process: must survive
    server = EmbeddedNats(port=free_port(), workdir=workdir)
    server.start()
    server.stop()
    assert Path(f"/proc/{os.getpid()}").exists()


def test_a_city_retries_only_the_hub_address_it_was_given(tmp_path: Path) -> None:
    """The hub listens on every interface and says so in its leafnode INFO; once the hub is gone the city must
    not spend its retries on addresses it was never given (from Karachi, the hub's London LAN is a black hole)."""
    leaf_port = free_port()
    hub = EmbeddedNats(host="0.0.0.0", port=free_port(), jetstream=False, leaf_listen_port=leaf_port,
                       workdir=tmp_path / "hub")  # fmt: skip
    city = EmbeddedNats(port=free_port(), jetstream=False, workdir=tmp_path / "city",
                        leaf_remotes=[LeafRemote(f"nats-leaf://127.0.0.1:{leaf_port}")])  # fmt: skip
    with hub, city:
        deadline = time.monotonic() + 15
        while "Leafnode connection created" not in city.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "Leafnode connection created" in city.log_text(), city.log_tail()
        hub.stop()
        tried: list[str] = []
        deadline = time.monotonic() + 20
        while len(tried) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
            tried = re.findall(r'connect as leafnode to remote server "([^"]+)"', city.log_text())
        assert len(tried) >= 4, city.log_tail()
        assert set(tried) == {f"127.0.0.1:{leaf_port}"}, tried


async def test_a_city_notices_a_silent_hub_link_within_seconds(tmp_path: Path) -> None:
    """The link to the hub goes silent (the hub gone, its goodbye lost on the long haul): no FIN, no RST, nothing
    gets through either way. The city must close it and dial again within seconds, not at nats-server's 2-minute
    default PING interval."""
    frozen = asyncio.Event()
    streams: list[object] = []  # every stream stays referenced: none is closed behind the test's back
    tasks: list[asyncio.Task[None]] = []

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not frozen.is_set():  # frozen: a black hole both ways, the connections left open
                writer.write(data)
                await writer.drain()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", leaf_port)
        streams.extend([reader, writer, up_reader, up_writer])
        tasks.extend([asyncio.create_task(pump(reader, up_writer)), asyncio.create_task(pump(up_reader, writer))])

    leaf_port = free_port()
    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    hub = EmbeddedNats(port=free_port(), jetstream=False, leaf_listen_port=leaf_port, workdir=tmp_path / "hub")
    city = EmbeddedNats(port=free_port(), jetstream=False, workdir=tmp_path / "city",
                        leaf_remotes=[LeafRemote(f"nats-leaf://127.0.0.1:{proxy_port}")])  # fmt: skip
    try:
        with hub, city:
            at_hub, at_city = await nats.connect(hub.url), await nats.connect(city.url)
            try:
                heard = asyncio.Event()

                async def on_probe(msg: object) -> None:
                    heard.set()

                await at_city.subscribe("probe", cb=on_probe)
                deadline = time.monotonic() + 15
                while not heard.is_set() and time.monotonic() < deadline:  # the link carries traffic both ways
                    await at_hub.publish("probe", b"x")
                    await asyncio.sleep(0.1)
                assert heard.is_set(), city.log_tail()
                frozen.set()
                t0 = time.monotonic()
                while "Leafnode connection closed" not in city.log_text() and time.monotonic() - t0 < 20:
                    await asyncio.sleep(0.1)
                assert "Leafnode connection closed" in city.log_text(), city.log_tail()
                assert time.monotonic() - t0 < 12, city.log_tail()
            finally:
                await at_hub.close()
                await at_city.close()
    finally:
        for t in tasks:
            t.cancel()
        proxy.close()


def test_a_city_redials_a_lost_hub_four_times_a_second(tmp_path: Path) -> None:
    """After a cut the city's first chance to reach the hub again is its next dial: at nats-server's default (1 s
    apart) a path back from a cut waited up to a second before the city tried. Here the "hub" takes every
    connection and drops it at once; the city must come back at least every 300 ms."""
    accepted: list[float] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    city = EmbeddedNats(port=free_port(), jetstream=False, workdir=tmp_path / "city",
                        leaf_remotes=[LeafRemote(f"nats-leaf://127.0.0.1:{port}")])  # fmt: skip
    try:
        with city:
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn, _ = listener.accept()
                    accepted.append(time.monotonic())
                    conn.close()
    finally:
        listener.close()
    gaps = [b - a for a, b in itertools.pairwise(accepted)]
    assert len(accepted) >= 8, (accepted, city.log_tail())
    assert sorted(gaps)[len(gaps) // 2] < 0.3, gaps


def test_free_port_is_below_the_kernels_ephemeral_range_and_free() -> None:
    """A port from the ephemeral range can be handed, a moment later, to an outgoing connection as its source
    port, and the server meant to listen there finds it taken (CI lost a run to exactly that)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(p < low for p in ports)
    assert len(ports) > 1
    for port in ports:
        with socket.socket() as s:
            # As every server binds (nats-server, asyncio): an earlier server's connection on that port may still
            # be in TIME_WAIT, which only a bind without SO_REUSEADDR refuses (CI saw that once).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))


def test_free_port_never_hands_one_process_the_same_port_twice() -> None:
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)


def test_free_port_with_a_span_hands_out_that_many_free_ports_in_a_row() -> None:
    """baresip told to listen on P also takes P + 1 for SIP/TLS; CI once found P + 1 taken and the call never came."""
    starts = [free_port(span=2) for _ in range(50)]
    taken = [p for s in starts for p in (s, s + 1)]
    assert len(set(taken)) == len(taken)
    assert all(free_port() not in taken for _ in range(200))
    for port in taken:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
