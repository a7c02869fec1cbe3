"""One telephone call: answer, PIN, on air, hang up (the call's state machine and its SIP dialog).

The SIP side (offer/answer, the dialog, in-dialog requests) is driven by the `Telephone` (service.py) through
`on_*` methods; the call's own coroutine runs the conversation: ring, answer, play the welcome, collect DTMF
digits, check the PIN, put the address on air and tell the caller how many sites hear them, then wait for either
side to hang up. Everything it needs from outside comes through its `CallHost` (the telephone, or a host built by
a test), whose hub side is `hub_services.TelephoneServices`.

Its parts, one module each: the media (sockets, latch, SRTP, jitter buffer, RTCP: media.py) runs on the hub's
media plane (its own thread and loop, `CallHost.media_plane`) with the call's broadcaster; the conversation,
signalling and what the caller hears (return_stream.py: prompts, else silence, from the first answer on, at a
20 ms pace) stay on the control loop. While the call is live and the hub listens to a site (talkback), that site's
microphone (talkback_feed.py) is mixed into the return stream under a limiter (limiter.py), so the speaker hears
the crowd. A caller on hold (their offer sendonly or inactive) is sent no RTP and feeds silence to the broadcast.

A source refused by the PIN guard gets 403 before any answer (no media, no prompt: the cheapest refusal we can
make to someone guessing PINs); a caller blocked during the call hears "too many" and gets our BYE.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from citycast.hub.db.models import Priority
from citycast.hub.telephone.hub_services import Addresses, PromptBook
from citycast.hub.telephone.media import (
    JITTER_TARGET_MS,
    RTCP_SEND_BURST,
    RTCP_SEND_RATE,
    RTP_SEND_BURST,
    RTP_SEND_RATE,
    CallAudio,
    CallMedia,
    DatagramSink,
    sdp_media,
)
from citycast.hub.telephone.pins import PinResult, SpeakerGrant
from citycast.hub.telephone.return_stream import ReturnStream
from citycast.ingest.live import LiveBroadcaster, LiveSource
from citycast.rtp.codecs import CodecError, Decoder, Encoder, decoder_for, encoder_for
from citycast.rtp.dtmf import DtmfError, Rfc4733Decoder, parse_sip_info
from citycast.rtp.jitter import RtpReceiver
from citycast.rtp.latch import IpNetwork, MediaLatch, SendBudget
from citycast.rtp.rtcp import ReportBlock
from citycast.rtp.srtp import SrtpContext, answer_crypto
from citycast.sip.dialog import Dialog, DialogError
from citycast.sip.message import SipMessage, response_for
from citycast.sip.sdp import Negotiated, SdpError, build_answer, negotiate, parse_sdp
from citycast.sip.transaction import ServerTransaction, new_tag
from citycast.sip.transport import Flow, SipTransport

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from citycast.hub.media_plane import MediaPlane
    from citycast.hub.talkback import TalkbackTap

log = logging.getLogger(__name__)
T = TypeVar("T")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"
ACCEPT = "application/sdp, application/dtmf-relay, application/dtmf"
DIGIT_TIMEOUT_S = 10.0
MAX_DIGITS = 12
IDLE_PROMPTS = 3  # welcomes replayed to a silent caller before we hang up
DROP_LOG_S = 10.0  # at most one "dropped foreign media" warning per call this often


class CallState(enum.Enum):
    ringing = "ringing"
    answered = "answered"  # 200 sent, PIN being entered
    live = "live"
    ended = "ended"


class PinCheck(Protocol):
    """One call's PIN entry (`pins.PinGate`): one `attempt` per typed PIN, limits and audit included."""

    async def attempt(self, pin: str, *, now_s: float, now: dt.datetime) -> PinResult: ...


class CallHost(Protocol):
    """What a call needs from the telephone service."""

    transport: SipTransport
    ring_s: float
    trusted_media: tuple[IpNetwork, ...]  # operator-trusted trunk ranges whose SDP c= may differ from signalling
    rtp_dropped: Counter[str]  # the telephone's total of dropped media datagrams, by reason (for /metrics)

    @property
    def prompts(self) -> PromptBook: ...

    @property
    def addresses(self) -> Addresses: ...

    @property
    def media_plane(self) -> MediaPlane | None:
        """The hub's media thread and loop: the call's RTP sockets and its broadcast run there (None: here)."""
        ...

    def broadcaster(self, channel: int, source: LiveSource) -> LiveBroadcaster:
        """The signed broadcast of `source` on `channel`, not yet started."""
        ...

    def talkback_tap(self) -> TalkbackTap | None:
        """The site whose microphone the hub listens to now, if any."""
        ...

    def pin_gate(self, source: str) -> PinCheck: ...

    def caller_source(self, invite: SipMessage, flow: Flow) -> str: ...

    def source_blocked(self, source: str) -> bool: ...

    def local_ip(self, remote: str) -> str: ...

    async def open_rtp(
        self, rtp: Callable[[], asyncio.DatagramProtocol], rtcp: Callable[[], asyncio.DatagramProtocol]
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramTransport, int]:
        """Two sockets on an even port of the RTP range and the next one (RTCP)."""
        ...

    async def sites_live(self, zone_ids: tuple[int, ...]) -> int: ...

    def call_ended(self, call: Call) -> None: ...


async def _start(broadcaster: LiveBroadcaster) -> None:
    """Start `broadcaster` on the loop this runs on (its task belongs there)."""
    broadcaster.start()


class Call:
    def __init__(self, host: CallHost, invite_tx: ServerTransaction, flow: Flow) -> None:
        self.host = host
        self.invite_tx = invite_tx
        self.invite = invite_tx.request
        self.flow = flow
        self.call_id = self.invite.call_id
        self.local_tag = new_tag()
        self.state = CallState.ringing
        self.from_uri = self.invite.from_.uri
        self.source = host.caller_source(self.invite, flow)  # the trunk's caller, not the trunk, if trusted
        self.dialog: Dialog | None = None
        self.media: CallMedia | None = None
        self.address_id: int | None = None
        self.broadcaster: LiveBroadcaster | None = None
        self.digits: asyncio.Queue[str] = asyncio.Queue()
        self.end_reason = ""
        self.sdp_version = 1
        self.session_id = random.getrandbits(31)
        self.failed_pins = 0
        self.sites_live: int | None = None  # the N of "you are live to N sites", once on air
        self.language = "en"  # of the prompts: English until the PIN names the speaker's (SpeakerPin.language)
        self._task: asyncio.Task[None] | None = None
        self._ended = asyncio.Event()
        self._cancelled = False
        self._rtcp_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the call's own (control) loop
        self.rtcp_sent = 0
        self._drop_logged = -DROP_LOG_S

    @property
    def heard_report(self) -> ReportBlock | None:
        """The caller's latest RTCP report on our stream (what it decodes), if any."""
        return self.media.heard_report if self.media is not None else None

    # -- entry ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"call:{self.call_id}")

    # The call's media (RTP/RTCP sockets, latch, jitter buffer, DTMF, the broadcaster) lives on the media plane's
    # loop, so no request handler or hash on the control loop delays what the loudspeakers play; the conversation,
    # signalling and the return stream stay here and cross over only through these two.
    async def _on_media_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        plane = self.host.media_plane
        return await (plane.run(coro) if plane is not None else coro)

    def _media_soon(self, fn: Callable[..., object], *args: Any) -> None:
        plane = self.host.media_plane
        if plane is None:
            fn(*args)
            return
        with contextlib.suppress(RuntimeError):  # the media plane already stopped (hub shutting down)
            plane.call_soon(fn, *args)

    def _respond(self, tx: ServerTransaction, status: int, reason: str, **kw: Any) -> None:
        tx.respond(response_for(tx.request, status, reason, **kw), self.host.transport.clock())
        self.host.transport.flush()

    async def _run(self) -> None:
        try:
            if not await self._answer():
                return
            await self._converse()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call %s failed", self.call_id)
            self.end_reason = "call failed"
        finally:
            await self._teardown()

    async def _answer(self) -> bool:
        tx = self.invite_tx
        if self.host.source_blocked(self.source):
            log.warning("call from %s (%s) refused: source blocked after wrong PINs", self.from_uri, self.source)
            self._respond(tx, 403, "Forbidden", to_tag=self.local_tag)
            self.end_reason = "source blocked"
            return False
        if self.invite.content_type is None or not self.invite.body:
            warning = '399 citycast "an INVITE without an SDP offer is not supported"'
            self._respond(tx, 488, "Not Acceptable Here", to_tag=self.local_tag, headers=[("Warning", warning)])
            self.end_reason = "no offer"
            return False
        try:
            neg = negotiate(parse_sdp(self.invite.body))
            decoder = decoder_for(neg.codec)
            encoder = encoder_for(neg.codec, ptime_ms=20)
        except (SdpError, CodecError) as e:
            unacceptable = any(w in str(e).lower() for w in ("codec", "crypto", "not supported"))
            status, reason = (488, "Not Acceptable Here") if unacceptable else (400, "Bad Request")
            warning = str(e).replace('"', "'")[:200]
            self._respond(tx, status, reason, to_tag=self.local_tag, headers=[("Warning", f'399 citycast "{warning}"')])
            self.end_reason = f"SDP refused: {e}"
            log.info("call %s from %s: %d %s", self.call_id, self.from_uri, status, e)
            return False
        self._respond(tx, 180, "Ringing", to_tag=self.local_tag)
        await self._open_media(neg, decoder, encoder)
        await asyncio.sleep(self.host.ring_s)
        if self._cancelled or self.state is CallState.ended:
            return False
        local_ip = self.host.local_ip(self.flow.remote[0])
        contact = f"<sip:citycast@{local_ip}:{self.host.transport.port};transport={self.flow.transport.lower()}>"
        assert self.media is not None
        srtp = self.media.srtp
        body = build_answer(neg, local_ip=local_ip, local_port=self.media.port, session_id=self.session_id,
                            version=self.sdp_version, crypto=srtp.local if srtp else None)  # fmt: skip
        try:
            self.dialog = Dialog.from_invite(self.invite, self.local_tag, contact)
        except DialogError as e:
            self._respond(tx, 400, "Bad Request", to_tag=self.local_tag, headers=[("Warning", f'399 citycast "{e}"')])
            self.end_reason = f"bad INVITE: {e}"
            return False
        ok = self.dialog.response(self.invite, 200, "OK", body=body, content_type="application/sdp",
                                  headers=[("Allow", ALLOW), ("Accept", ACCEPT)])  # fmt: skip
        now = self.host.transport.clock()
        tx.respond(ok, now)
        self.dialog.track_2xx(ok, self.flow.remote, now)
        self.host.transport.watch(self.dialog, self.flow.transport, self._ack_timed_out)
        self.state = CallState.answered
        self.media.latch.answered = True  # the caller learns our port from this 200: media may come now
        self.media.back.start()
        self._rtcp_task = asyncio.create_task(self._rtcp_loop())
        log.info("call %s from %s answered (%s)", self.call_id, self.from_uri, neg.codec.name)
        return True

    async def _open_media(self, neg: Negotiated, decoder: Decoder, encoder: Encoder) -> None:
        transport, rtcp, port = await self._on_media_loop(
            self.host.open_rtp(lambda: DatagramSink(self._on_rtp), lambda: DatagramSink(self._on_rtcp))
        )
        receiver = RtpReceiver(neg.codec.clock_rate, neg.ptime_ms or 20, JITTER_TARGET_MS, decoder=decoder)
        latch = MediaLatch(self.flow.remote[0], sdp_media(neg), trusted=self.host.trusted_media,
                           srtp=neg.crypto is not None)  # fmt: skip
        srtp = SrtpContext(answer_crypto(neg.crypto), neg.crypto) if neg.crypto is not None else None

        def send(data: bytes) -> None:
            m = self.media
            assert m is not None
            target = m.sending()
            if target is None or not m.rtp_budget.take(time.monotonic()):
                return
            self._media_soon(transport.sendto, m.srtp.protect(data) if m.srtp is not None else data, target)

        back = ReturnStream(encoder, neg.codec.payload_type, send)
        now = time.monotonic()
        self.media = CallMedia(neg, transport, rtcp, port, latch, receiver, CallAudio(receiver), back, Rfc4733Decoder(),
                            srtp, SendBudget(RTP_SEND_RATE, RTP_SEND_BURST, now),
                            SendBudget(RTCP_SEND_RATE, RTCP_SEND_BURST, now))  # fmt: skip

    # -- the conversation -----------------------------------------------------------------------------------
    async def _converse(self) -> None:
        assert self.media is not None
        back = self.media.back
        gate = self.host.pin_gate(self.source)
        idle = 0
        back.play(self.host.prompts.get("welcome"))
        grant: SpeakerGrant | None = None
        while grant is None:
            pin = await self._collect_pin()
            if pin is None:
                return  # hung up meanwhile
            if pin == "":
                idle += 1
                if idle >= IDLE_PROMPTS:
                    self.end_reason = "no PIN entered"
                    await self._say_and_hang_up("too_many")
                    return
                back.play(self.host.prompts.get("welcome"))
                continue
            result = await gate.attempt(pin, now_s=time.monotonic(), now=dt.datetime.now(dt.UTC))
            if result.outcome == "granted":
                grant = result.grant
                assert grant is not None
                self.language = grant.language
                break
            if result.outcome in ("busy", "overloaded"):
                # Not checked (another call from this source is being checked, or no worker is free): not a
                # try, but bounded like silence so a caller cannot loop here forever.
                idle += 1
                log.info("call %s (%s): PIN not checked (%s)", self.call_id, self.source, result.outcome)
                if idle >= IDLE_PROMPTS:
                    self.end_reason = f"PIN not checked ({result.outcome})"
                    await self._say_and_hang_up("too_many")
                    return
                back.clear()
                back.play(self.host.prompts.get("welcome"))
                continue
            self.failed_pins += 1
            log.warning("call %s from %s (%s): wrong PIN (%s, %d tries left)", self.call_id, self.from_uri,
                        self.source, result.outcome, result.tries_left)  # fmt: skip
            if result.outcome == "retry":
                back.clear()
                back.play(self.host.prompts.get("wrong_pin"))
                continue
            self.end_reason = "too many wrong PINs" if result.outcome == "hangup" else "source blocked"
            await self._say_and_hang_up("too_many")
            return
        assert grant is not None
        await self._go_live(grant)
        await self._ended.wait()

    async def _collect_pin(self) -> str | None:
        """Digits up to '#', MAX_DIGITS digits, or DIGIT_TIMEOUT_S without a key; None if the call ended."""
        typed = ""
        while len(typed) < MAX_DIGITS:
            getter = asyncio.ensure_future(self.digits.get())
            ended = asyncio.ensure_future(self._ended.wait())
            done, _ = await asyncio.wait({getter, ended}, timeout=DIGIT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
            for f in (getter, ended):
                if f not in done:
                    f.cancel()
            if ended in done:
                return None
            if getter not in done:
                return typed  # timeout: what we have ("" = nothing typed)
            d = getter.result()
            if d == "#":
                return typed
            if d == "*":
                typed = ""  # start over
                continue
            typed += d
        return typed

    async def _go_live(self, grant: SpeakerGrant) -> None:
        assert self.media is not None
        addresses = self.host.addresses
        display = self.invite.from_.display or self.from_uri
        try:
            self.address_id = await addresses.start(
                title=f"Call from {display}",
                source=f"sip:{self.from_uri.removeprefix('sip:')}",
                zone_ids=list(grant.zone_ids),
                priority=Priority(grant.priority),
                speaker=grant.label,
                user_id=grant.user_id,
                external=True,
            )
        except ValueError as e:  # the PIN's zones are gone, or too many addresses at once
            log.error("call %s: cannot go on air: %s", self.call_id, e)
            self.end_reason = f"cannot go on air: {e}"
            await self._say_and_hang_up("ended")
            return
        channel = addresses.channel_of(self.address_id)
        self.broadcaster = self.host.broadcaster(channel, self.media.audio)
        await self._on_media_loop(_start(self.broadcaster))
        self.state = CallState.live
        n = self.sites_live = await self.host.sites_live(grant.zone_ids)
        self.media.back.talkback = self._talkback_tap
        self.media.back.clear()
        self.media.back.play(self.host.prompts.live_to(n, self.language))
        log.info("call %s from %s live as address %d on channel %d (%s, %d sites)", self.call_id, self.from_uri,
                 self.address_id, channel, grant.label, n)  # fmt: skip

    def _talkback_tap(self) -> TalkbackTap | None:
        """The site the hub listens to, while this call is on air."""
        if self.state is not CallState.live:
            return None
        return self.host.talkback_tap()

    async def _say_and_hang_up(self, prompt: str) -> None:
        assert self.media is not None
        self.media.back.clear()
        self.media.back.play(self.host.prompts.get(prompt, self.language))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                await self.media.back.played()
        await asyncio.sleep(0.2)
        self.send_bye()

    # -- SIP events (from the service) ----------------------------------------------------------------------
    def on_cancel(self, cancel_tx: ServerTransaction) -> None:
        ended = self.host.transport.layers[self.flow.transport].cancel(
            cancel_tx, self.host.transport.clock(), to_tag=self.local_tag
        )
        self.host.transport.flush()
        if ended is not None:
            self._cancelled = True
            self.end_reason = "cancelled"
            self._end()

    def on_in_dialog(self, tx: ServerTransaction) -> None:
        if self.dialog is None:
            if tx.method != "ACK":
                self._respond(tx, 481, "Call/Transaction Does Not Exist")
            return
        ev = self.dialog.on_request(tx.request, self.host.transport.clock())
        if ev.kind == "ack" and self.media is not None:
            self.media.latch.acked = True  # the caller confirmed our answer: its SDP address may be sent to
        if ev.kind == "ignore" or ev.kind == "ack":
            return
        if ev.kind == "reject":
            self._respond(tx, ev.status, ev.reason, headers=list(ev.headers))
        elif ev.kind == "bye":
            self._respond(tx, 200, "OK")
            self.end_reason = "caller hung up"
            self._end()
        elif ev.kind == "reinvite":
            self._reinvite(tx)
        elif tx.method == "INFO":
            try:
                digit = parse_sip_info(tx.request.content_type, tx.request.body)
            except DtmfError as e:
                self._respond(tx, 400, "Bad Request", headers=[("Warning", f'399 citycast "{e}"')])
                return
            if digit is None:
                self._respond(tx, 415, "Unsupported Media Type", headers=[("Accept", ACCEPT)])
                return
            self._respond(tx, 200, "OK")
            if digit is not None:
                self.digits.put_nowait(digit)
        elif tx.method == "OPTIONS":
            self._respond(tx, 200, "OK", headers=[("Allow", ALLOW), ("Accept", ACCEPT)])
        else:
            self._respond(tx, 405, "Method Not Allowed", headers=[("Allow", ALLOW)])

    def _ack_timed_out(self) -> None:
        log.warning("call %s: no ACK for our 200 within 64*T1: hanging up", self.call_id)
        self.end_reason = "no ACK"
        self.send_bye()

    def _reinvite(self, tx: ServerTransaction) -> None:
        assert self.media is not None and self.dialog is not None
        dialog = self.dialog

        def refuse(why: str) -> None:
            # Built by the dialog: a final answer also closes its open re-INVITE (RFC 3261 §14.2).
            warning = [("Warning", f'399 citycast "{why}"')]
            resp = dialog.response(tx.request, 488, "Not Acceptable Here", headers=warning)
            tx.respond(resp, self.host.transport.clock())
            self.host.transport.flush()

        try:
            neg = negotiate(parse_sdp(tx.request.body)) if tx.request.body else self.media.neg
        except SdpError as e:
            refuse(str(e).replace('"', "'")[:200])
            return
        if neg.codec.name.lower() != self.media.neg.codec.name.lower():
            # Changing codecs mid-call would restart the decoder under the broadcast: keep it simple, refuse.
            refuse("the codec cannot change during a call")
            return
        srtp = self.media.srtp
        if (neg.crypto is None) != (srtp is None):
            refuse("SRTP cannot be switched on or off during a call")
            return
        if srtp is not None and neg.crypto is not None and neg.crypto.key != srtp.remote.key:
            # The caller re-keys: it says so with a new a=crypto; our own key stays (RFC 4568 §7.1.4).
            self.media.srtp = srtp = SrtpContext(answer_crypto(neg.crypto), neg.crypto)
        held = neg.direction in ("sendonly", "inactive")
        self.media.audio.held = held
        self.media.neg = neg
        if neg.remote_addr[1]:
            # A new address unlatches; the same rules latch again. On the media loop, between two datagrams.
            self._media_soon(self.media.latch.renegotiate, sdp_media(neg))
        ours = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}.get(neg.direction, "sendrecv")
        self.sdp_version += 1
        local_ip = self.host.local_ip(self.flow.remote[0])
        body = build_answer(neg, local_ip=local_ip, local_port=self.media.port, session_id=self.session_id,
                            version=self.sdp_version, direction=ours, crypto=srtp.local if srtp else None)  # fmt: skip
        assert self.dialog is not None
        ok = self.dialog.response(tx.request, 200, "OK", body=body, content_type="application/sdp")
        now = self.host.transport.clock()
        tx.respond(ok, now)
        self.dialog.track_2xx(ok, self.flow.remote, now)
        self.host.transport.flush()
        log.info("call %s %s", self.call_id, "on hold" if held else "resumed")

    def hub_stopped(self) -> None:
        """The address was stopped elsewhere (the console): hang up on the caller."""
        if self.state is CallState.ended:
            return
        self.end_reason = "address stopped"
        self.address_id = None  # already stopped: do not stop it again
        self.send_bye()

    def send_bye(self) -> None:
        if self.dialog is not None and self.state is not CallState.ended:
            try:
                local_ip = self.host.local_ip(self.flow.remote[0])
                bye = self.dialog.bye(sent_by=f"{local_ip}:{self.host.transport.port}", transport=self.flow.transport)
                self.host.transport.send_request(bye, self.flow)
            except Exception as e:
                log.warning("call %s: BYE not sent: %s", self.call_id, e)
        self._end()

    def _end(self) -> None:
        if self.state is CallState.ended:
            return
        self.state = CallState.ended
        self._ended.set()
        if self._task is not None and self.dialog is None:
            pass  # still ringing: _answer sees the state after its sleep

    # -- RTP ------------------------------------------------------------------------------------------------
    def _on_rtp(self, data: bytes, addr: tuple[str, int]) -> None:
        m = self.media
        if m is None or self.state is CallState.ended:
            return
        got = m.receive_rtp(data, addr, time.monotonic())
        if got.dropped is not None:
            self._dropped(got.dropped, addr)
        elif got.digit is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.digits.put_nowait, got.digit)  # to the conversation's loop

    def _on_rtcp(self, data: bytes, addr: tuple[str, int]) -> None:
        m = self.media
        if m is None or self.state is CallState.ended:
            return
        dropped = m.receive_rtcp(data, addr, time.monotonic())
        if dropped is not None:
            self._dropped(dropped, addr)

    def _dropped(self, reason: str, addr: tuple[str, int]) -> None:
        """Count a dropped datagram for /metrics and say so in the log, at most once per DROP_LOG_S per call."""
        self.host.rtp_dropped[reason] += 1
        now = time.monotonic()
        if now - self._drop_logged < DROP_LOG_S:
            return
        m = self.media
        total = sum(m.latch.dropped.values()) if m is not None else 0
        log.warning("call %s: dropped media from %s:%d (%s); %d dropped in this call so far (%s); taking media from %s",
                    self.call_id, addr[0], addr[1], reason, total,
                    ", ".join(f"{k} {v}" for k, v in sorted(m.latch.dropped.items()) if v) if m is not None else "",
                    m.latch.latched if m is not None and m.latch.latched else "nobody yet")  # fmt: skip
        self._drop_logged = now

    async def _rtcp_loop(self) -> None:
        """Receiver reports (RFC 3550 §6.4.2) to the caller's RTCP port, about every 5 s, once the latch allows."""
        cname = f"citycast@{self.host.local_ip(self.flow.remote[0])}"
        while True:
            m = self.media
            if m is None:
                return
            await asyncio.sleep(m.reporter.next_interval())
            report = m.receiver_report(cname, time.monotonic())
            if report is None:
                continue
            self._media_soon(m.rtcp.sendto, *report)
            self.rtcp_sent += 1

    # -- the end --------------------------------------------------------------------------------------------
    async def _teardown(self) -> None:
        self._end()
        if self.broadcaster is not None:
            await self._on_media_loop(self.broadcaster.stop())
        if self.address_id is not None:
            aid, self.address_id = self.address_id, None
            with contextlib.suppress(KeyError):
                await self.host.addresses.stop(aid, "call ended")
        if self._rtcp_task is not None:
            self._rtcp_task.cancel()
        if self.dialog is not None:
            self.host.transport.unwatch(self.dialog)
        if self.media is not None:
            await self.media.back.stop()
            self._media_soon(self.media.transport.close)
            self._media_soon(self.media.rtcp.close)
        log.info("call %s from %s ended: %s", self.call_id, self.from_uri, self.end_reason or "ended")
        self.host.call_ended(self)

    async def finished(self) -> None:
        """Until the call is over and cleaned up (its address stopped, its sockets closed)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(self._task)
