"""The conference telephone inside the hub: `Telephone(services, host, port)` answers SIP calls and puts the right
callers on air. `services` (hub_services.py, built by `Hub.telephone_services()`) is all it knows of the hub.

It routes each request the transaction layer lets through: a new INVITE makes a `Call`; in-dialog requests, ACKs
and CANCELs go to the call with that Call-ID; OPTIONS outside a dialog is answered here (a trunk's keep-alive).
It also watches the addresses its calls put on air: one stopped from the console hangs up its call. With
`register=RegisterConfig(...)` it keeps a registration at a SIP trunk (`register.Registration`) over its UDP socket,
so the trunk's INVITEs for the number reach it; `registration_status()` reports it for the console and the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from citycast.hub.telephone.call import ACCEPT, ALLOW, Call
from citycast.hub.telephone.hub_services import Addresses, TelephoneServices
from citycast.hub.telephone.pins import PinGate, PinGuard
from citycast.hub.telephone.prompts import Prompts
from citycast.rtp.latch import DROP_REASONS, IpNetwork, parse_networks
from citycast.sip.identity import caller_source, parse_trunks
from citycast.sip.message import SipMessage, response_for
from citycast.sip.register import RegisterConfig, Registration
from citycast.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    TransactionError,
    TransactionTimeout,
)
from citycast.sip.transport import Flow, SipTransport
from citycast.tasks import cancel_and_wait

if TYPE_CHECKING:
    from citycast.hub.media_plane import MediaPlane
    from citycast.hub.talkback import TalkbackTap
    from citycast.ingest.live import LiveBroadcaster, LiveSource

log = logging.getLogger(__name__)

MAX_CALLS = 50
WATCH_S = 0.3
UNREGISTER_WAIT_S = 5.0
REFRESH_ANSWER_WAIT_S = 2.0  # at stop, how long a REGISTER still out may take to be answered before the unregister


class Telephone:
    """SIP on `host:port` (UDP and TCP), media on even ports of `rtp_ports` (inclusive)."""

    def __init__(
        self,
        services: TelephoneServices,
        host: str,
        port: int,
        rtp_ports: tuple[int, int] = (20000, 20999),
        *,
        ring_s: float = 0.5,
        prompts: Prompts | None = None,
        guard: PinGuard | None = None,
        max_calls: int = MAX_CALLS,
        t1: float = 0.5,
        register: RegisterConfig | None = None,
        trusted_media: Sequence[str | IpNetwork] = (),
        trusted_trunks: Sequence[str] = (),
    ) -> None:
        lo, hi = rtp_ports
        if not 1024 <= lo < hi <= 65535:
            raise ValueError(f"bad RTP port range {lo}-{hi}: need 1024 <= low < high <= 65535")
        self.services = services
        self.host = host
        self.rtp_ports = (lo + lo % 2, hi)
        self.ring_s = ring_s
        self.prompts = prompts or Prompts()
        self.guard = guard if guard is not None else PinGuard()  # an empty guard is falsy (it has a len)
        # Trunks whose calls are told apart by caller identity for the PIN limits (see sip.identity).
        self.trusted_trunks = parse_trunks(trusted_trunks)
        self.max_calls = max_calls
        # Trunk ranges (signalling and media) whose SDP c= may name another address than the signalling peer.
        self.trusted_media = parse_networks(str(n) for n in trusted_media)
        self.rtp_dropped: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
        self.transport = SipTransport(host, port, self, t1=t1)
        self.calls: dict[str, Call] = {}
        self._watch: asyncio.Task[None] | None = None
        self._next_port = random.randrange(self.rtp_ports[0], self.rtp_ports[1], 2)
        self.register = register
        self.registration: Registration | None = None
        self._registrar: tuple[str, int] | None = None
        self._reg_task: asyncio.Task[None] | None = None
        self._reg_wake = asyncio.Event()
        self._reg_done: asyncio.Event | None = None

    # -- what calls use -------------------------------------------------------------------------------------
    @property
    def addresses(self) -> Addresses:
        return self.services.addresses

    @property
    def media_plane(self) -> MediaPlane | None:
        return self.services.media_plane

    def broadcaster(self, channel: int, source: LiveSource) -> LiveBroadcaster:
        return self.services.broadcaster(channel, source)

    def talkback_tap(self) -> TalkbackTap | None:
        return self.services.talkback()

    @property
    def port(self) -> int:
        return self.transport.port

    def pin_gate(self, source: str) -> PinGate:
        return PinGate(self.services.pins, self.guard, source)

    def caller_source(self, invite: SipMessage, flow: Flow) -> str:
        """What the PIN guard counts a call under: the signalling IP, or the caller's identity via a trusted trunk."""
        return caller_source(invite, flow.remote[0], self.trusted_trunks)

    def source_blocked(self, source: str) -> bool:
        return not self.guard.allowed(source, time.monotonic())

    def local_ip(self, remote: str) -> str:
        """The address the caller reaches us at: the listening one, or the interface that routes to them."""
        if self.host not in ("0.0.0.0", "", "::"):
            return self.host
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((remote, 9))  # no packet is sent: this only asks the kernel for a route
            return str(s.getsockname()[0])
        return "127.0.0.1"

    async def open_rtp(
        self, rtp: Callable[[], asyncio.DatagramProtocol], rtcp: Callable[[], asyncio.DatagramProtocol]
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramTransport, int]:
        loop = asyncio.get_running_loop()
        lo, hi = self.rtp_ports
        count = (hi - lo + 1) // 2
        bind = self.host if self.host not in ("", "::") else "0.0.0.0"
        for _ in range(count):
            port = self._next_port
            self._next_port = port + 2 if port + 3 <= hi else lo
            try:
                t1, _ = await loop.create_datagram_endpoint(rtp, local_addr=(bind, port))
            except OSError:
                continue
            try:
                t2, _ = await loop.create_datagram_endpoint(rtcp, local_addr=(bind, port + 1))
            except OSError:
                t1.close()
                continue
            return t1, t2, port
        raise OSError(f"no free RTP port pair in {lo}-{hi}")

    async def sites_live(self, zone_ids: tuple[int, ...]) -> int:
        """Enrolled sites of those zones (all zones when empty) that the fleet does not see offline."""
        return await self.services.sites_live(zone_ids)

    def counters(self) -> dict[str, int]:
        """Signalling counters and dropped media datagrams by reason (``rtp_dropped_<reason>``), for /metrics."""
        out = dict(self.transport.counters())
        out.update({f"rtp_dropped_{reason}": n for reason, n in self.rtp_dropped.items()})
        return out

    def call_ended(self, call: Call) -> None:
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]

    # -- life -----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.transport.start()
        self._watch = asyncio.create_task(self._watch_addresses(), name="sip-watch")
        if self.register is not None:
            if not self.transport.use_udp:
                raise RuntimeError("registering with a trunk needs the UDP listener")
            port = self.transport.port
            self.registration = Registration(self.register, contact=f"sip:{self.register.user}@{self.host}:{port}",
                                             sent_by=f"{self.host}:{port}")  # fmt: skip
            self._reg_task = asyncio.create_task(self._run_registration(), name="sip-register")

    async def stop(self) -> None:
        for call in list(self.calls.values()):
            call.end_reason = "hub stopped"
            call.send_bye()
        for call in list(self.calls.values()):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await call.finished()
        if self._watch is not None:
            await cancel_and_wait(self._watch)
        await self._unregister()
        await self.transport.stop()

    async def _watch_addresses(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            for call in list(self.calls.values()):
                aid = call.address_id
                if aid is None:
                    continue
                a = self.addresses.get(aid)
                if a is None or a.stopping:
                    call.hub_stopped()

    def status(self) -> dict[str, Any]:
        """What an operator checks before a speaker dials in: where to call, who is on, whether the trunk (the
        public number) is registered, and how healthy the signalling is."""
        return {
            "sip": f"{self.host}:{self.port}",
            "calls": len(self.calls),
            "live": sum(1 for c in self.calls.values() if c.address_id is not None),
            "registration": self.registration_status(),
            "signalling": self.transport.counters(),
        }

    # -- trunk registration ---------------------------------------------------------------------------------
    def registration_status(self) -> dict[str, Any] | None:
        """The trunk registration for the console and the log (None without --sip-register); never the password."""
        if self.registration is None:
            return None
        return self.registration.snapshot(self.transport.clock())

    async def _resolve_registrar(self) -> tuple[str, int]:
        assert self.register is not None and self.registration is not None
        host, port = self.register.registrar_address()
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(f"{host} has no IPv4 address")
        addr = infos[0][4]
        self._registrar = (str(addr[0]), int(addr[1]))
        # Our Contact and Via carry the address the registrar reaches us at.
        local = self.local_ip(self._registrar[0])
        self.registration.contact = f"sip:{self.register.user}@{local}:{self.transport.port}"
        self.registration.sent_by = f"{local}:{self.transport.port}"
        return self._registrar

    async def _run_registration(self) -> None:
        reg = self.registration
        assert reg is not None
        clock = self.transport.clock
        first = True
        while True:
            if not first:
                deadline = reg.next_deadline()
                self._reg_wake.clear()
                delay = None if deadline is None else max(0.0, deadline - clock())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._reg_wake.wait()
            due = reg.next_deadline()
            if not first and (due is None or clock() < due):
                continue
            try:
                await self._resolve_registrar()
            except OSError as e:
                reg.on_timeout(clock(), f"cannot resolve the registrar: {e}")
                log.warning("sip register %s: %s", reg.config.aor, reg.error)
                first = False
                continue
            msg = reg.start(clock()) if first else reg.tick(clock())
            first = False
            if msg is not None:
                self._send_register(msg)

    def _send_register(self, msg: SipMessage) -> None:
        reg = self.registration
        assert reg is not None and self._registrar is not None
        try:
            tx = self.transport.send_request(msg, Flow("UDP", self._registrar))
        except (TransactionError, ValueError) as e:
            reg.on_timeout(self.transport.clock(), f"cannot send REGISTER: {e}")
            return
        loop = asyncio.get_running_loop()

        # Handled on the next loop turn, not inside the transaction layer's own dispatch.
        def done(t: ClientTransaction) -> None:
            loop.call_soon(self._register_done, t)

        tx.add_done_callback(done)

    def _register_done(self, tx: ClientTransaction) -> None:
        reg = self.registration
        if reg is None:
            return
        before = (reg.status, reg.error)
        now = self.transport.clock()
        try:
            response = tx.result()
        except TransactionError:
            reg.on_timeout(now)
            nxt = None
        else:
            nxt = reg.on_response(response, now)
        if nxt is not None:
            self._send_register(nxt)
        if (reg.status, reg.error) != before:
            level = logging.WARNING if reg.status in ("failed", "retrying") else logging.INFO
            log.log(level, "sip register %s: %s%s", reg.config.aor, reg.status, f" ({reg.error})" if reg.error else "")
        if reg.status == "stopped" and self._reg_done is not None:
            self._reg_done.set()
        self._reg_wake.set()

    async def _unregister(self) -> None:
        if self._reg_task is not None:
            await cancel_and_wait(self._reg_task)
            self._reg_task = None
        reg = self.registration
        if reg is None or self._registrar is None:
            return
        # A refresh still out gets its answer first (RFC 3261 §10.2): a registrar that gets the unregister
        # before it has answered the refresh may take them out of order (sipp's does, and aborts).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REFRESH_ANSWER_WAIT_S):
                while reg.in_flight:
                    self._reg_wake.clear()
                    await self._reg_wake.wait()
        msg = reg.stop(self.transport.clock())
        if msg is None:
            return
        self._reg_done = asyncio.Event()
        self._send_register(msg)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(UNREGISTER_WAIT_S):
                await self._reg_done.wait()
        if reg.status != "stopped":
            log.info("sip register %s: no answer to the unregister, the binding will expire", reg.config.aor)
            reg.status = "stopped"

    # -- SIP ------------------------------------------------------------------------------------------------
    def _respond(self, tx: ServerTransaction, status: int, reason: str, **kw: Any) -> None:
        tx.respond(response_for(tx.request, status, reason, **kw), self.transport.clock())
        self.transport.flush()

    def on_request(self, tx: ServerTransaction, flow: Flow) -> None:
        msg = tx.request
        method = tx.method
        call = self.calls.get(msg.call_id)
        if method == "CANCEL":
            if call is not None:
                call.on_cancel(tx)
            else:
                self.transport.layers[flow.transport].cancel(tx, self.transport.clock())
            return
        if method == "INVITE" and not msg.to.tag:
            if call is not None:
                # A second INVITE for a live Call-ID with a new branch: a loop or a fork (§8.2.2.2).
                self._respond(tx, 482, "Loop Detected")
                return
            if len(self.calls) >= self.max_calls:
                self._respond(tx, 486, "Busy Here", headers=[("Retry-After", "30")])
                return
            call = Call(self, tx, flow)
            self.calls[call.call_id] = call
            call.start()
            return
        if call is not None:
            call.on_in_dialog(tx)
            return
        if method == "ACK":
            return  # an ACK for nothing we know: never answered (§17)
        if method == "OPTIONS":
            self._respond(tx, 200, "OK", headers=[("Allow", ALLOW), ("Accept", ACCEPT)])
        elif method in ("BYE", "INFO", "INVITE"):
            self._respond(tx, 481, "Call/Transaction Does Not Exist")
        else:
            self._respond(tx, 405, "Method Not Allowed", headers=[("Allow", ALLOW)])

    def on_timeout(self, timeout: TransactionTimeout, flow: Flow) -> None:
        log.info("sip %s %s:%d: %s timed out (Timer %s)", flow.transport, *flow.remote,
                 getattr(timeout.transaction, "method", "?"), timeout.timer)  # fmt: skip
