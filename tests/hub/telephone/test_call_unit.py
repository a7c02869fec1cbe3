"""One call driven through its state machine (hub/telephone/call.py) by a host built here: no hub, no sockets.

`CallDesk` implements the call's narrow `CallHost`: it records which prompts the call chose, which address it
started and stopped, which sites it counted, and it routes the SIP it receives like the `Telephone` does. What
is real: the SIP transaction layer and dialog (a `SipTransport` that is never started; what it would put on the
wire is parsed back and kept), SDP negotiation, the PIN gate over a real PIN store (SQLite) and guard, the
return stream's RTP (sent to an in-memory socket), and the call's `LiveBroadcaster` (Opus, signed frames) into
an in-memory bus. The caller types its PIN by SIP INFO.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select

from citycast.hub.auth.passwords import hash_password
from citycast.hub.db import Database
from citycast.hub.db.models import AuditEntry, Priority, SpeakerPin
from citycast.hub.telephone.call import Call, CallState, PinCheck
from citycast.hub.telephone.pins import PinGate, PinGuard, PinStore, hint_of
from citycast.ingest.live import LiveBroadcaster, LiveSource
from citycast.media.keys import generate_private_key
from citycast.media.render import Samples
from citycast.protocol.frame import FrameSigner, parse_frame
from citycast.protocol.subjects import Subjects
from citycast.rtp.latch import IpNetwork
from citycast.rtp.packet import RtpPacket
from citycast.sip.message import SipMessage, parse
from citycast.sip.transaction import ServerTransaction, TransactionTimeout
from citycast.sip.transport import Flow, SipTransport

PIN = "246813"
ZONE = 4
CHANNEL = 7
CALLER = Flow("UDP", ("127.0.0.1", 5999))
RTP_PORT = 40_000
OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\na=ptime:20\r\n"
)


# -- the host ---------------------------------------------------------------------------------------------------
class Wire(SipTransport):
    """The real transport, never started: what it would send is parsed and kept."""

    def __init__(self, handler: CallDesk) -> None:
        super().__init__("127.0.0.1", 5060, handler)
        self.sent: list[SipMessage] = []

    def send_raw(self, data: bytes, flow: Flow) -> None:
        assert flow == CALLER, flow
        self.sent.append(parse(data))


class MemorySocket:
    """A call's RTP or RTCP socket: keeps what the call sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.closed = False

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        self.closed = True


class MemoryBus:
    """What a broadcaster publishes on, kept."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, data: bytes) -> None:
        self.published.append((subject, data))

    async def flush(self) -> None:
        return None


@dataclass
class OnAir:
    stopping: bool = False


@dataclass
class Addresses:
    """The address manager's side of the interface: starts and stops, recorded."""

    started: list[dict[str, Any]] = field(default_factory=list)
    stopped: list[tuple[int, str]] = field(default_factory=list)
    on_air: dict[int, OnAir] = field(default_factory=dict)

    async def start(self, **kw: Any) -> int:
        self.started.append(kw)
        aid = 100 + len(self.started)
        self.on_air[aid] = OnAir()
        return aid

    async def stop(self, address_id: int, reason: str = "stopped") -> None:
        self.stopped.append((address_id, reason))
        self.on_air.pop(address_id, None)

    def channel_of(self, address_id: int) -> int:
        assert address_id in self.on_air
        return CHANNEL

    def get(self, address_id: int) -> OnAir | None:
        return self.on_air.get(address_id)


class Prompts:
    """Short distinct tones, and the names the call asked for, in order (an Urdu prompt as "ur/<name>")."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get(self, name: str, language: str = "en") -> Samples:
        self.asked.append(name if language == "en" else f"{language}/{name}")
        return np.full(960 * 3, 0.1, np.float32)  # 60 ms

    def live_to(self, n_sites: int, language: str = "en") -> Samples:
        self.asked.append(f"live_to {n_sites}" if language == "en" else f"{language}/live_to {n_sites}")
        return np.full(960 * 3, 0.1, np.float32)


class CallDesk:
    """An in-memory `CallHost`, and the SIP handler that routes like the `Telephone` (a new INVITE makes a call,
    the rest goes to the call with its Call-ID)."""

    def __init__(self, db: Database, guard: PinGuard) -> None:
        self.transport = Wire(self)
        self.ring_s = 0.0
        self.trusted_media: tuple[IpNetwork, ...] = ()
        self.rtp_dropped: Counter[str] = Counter()
        self.prompts = Prompts()
        self.addresses = Addresses()
        self.media_plane = None
        self.guard = guard
        self.pins = PinStore(db)
        self.bus = MemoryBus()
        self.signer = FrameSigner(generate_private_key())
        self.broadcasters: list[LiveBroadcaster] = []
        self.sockets: list[MemorySocket] = []
        self.protocols: list[asyncio.DatagramProtocol] = []
        self.counted: list[tuple[int, ...]] = []
        self.calls: dict[str, Call] = {}
        self.ended: list[Call] = []
        self.timeouts: list[TransactionTimeout] = []

    # CallHost
    def broadcaster(self, channel: int, source: LiveSource) -> LiveBroadcaster:
        b = LiveBroadcaster(self.bus, channel=channel, signer=self.signer, source=source, subjects=Subjects())  # type: ignore[arg-type]
        self.broadcasters.append(b)
        return b

    def talkback_tap(self) -> None:
        return None

    def pin_gate(self, source: str) -> PinCheck:
        return PinGate(self.pins, self.guard, source)

    def caller_source(self, invite: SipMessage, flow: Flow) -> str:
        return flow.remote[0]

    def source_blocked(self, source: str) -> bool:
        return not self.guard.allowed(source, time.monotonic())

    def local_ip(self, remote: str) -> str:
        return "127.0.0.1"

    async def open_rtp(
        self, rtp: Callable[[], asyncio.DatagramProtocol], rtcp: Callable[[], asyncio.DatagramProtocol]
    ) -> tuple[Any, Any, int]:
        self.protocols = [rtp(), rtcp()]
        self.sockets = [MemorySocket(), MemorySocket()]
        return self.sockets[0], self.sockets[1], RTP_PORT

    async def sites_live(self, zone_ids: tuple[int, ...]) -> int:
        self.counted.append(zone_ids)
        return 3

    def call_ended(self, call: Call) -> None:
        self.ended.append(call)
        self.calls.pop(call.call_id, None)

    # SipHandler
    def on_request(self, tx: ServerTransaction, flow: Flow) -> None:
        call = self.calls.get(tx.request.call_id)
        if tx.method == "INVITE" and not tx.request.to.tag:
            call = self.calls[tx.request.call_id] = Call(self, tx, flow)
            call.start()
        elif call is not None:
            call.on_in_dialog(tx)

    def on_timeout(self, timeout: TransactionTimeout, flow: Flow) -> None:
        self.timeouts.append(timeout)


# -- the caller -------------------------------------------------------------------------------------------------
class Caller:
    """The phone's side of one dialog: builds its requests and reads what the desk sent back."""

    def __init__(self, desk: CallDesk) -> None:
        self.desk = desk
        self.call_id = f"unit-{random.getrandbits(32):x}"
        self.cseq = 1
        self.to_tag = ""

    def send(self, method: str, *, body: str = "", content_type: str | None = None, cseq: int | None = None) -> None:
        if cseq is None:
            self.cseq += 1 if method != "INVITE" else 0
            cseq = self.cseq
        to = "<sip:citycast@127.0.0.1>" + (f";tag={self.to_tag}" if self.to_tag else "")
        lines = [
            f"{method} sip:citycast@127.0.0.1 SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-{random.getrandbits(40):x}",
            'From: "Imam" <sip:imam@127.0.0.1>;tag=c1',
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            "Contact: <sip:imam@127.0.0.1:5999>",
            "Max-Forwards: 70",
        ]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        data = "\r\n".join([*lines, f"Content-Length: {len(body.encode())}", "", body]).encode()
        self.desk.transport.dispatch(parse(data), CALLER)
        self.desk.transport.flush()

    def invite(self) -> None:
        self.send("INVITE", body=OFFER, content_type="application/sdp")

    def ack(self) -> None:
        self.send("ACK", cseq=1)

    def keys(self, digits: str) -> None:
        for d in digits:
            self.send("INFO", body=f"Signal={d}\r\nDuration=160\r\n", content_type="application/dtmf-relay")

    def responses(self, method: str) -> list[SipMessage]:
        return [m for m in self.desk.transport.sent if m.status is not None and m.cseq[1] == method]

    def requests(self, method: str) -> list[SipMessage]:
        return [m for m in self.desk.transport.sent if m.method == method]


async def until(cond: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)
    assert cond(), what


def add_pin(db: Database, pin: str, language: str = "en") -> int:
    with db.session() as s:
        row = SpeakerPin(label="Imam Saddar", pin_hash=hash_password(pin), pin_hint=hint_of(pin), zone_ids=[ZONE],
                         priority=Priority.live, language=language)  # fmt: skip
        s.add(row)
        s.flush()
        return int(row.id)


def audits(db: Database, action: str) -> list[AuditEntry]:
    with db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)))


async def answered(desk: CallDesk, caller: Caller) -> Call:
    caller.invite()
    await until(lambda: caller.responses("INVITE") and caller.responses("INVITE")[-1].status == 200, "no 200")
    ok = caller.responses("INVITE")[-1]
    caller.to_tag = ok.to.tag or ""
    caller.ack()
    return desk.calls[caller.call_id]


# -- the tests --------------------------------------------------------------------------------------------------
async def test_a_call_goes_on_air_with_the_right_pin_and_off_with_the_bye(sqlite_database: Database) -> None:
    pin_id = add_pin(sqlite_database, PIN)
    desk = CallDesk(sqlite_database, PinGuard())
    caller = Caller(desk)
    call = await answered(desk, caller)
    statuses = [m.status for m in caller.responses("INVITE")]
    assert statuses == [180, 200], statuses
    ok = caller.responses("INVITE")[-1]
    assert ok.content_type == "application/sdp" and f"m=audio {RTP_PORT} RTP/AVP 0" in ok.body.decode()
    assert call.state is CallState.answered
    await until(lambda: desk.prompts.asked == ["welcome"], f"no welcome: {desk.prompts.asked}")

    # A wrong PIN: refused, nothing on air, the caller told so.
    caller.keys("111111#")
    await until(lambda: "wrong_pin" in desk.prompts.asked, f"no wrong-PIN prompt: {desk.prompts.asked}")
    assert desk.addresses.started == [] and call.failed_pins == 1 and call.state is CallState.answered
    assert [a.target for a in audits(sqlite_database, "pin.failure")] == ["source:127.0.0.1"]

    # The right one: the address starts on the PIN's zones, the broadcast runs, the caller hears how many sites.
    caller.keys(PIN + "#")
    await until(lambda: call.state is CallState.live and call.sites_live is not None, "never live")
    [started] = desk.addresses.started
    assert started["zone_ids"] == [ZONE] and started["priority"] == Priority.live
    assert started["speaker"] == "Imam Saddar" and started["source"] == "sip:imam@127.0.0.1"
    assert started["title"] == "Call from Imam" and started["external"] is True and started["user_id"] is None
    assert call.address_id == 101 and desk.counted == [(ZONE,)]
    await until(lambda: desk.prompts.asked[-1] == "live_to 3", f"not told: {desk.prompts.asked}")
    await until(lambda: len(desk.bus.published) >= 3, "no frames on the bus")
    subject, data = desk.bus.published[0]
    assert subject == Subjects().audio(CHANNEL) and parse_frame(data)[0].channel == CHANNEL
    with sqlite_database.session() as s:
        assert s.get(SpeakerPin, pin_id).last_used_at is not None  # type: ignore[union-attr]
    # The return stream reached the caller's SDP address (the latch allows it once our 200 was ACKed).
    rtp = [(RtpPacket.parse(d), a) for d, a in desk.sockets[0].sent]
    assert rtp and {a for _, a in rtp} == {("127.0.0.1", 30000)} and {p.payload_type for p, _ in rtp} == {0}

    # The caller hangs up: 200 to the BYE, the address stopped, the broadcast and sockets closed.
    caller.send("BYE")
    await until(lambda: desk.ended == [call], "the call never ended")
    assert caller.responses("BYE")[-1].status == 200
    assert desk.addresses.stopped == [(101, "call ended")]
    assert call.state is CallState.ended and call.end_reason == "caller hung up"
    assert all(s.closed for s in desk.sockets)
    frames = len(desk.bus.published)
    await asyncio.sleep(0.1)
    assert len(desk.bus.published) == frames  # the broadcaster is stopped
    assert caller.requests("BYE") == []  # the caller hung up: we send none


async def test_three_wrong_pins_hang_up_without_going_on_air(sqlite_database: Database) -> None:
    add_pin(sqlite_database, PIN)
    desk = CallDesk(sqlite_database, PinGuard())
    caller = Caller(desk)
    call = await answered(desk, caller)
    for wrong in ("111111", "222222", "333333"):
        caller.keys(wrong + "#")
        await until(lambda: call.failed_pins == 3 or desk.prompts.asked.count("wrong_pin") >= call.failed_pins,
                    "PIN not checked")  # fmt: skip
    # The third failure: "too many", then our BYE; no address was ever started.
    await until(lambda: caller.requests("BYE"), "we never hung up")
    assert desk.prompts.asked == ["welcome", "wrong_pin", "wrong_pin", "too_many"]
    assert desk.addresses.started == [] and desk.addresses.stopped == [] and desk.broadcasters == []
    assert call.end_reason == "too many wrong PINs"
    await until(lambda: desk.ended == [call], "the call never ended")
    failures = audits(sqlite_database, "pin.failure")
    assert len(failures) == 3 and failures[-1].detail["outcome"] == "hangup"


async def test_a_blocked_source_is_refused_before_any_answer(sqlite_database: Database) -> None:
    add_pin(sqlite_database, PIN)
    guard = PinGuard()
    now = time.monotonic()
    for _ in range(guard.failures):
        guard.on_failure("127.0.0.1", now)
    desk = CallDesk(sqlite_database, guard)
    caller = Caller(desk)
    caller.invite()
    await until(lambda: desk.ended, "the call never ended")
    assert [m.status for m in caller.responses("INVITE")] == [403]
    assert desk.sockets == [] and desk.prompts.asked == [] and desk.addresses.started == []
    assert desk.ended[0].end_reason == "source blocked"


async def test_a_pin_in_urdu_gets_the_urdu_prompts_once_it_is_known(sqlite_database: Database) -> None:
    """Before the PIN the caller is nobody in particular (English); from the right PIN on, the PIN's language."""
    add_pin(sqlite_database, PIN, language="ur")
    desk = CallDesk(sqlite_database, PinGuard())
    caller = Caller(desk)
    call = await answered(desk, caller)
    await until(lambda: desk.prompts.asked == ["welcome"], f"no welcome: {desk.prompts.asked}")
    caller.keys(PIN + "#")
    await until(lambda: call.state is CallState.live and call.sites_live is not None, "never live")
    await until(lambda: desk.prompts.asked[-1] == "ur/live_to 3", f"not told in Urdu: {desk.prompts.asked}")
    assert call.language == "ur"
    caller.send("BYE")
    await until(lambda: desk.ended == [call], "the call never ended")


async def test_an_address_stopped_elsewhere_hangs_up_the_call(sqlite_database: Database) -> None:
    add_pin(sqlite_database, PIN)
    desk = CallDesk(sqlite_database, PinGuard())
    caller = Caller(desk)
    call = await answered(desk, caller)
    caller.keys(PIN + "#")
    await until(lambda: call.state is CallState.live, "never live")
    await desk.addresses.stop(101, "stopped from the console")
    call.hub_stopped()  # what the telephone's watch does when the address is gone
    [bye] = caller.requests("BYE")
    assert bye.call_id == caller.call_id and bye.to.tag == "c1"
    await until(lambda: desk.ended == [call], "the call never ended")
    assert desk.addresses.stopped == [(101, "stopped from the console")]  # not stopped again by the call
    assert call.end_reason == "address stopped"
