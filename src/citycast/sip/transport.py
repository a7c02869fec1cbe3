"""The asyncio shell around the sans-IO transaction layer: UDP and TCP listeners, the outbox, the timers.

One `TransactionLayer` per transport kind (UDP is unreliable, TCP reliable: their timers differ). Every datagram
or framed TCP message is parsed and handed to the layer; what the layer lets through reaches the handler (the
call control) as a `ServerTransaction` with the `Flow` it came on. Whatever the layer or the handler queued is
sent by `flush()`, which also re-arms the single timer on `next_deadline()`. The handler calls `flush()` after it
answers asynchronously (a ringing delay, a PIN checked in a worker thread).

Bad input never raises out of here. A request that fails to parse but whose start line and Via did parse is
answered statelessly with the parser's status (400, 505 for another SIP version, 513 too large; §8.2.2, §21.4),
so its sender learns why instead of retransmitting into silence; never an ACK, which gets no response (§17).
Anything else unparseable is dropped and counted. A TCP stream that breaks the framing is closed (its framing is
lost; nothing later in it can be trusted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from citycast.sip.message import SipMessage, SipParseError, StreamFramer, parse, response_for
from citycast.sip.transaction import (
    Address,
    ClientTransaction,
    ServerTransaction,
    TransactionError,
    TransactionLayer,
    TransactionTimeout,
)
from citycast.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MAX_DATAGRAM = 65_535
MAX_TCP_CONNECTIONS = 1000
TCP_IDLE_S = 600.0  # a connection that carried nothing for this long is closed (a call's keeps talking)
_REASONS = {400: "Bad Request", 505: "Version Not Supported", 513: "Message Too Large"}
_VERSION_RE = re.compile(rb"^([^\r\n]* )SIP/[0-9]+\.[0-9]+(\r?\n)", re.I)


@dataclass(frozen=True)
class Flow:
    """Where a message came from and how to answer: the transport ("UDP"/"TCP") and the peer's address."""

    transport: str
    remote: Address

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"


class SipHandler(Protocol):
    def on_request(self, tx: ServerTransaction, flow: Flow) -> None:
        """A new request (never a retransmission); an ACK of a 2xx comes as a stateless transaction."""
        ...

    def on_timeout(self, timeout: TransactionTimeout, flow: Flow) -> None:
        """A transaction gave up (Timer F for our BYE, Timer H for an unacknowledged error response)."""
        ...


class Timed(Protocol):
    """Something else with an outbox and timers driven by the transport (a dialog retransmitting its 2xx)."""

    outbox: list[tuple[bytes, Address]]

    def next_deadline(self) -> float | None: ...

    def tick(self, now: float) -> bool: ...


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner._received(data, Flow("UDP", (addr[0], addr[1])))

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and the like: not ours to crash on
        log.debug("sip udp: %s", exc)


class SipTransport:
    def __init__(
        self,
        host: str,
        port: int,
        handler: SipHandler,
        *,
        udp: bool = True,
        tcp: bool = True,
        clock: Callable[[], float] = time.monotonic,
        t1: float = 0.5,
    ) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        self.clock = clock
        self.use_udp = udp
        self.use_tcp = tcp
        self.layers = {"UDP": TransactionLayer(False, t1=t1), "TCP": TransactionLayer(True, t1=t1)}
        self.dropped = 0  # messages that could not be parsed
        self.refused = 0  # of those, requests answered with an error (the rest were silently dropped)
        self.resent_2xx = 0  # our 2xx to an INVITE sent again because no ACK had come (a lost 2xx or ACK)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._conns: dict[Address, asyncio.StreamWriter] = {}
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # Which flow each client transaction went out on, to report its timeout to the handler.
        self._client_flows: dict[int, Flow] = {}
        self._watched: dict[int, tuple[Timed, str, Callable[[], None]]] = {}

    # -- life -----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.use_udp:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.host, self.port))
            self._udp = transport
            if self.port == 0:  # tests ask for any free port: TCP then takes the same number
                self.port = int(transport.get_extra_info("sockname")[1])
        if self.use_tcp:
            self._tcp = await asyncio.start_server(self._serve_tcp, self.host, self.port, limit=1 << 16)
            if self.port == 0:
                self.port = int(self._tcp.sockets[0].getsockname()[1])
        log.info("SIP listening on %s:%d (%s)", self.host, self.port,
                 "+".join(k for k, on in (("udp", self.use_udp), ("tcp", self.use_tcp)) if on))  # fmt: skip

    async def stop(self) -> None:
        self.flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for w in list(self._conns.values()):
                w.close()
            await cancel_and_wait(*list(self._conn_tasks))
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
            self._tcp = None

    # -- receiving ------------------------------------------------------------------------------------------
    def _received(self, data: bytes, flow: Flow) -> None:
        if not data.strip():
            return  # CRLF keep-alive (RFC 5626 §4.4.1)
        try:
            msg = parse(data)
        except SipParseError as e:
            self.dropped += 1
            if self._refuse(data, e, flow):
                self.refused += 1
                log.info("sip %s %s:%d: bad request answered %d: %s", flow.transport, *flow.remote, e.status, e)
            else:
                log.info("sip %s %s:%d: unparseable message dropped: %s", flow.transport, *flow.remote, e)
            return
        try:
            self.dispatch(msg, flow)
        except Exception:  # a bug in one call must not take the listener down
            log.exception("sip %s %s:%d: handling a message failed", flow.transport, *flow.remote)
        self.flush()

    def _refuse(self, data: bytes, error: SipParseError, flow: Flow) -> bool:
        """Answer a bad request statelessly if enough of it parsed to address a response; True if answered."""
        partial = error.partial
        if partial is None and error.status == 505:
            # The parser stops at the version; the same request as SIP/2.0 tells us whom to answer.
            with contextlib.suppress(SipParseError):
                partial = parse(_VERSION_RE.sub(rb"\1SIP/2.0\2", data.lstrip(b"\r\n"), count=1))
        if partial is None or partial.method is None or partial.method == "ACK":
            return False
        if not partial.headers_all("Via") or partial.header("Call-ID") is None:
            return False  # no Via: nowhere to send it (§18.2.2); no Call-ID: the client could not match it
        try:
            resp = response_for(partial, error.status, _REASONS.get(error.status, "Bad Request"),
                                headers=[("Warning", f'399 citycast "{_quoted(str(error))}"')])  # fmt: skip
            out = resp.to_bytes()
        except (ValueError, SipParseError) as e:  # a To we cannot re-read, say: drop after all
            log.debug("sip: no error response to a bad request: %s", e)
            return False
        self.send_raw(out, flow)
        return True

    def dispatch(self, msg: SipMessage, flow: Flow) -> None:
        layer = self.layers[flow.transport]
        now = self.clock()
        if msg.method is None:
            try:
                layer.on_response(msg, now)
            except TransactionError as e:
                log.debug("sip: response dropped: %s", e)
            return
        tx = layer.on_request(msg, flow.remote, now)
        if tx is not None:
            self.handler.on_request(tx, flow)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if len(self._conns) >= MAX_TCP_CONNECTIONS or not peer:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        remote: Address = (peer[0], peer[1])
        self._conns[remote] = writer
        flow = Flow("TCP", remote)
        framer = StreamFramer()
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_S):
                    chunk = await reader.read(1 << 16)
                if not chunk:
                    break
                try:
                    messages = framer.feed(chunk)
                except SipParseError as e:
                    self.dropped += 1
                    log.info("sip tcp %s:%d: stream closed: %s", *remote, e)
                    break
                for m in messages:
                    self._received(m, flow)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conn_tasks.discard(task)
            if self._conns.get(remote) is writer:
                del self._conns[remote]
            writer.close()

    # -- sending --------------------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Totals since start, for /metrics."""
        layers = self.layers.values()
        return {
            "retransmissions_received": sum(layer.retransmissions_received for layer in layers),
            "resent": sum(layer.resent for layer in layers) + self.resent_2xx,
            "resent_2xx": self.resent_2xx,
            "unparseable": self.dropped,
            "refused": self.refused,
            "stray": sum(layer.dropped for layer in layers),
        }

    def send_raw(self, data: bytes, flow: Flow) -> None:
        """Send bytes as they are (the dialog's 2xx retransmissions go around the transaction layer)."""
        if flow.transport == "UDP":
            if self._udp is not None:
                self._udp.sendto(data, flow.remote)
            return
        w = self._conns.get(flow.remote)
        if w is None or w.is_closing():
            log.info("sip tcp %s:%d: connection gone, %d bytes not sent", *flow.remote, len(data))
            return
        w.write(data)

    def send_request(self, request: SipMessage, flow: Flow) -> ClientTransaction:
        """Our own request (a BYE) in a new client transaction; its outcome is the transaction's."""
        tx = self.layers[flow.transport].send_request(request, flow.remote, self.clock())
        key = id(tx)
        self._client_flows[key] = flow

        def forget(_tx: ClientTransaction) -> None:
            self._client_flows.pop(key, None)

        tx.add_done_callback(forget)
        self.flush()
        return tx

    def watch(self, timed: Timed, transport: str, on_expiry: Callable[[], None]) -> None:
        """Drive `timed` (drain its outbox on `transport`, tick it) until `unwatch`; `on_expiry` when tick says so."""
        self._watched[id(timed)] = (timed, transport, on_expiry)
        self.flush()

    def unwatch(self, timed: Timed) -> None:
        self._watched.pop(id(timed), None)

    def flush(self) -> None:
        """Send what the layers queued and re-arm the timer on the earliest deadline."""
        sources: list[tuple[str, Timed | TransactionLayer]] = list(self.layers.items())
        sources.extend((kind, t) for t, kind, _ in self._watched.values())
        for kind, src in sources:
            out, src.outbox = src.outbox, []
            if not isinstance(src, TransactionLayer):
                self.resent_2xx += len(out)  # a watched dialog's outbox holds only 2xx retransmissions
            for data, addr in out:
                self.send_raw(data, Flow(kind, addr))
        self._arm()

    def _arm(self) -> None:
        timed: list[Timed | TransactionLayer] = [*self.layers.values(), *(t for t, _, _ in self._watched.values())]
        deadlines = [d for d in (t.next_deadline() for t in timed) if d is not None]
        at = min(deadlines) if deadlines else None
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, at - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.clock()
        for kind, layer in self.layers.items():
            for timeout in layer.tick(now):
                tx = timeout.transaction
                addr = tx.dest if isinstance(tx, ClientTransaction) else tx.source
                flow = self._client_flows.get(id(tx)) or Flow(kind, addr)
                try:
                    self.handler.on_timeout(timeout, flow)
                except Exception:
                    log.exception("sip: handling a transaction timeout failed")
        for t, _, on_expiry in list(self._watched.values()):
            if t.tick(now):
                try:
                    on_expiry()
                except Exception:
                    log.exception("sip: handling a dialog timeout failed")
        self.flush()


def _quoted(text: str) -> str:
    """Text fit for a Warning's quoted string: printable ASCII, no quote or backslash, bounded."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "'" for c in text)[:200]
