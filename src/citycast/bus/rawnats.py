"""A minimal NATS client connection for the two jobs where nats-py's buffering costs too much.

nats-py queues a publish for a flusher task and hands a received message to a subscription task: each hop is an
event-loop turn, hundreds of µs on a busy box, and different every time. The time service needs the instant a
message reached the machine (NTP-style exchanges are only as good as their timestamps), and fan-out probes need
to read a frame header for a few µs, not tens. This module speaks the NATS text protocol (CONNECT, PING/PONG,
SUB, PUB, MSG, HMSG) on a non-blocking socket of its own, writes a publish to the socket at once, and reads with
`recvmsg` and SO_TIMESTAMPNS so each read carries the kernel's receive time, whatever the event loop was doing.
Everything else uses nats-py.

It waits for the server's INFO before it sends CONNECT: in operator (JWT) mode INFO carries a nonce, which the
client signs with its user seed and sends back with its user JWT (`jwt`, `sig`).

With TLS (a hub's creds file carries its CA, citycast.bus.tls) the handshake comes first and runs through an
`ssl.SSLObject` over memory buffers: the socket stays ours, so `recvmsg` still yields the kernel's receive time of
the encrypted bytes, which is the instant that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from citycast.bus.jwt import Credentials, JwtError, load_creds
from citycast.bus.tls import TlsError, creds_context
from citycast.clock.local import Clock

MAX_CONTROL_LINE = 16_384  # INFO lists the cluster's URLs and can be longer than any other line
MAX_PAYLOAD = 1 << 20
_TIMESPEC = struct.Struct("@qq")
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class WireError(ConnectionError):
    pass


@dataclass(frozen=True)
class WireMessage:
    subject: str
    sid: int
    reply: str | None
    payload: bytes
    received_ns: int  # local-clock reading of the instant the kernel received the bytes


class NatsWire:
    def __init__(
        self,
        sock: socket.socket,
        on_message: Callable[[WireMessage], None],
        clock: Clock,
        *,
        name: str = "citycast-wire",
        user: str | None = None,
        password: str | None = None,
        creds: Credentials | None = None,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.sock = sock
        self.on_message = on_message
        self.clock = clock
        self.name = name
        self._auth = {k: v for k, v in (("user", user), ("pass", password)) if v}
        self._creds = creds
        self._connect_sent = False
        self._early = bytearray()  # commands given before the server's INFO let us send CONNECT
        self.server_info: dict[str, object] = {}  # the server's first INFO (client_ip: the address it saw)
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.ready: asyncio.Future[None] = loop.create_future()
        self._pongs: deque[asyncio.Future[None]] = deque()  # flushes waiting, in PING order
        self.closed: asyncio.Future[None] = loop.create_future()
        self._buf = bytearray()
        self._out = bytearray()
        self._sid = 0
        self.kernel_timestamps = True
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError:
            self.kernel_timestamps = False
        self._tls: ssl.SSLObject | None = None
        self._tls_in = ssl.MemoryBIO()
        self._tls_out = ssl.MemoryBIO()
        self._tls_ready = tls is None
        self._tls_waiting = bytearray()  # plaintext given before the handshake finished
        if tls is not None:
            self._tls = tls.wrap_bio(self._tls_in, self._tls_out, server_hostname=server_hostname)
        loop.add_reader(sock.fileno(), self._on_readable)
        if self._tls is not None:
            self._handshake()

    def _handshake(self) -> None:
        assert self._tls is not None
        try:
            self._tls.do_handshake()
            self._tls_ready = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as e:  # a certificate not of our hub's CA lands here
            self._flush_tls()
            raise WireError(f"TLS handshake with the NATS server failed: {e}") from e
        self._flush_tls()
        if self._tls_ready and self._tls_waiting:
            waiting, self._tls_waiting = bytes(self._tls_waiting), bytearray()
            self._write(waiting)

    def _flush_tls(self) -> None:
        data = self._tls_out.read()
        if data:
            self._send_raw(data)

    def _send_connect(self, info_line: bytes) -> None:
        try:
            info = json.loads(info_line[5:])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WireError("unreadable INFO from the server") from e
        if not isinstance(info, dict):
            raise WireError("unreadable INFO from the server")
        self.server_info = info
        opts: dict[str, object] = {"verbose": False, "pedantic": False, "name": self.name, "lang": "python",
                                   "protocol": 1, "headers": True, "no_responders": False, **self._auth}  # fmt: skip
        if self._creds is not None:
            nonce = info.get("nonce")
            if not isinstance(nonce, str) or not nonce:
                raise WireError("the server sent no nonce to sign: it does not run in JWT mode")
            opts["jwt"] = self._creds.jwt
            opts["sig"] = self._creds.sign_nonce(nonce)
        self._connect_sent = True
        early, self._early = bytes(self._early), bytearray()
        self._write(b"CONNECT " + json.dumps(opts).encode() + b"\r\nPING\r\n" + early)

    def _command(self, data: bytes) -> None:
        if self._connect_sent:
            self._write(data)
        elif self.closed.done():
            raise WireError("not connected")
        else:
            self._early += data

    # -- socket -------------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            data, anc, _, _ = self.sock.recvmsg(262_144, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fail(WireError(str(e)))
            return
        if not data:
            self._fail(WireError("connection closed by the server"))
            return
        stamp = None
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                sec, nsec = _TIMESPEC.unpack_from(value)
                stamp = sec * 1_000_000_000 + nsec
        now = self.clock.at(stamp) if stamp is not None else self.clock.now_ns()
        try:
            if self._tls is not None:
                data = self._decrypt(data)
            self._buf += data
            self._parse(now)
        except WireError as e:
            self._fail(e)

    def _decrypt(self, data: bytes) -> bytes:
        assert self._tls is not None
        self._tls_in.write(data)
        if not self._tls_ready:
            self._handshake()
            if not self._tls_ready:
                return b""
        plain = bytearray()
        while True:
            try:
                chunk = self._tls.read(262_144)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                raise WireError("connection closed by the server") from None
            except ssl.SSLError as e:
                raise WireError(f"TLS error: {e}") from e
            if not chunk:
                break
            plain += chunk
        self._flush_tls()  # a key update or session ticket may want an answer
        return bytes(plain)

    def _write(self, data: bytes) -> None:
        if self.closed.done():
            raise WireError("not connected")
        if self._tls is None:
            self._send_raw(data)
        elif not self._tls_ready:
            self._tls_waiting += data
        else:
            self._tls.write(data)
            self._flush_tls()

    def _send_raw(self, data: bytes) -> None:
        if self.closed.done():
            raise WireError("not connected")
        if self._out:
            self._out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            self._fail(WireError(str(e)))
            raise WireError(str(e)) from e
        if sent < len(data):
            self._out += data[sent:]
            self._loop.add_writer(self.sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fail(WireError(str(e)))
            return
        del self._out[:sent]
        if not self._out:
            self._loop.remove_writer(self.sock.fileno())

    def _fail(self, e: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(e)
        self.close()

    def close(self) -> None:
        if self.closed.done():
            return
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.sock.fileno())
            self._loop.remove_writer(self.sock.fileno())
        self.sock.close()
        self.closed.set_result(None)
        while self._pongs:
            waiter = self._pongs.popleft()
            if not waiter.done():
                waiter.set_exception(WireError("closed"))
                waiter.exception()  # whoever flushes sees it; nobody else must be warned about it
        if not self.ready.done():
            self.ready.set_exception(WireError("closed"))
            self.ready.exception()  # retrieved: nobody may be waiting any more

    # -- parsing ------------------------------------------------------------------------------------------
    def _parse(self, now: int) -> None:
        buf = self._buf
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                if len(buf) > MAX_CONTROL_LINE:
                    raise WireError("control line too long")
                return
            head = bytes(buf[:4]).upper()
            if head == b"MSG ":
                if not self._message(now, eol, headers=False):
                    return
            elif head == b"HMSG":
                if not self._message(now, eol, headers=True):
                    return
            else:
                line = bytes(buf[:eol])
                del buf[: eol + 2]
                self._control(line)

    def _message(self, now: int, eol: int, *, headers: bool) -> bool:
        buf = self._buf
        parts = bytes(buf[:eol]).split()
        try:
            subject, sid = parts[1], int(parts[2])
            if headers:  # HMSG subject sid [reply] hdr_len total_len
                reply = parts[3] if len(parts) == 6 else None
                hdr_len, total = int(parts[-2]), int(parts[-1])
            else:  # MSG subject sid [reply] len
                reply = parts[3] if len(parts) == 5 else None
                hdr_len, total = 0, int(parts[-1])
        except (IndexError, ValueError) as e:
            raise WireError(f"bad message line {bytes(buf[:eol])[:80]!r}") from e
        if total > MAX_PAYLOAD or not 0 <= hdr_len <= total:
            raise WireError("message larger than allowed")
        end = eol + 2 + total + 2
        if len(buf) < end:
            return False
        payload = bytes(buf[eol + 2 + hdr_len : eol + 2 + total])
        del buf[:end]
        self.on_message(WireMessage(subject.decode(), sid, reply.decode() if reply else None, payload, now))
        return True

    def _control(self, line: bytes) -> None:
        word = line.split(b" ", 1)[0].upper()
        if word == b"PING":
            self._write(b"PONG\r\n")
        elif word == b"PONG":
            if not self.ready.done():
                self.ready.set_result(None)
            elif self._pongs:
                waiter = self._pongs.popleft()
                if not waiter.done():
                    waiter.set_result(None)
        elif word == b"INFO":
            if not self._connect_sent:
                self._send_connect(line)
        elif word == b"-ERR" and not self.ready.done():
            self.ready.set_exception(WireError(line.decode(errors="replace")))
        # +OK and later INFOs need nothing from us.

    # -- commands -----------------------------------------------------------------------------------------
    def subscribe(self, subject: str) -> int:
        self._sid += 1
        self._command(f"SUB {subject} {self._sid}\r\n".encode())
        return self._sid

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until the server has processed everything sent so far (a PING answered): after `subscribe`, so
        that a request sent by someone else right after cannot find no one listening."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._pongs.append(waiter)
        self._command(b"PING\r\n")
        async with asyncio.timeout(timeout):
            await asyncio.shield(waiter)

    def publish(self, subject: str, payload: bytes, reply: str | None = None) -> None:
        """Written to the socket now, not queued: a timestamp taken just before this call is honest."""
        head = f"PUB {subject} {reply} {len(payload)}\r\n" if reply else f"PUB {subject} {len(payload)}\r\n"
        self._command(head.encode() + payload + b"\r\n")


async def open_wire(
    url: str,
    on_message: Callable[[WireMessage], None],
    clock: Clock,
    *,
    timeout: float = 5.0,
    name: str = "citycast-wire",
    creds: Path | None = None,
    tls: ssl.SSLContext | None = None,
    bind: tuple[str | None, str | None] | None = None,
) -> NatsWire:
    """Connect and wait for the server's first PONG. `creds` is a NATS creds file (user JWT + seed), read
    at each call so a re-enrolled site picks up its new identity on the next reconnect. TLS: `tls`, else the hub
    CA the creds file carries (the handshake first, the server verified against that CA alone). `bind`: the local
    (address, interface) the connection must leave by, as a site's uplink names it (one SIM per path)."""
    try:
        credentials = load_creds(creds) if creds is not None else None
        tls = tls or creds_context(creds)
    except (JwtError, TlsError) as e:
        raise WireError(str(e)) from e
    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or 4222
    sock = await connect_bound(host, port, bind, timeout)
    try:
        wire = NatsWire(
            sock, on_message, clock, name=name, user=u.username, password=u.password, creds=credentials,
            tls=tls, server_hostname=host,
        )  # fmt: skip
    except BaseException:
        sock.close()
        raise
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(wire.ready)
    except BaseException:
        wire.close()
        raise
    return wire


async def connect_bound(
    host: str, port: int, bind: tuple[str | None, str | None] | None, timeout: float
) -> socket.socket:
    """A non-blocking TCP socket connected to (host, port), leaving by `bind`'s local address and/or interface (a
    site's uplink: one SIM per path). The source address decides the family. Raises WireError (a ConnectionError)
    when the host has no address of that family, OSError/TimeoutError when it cannot be reached."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    local_addr, dev = bind or (None, None)
    if local_addr is not None:
        family = socket.AF_INET6 if ipaddress.ip_address(local_addr).version == 6 else socket.AF_INET
        infos = [i for i in infos if i[0] == family]
        if not infos:
            raise WireError(f"{host} has no address reachable from {local_addr}")
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    try:
        if dev is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
        if local_addr is not None:
            sock.bind((local_addr, 0))
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


def new_inbox(prefix: str = "_INBOX") -> str:
    return f"{prefix}.{random.getrandbits(96):024x}"
