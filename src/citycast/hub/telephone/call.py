"""One telephone call: answer, PIN, on air, hang up.

The SIP side (offer/answer, the dialog, in-dialog requests) is driven by `SipService` through `on_*` methods; the
call's own coroutine runs the conversation: ring, answer, play the welcome, collect DTMF digits, check the PIN,
put the address on air and tell the caller how many sites hear them, then wait for either side to hang up.

Media: one UDP socket per call on an even port of the RTP range (RTCP on the next, odd one). Incoming packets of
the negotiated codec go to the jitter buffer; the broadcaster takes one 20 ms block per frame from it
(`CallAudio.next_block`), so the caller's clock never paces the broadcast. Telephone-events go to the RFC 4733
decoder. The return stream (prompts, else silence) is encoded with the negotiated codec and runs at a 20 ms pace
from the first answer on: a continuous stream keeps NAT bindings open and lets the caller's jitter buffer settle.
Only the caller's datagrams are taken, and the stream goes only to the caller, never faster than its pace: the
`MediaLatch` (ingest/rtp/latch.py, rule in docs/sip-internals.md) decides both. SRTP when the offer is RTP/SAVP
with SDES keys.
The sockets, the latch, the jitter buffer and the call's broadcaster run on the hub's media plane (its own thread
and loop, `CallHost.media_plane`); the conversation, signalling and the return stream stay on the control loop.
While the call is live and the hub listens to a site (talkback), that site's microphone is mixed into the return
stream under a limiter, so the speaker hears the crowd. A caller on hold (their offer sendonly or inactive) is
sent no RTP and feeds silence to the broadcast.

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
import weakref
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from citycast.hub.db.models import Priority
from citycast.hub.telephone.pins import PinGate, SpeakerGrant
from citycast.hub.telephone.prompts import Prompts
from citycast.ingest.live import LiveBroadcaster
from citycast.media.audio import FRAME_SAMPLES
from citycast.media.render import Samples
from citycast.rtp.codecs import CodecError, Decoder, Encoder, decoder_for, encoder_for
from citycast.rtp.dtmf import DtmfError, Rfc4733Decoder, parse_sip_info
from citycast.rtp.jitter import RtpReceiver
from citycast.rtp.latch import IpNetwork, MediaLatch, SdpMedia, SendBudget
from citycast.rtp.packet import RtpPacket
from citycast.rtp.rtcp import (
    Bye,
    ReceiverReport,
    ReceptionReporter,
    ReportBlock,
    RtcpError,
    SenderReport,
    SourceDescription,
    build_rr,
    parse_compound,
)
from citycast.rtp.srtp import SrtpContext, SrtpError, answer_crypto
from citycast.sip.dialog import Dialog, DialogError
from citycast.sip.message import SipMessage, response_for
from citycast.sip.sdp import Negotiated, SdpError, build_answer, negotiate, parse_sdp
from citycast.sip.transaction import ServerTransaction, new_tag
from citycast.sip.transport import Flow, SipTransport
from citycast.tasks import cancel_and_wait

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from citycast.hub.addresses import AddressManager
    from citycast.hub.media_plane import MediaPlane
    from citycast.hub.talkback import TalkbackControl, TalkbackTap

log = logging.getLogger(__name__)
T = TypeVar("T")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"
ACCEPT = "application/sdp, application/dtmf-relay, application/dtmf"
DIGIT_TIMEOUT_S = 10.0
MAX_DIGITS = 12
IDLE_PROMPTS = 3  # welcomes replayed to a silent caller before we hang up
RTCP_INTERVAL_S = 5.0
JITTER_TARGET_MS = 60
LIMIT = 0.98  # the return mix's ceiling (full scale is 1.0)
RELEASE = 1.06  # limiter gain recovery per 20 ms block (about 0.5 dB): fast enough to follow speech, no pumping
TALKBACK_BACKLOG = 25  # blocks (0.5 s) a slower call may lag behind the fastest one on the same talkback
FRAME_S = 0.02  # the return stream's packet period
# Hard ceilings on what one call may send, whatever the pacing does: 50 RTP packets a second plus a little
# slack for timer jitter, and RTCP at most once a second (its schedule is ~5 s).
RTP_SEND_RATE, RTP_SEND_BURST = 55.0, 4
RTCP_SEND_RATE, RTCP_SEND_BURST = 1.0, 2
DROP_LOG_S = 10.0  # at most one "dropped foreign media" warning per call this often


class CallState(enum.Enum):
    ringing = "ringing"
    answered = "answered"  # 200 sent, PIN being entered
    live = "live"
    ended = "ended"


class TalkbackHub(Protocol):
    """The part of the hub a call listens to: which site's microphone is open, if any."""

    @property
    def talkback(self) -> TalkbackControl | None: ...


class CallHost(Protocol):
    """What a call needs from the telephone service."""

    transport: SipTransport
    prompts: Prompts
    ring_s: float
    trusted_media: tuple[IpNetwork, ...]  # operator-trusted trunk ranges whose SDP c= may differ from signalling
    rtp_dropped: Counter[str]  # the telephone's total of dropped media datagrams, by reason (for /metrics)

    @property
    def hub(self) -> TalkbackHub: ...

    @property
    def addresses(self) -> AddressManager: ...

    @property
    def media_plane(self) -> MediaPlane | None:
        """The hub's media thread and loop: the call's RTP sockets and its broadcast run there (None: here)."""
        ...

    @property
    def nc(self) -> Any: ...

    @property
    def signer(self) -> Any: ...

    @property
    def subjects(self) -> Any: ...

    def pin_gate(self, source: str) -> PinGate: ...

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


# -- media ----------------------------------------------------------------------------------------------------
class CallAudio:
    """The caller's voice as a `LiveSource`: one 48 kHz block per broadcast frame, concealed where packets are
    missing, silence while the caller holds."""

    def __init__(self, receiver: RtpReceiver, clock: Callable[[], float] = time.monotonic) -> None:
        self.receiver = receiver
        self.clock = clock
        self.held = False
        self._buf = np.zeros(0, np.float32)
        self.level = 0.0

    def next_block(self, now: float) -> Samples:
        # Held or not, the jitter buffer is drained at the broadcast's pace, so that music on hold does not pile
        # up in it and play after the resume.
        t = self.clock()
        parts = [self._buf]
        have = self._buf.size
        while have < FRAME_SAMPLES:
            pcm = self.receiver.pop_audio(t)
            if pcm.size == 0:
                pcm = np.zeros(FRAME_SAMPLES, np.float32)
            parts.append(pcm)
            have += pcm.size
        buf = np.concatenate(parts).astype(np.float32, copy=False)
        block, self._buf = buf[:FRAME_SAMPLES], buf[FRAME_SAMPLES:]
        if self.held:
            block = np.zeros(FRAME_SAMPLES, np.float32)
        self.level = float(np.sqrt(np.mean(block.astype(np.float64) ** 2)))
        return block


async def _start(broadcaster: LiveBroadcaster) -> None:
    """Start `broadcaster` on the loop this runs on (its task belongs there)."""
    broadcaster.start()


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, call: Call, *, rtcp: bool) -> None:
        self.call = call
        self.rtcp = rtcp

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.rtcp:
            self.call._on_rtcp(data, (addr[0], addr[1]))
        else:
            self.call._on_rtp(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("rtp: %s", exc)


class Limiter:
    """Keeps a mix under `LIMIT`: the gain drops at once to what the loudest sample of a block allows (no sample
    ever clips) and recovers by `RELEASE` per block, ramped within the block so the recovery does not click."""

    def __init__(self, ceiling: float = LIMIT, release: float = RELEASE) -> None:
        if not 0 < ceiling <= 1 or release < 1:
            raise ValueError(f"bad limiter: ceiling {ceiling} (0..1], release {release} (>= 1)")
        self.ceiling = ceiling
        self.release = release
        self.gain = 1.0

    def process(self, block: Samples) -> Samples:
        if block.size == 0:
            return block.astype(np.float32, copy=False)
        peak = float(np.max(np.abs(block)))
        allowed = self.ceiling / peak if peak > self.ceiling else 1.0
        gain = min(1.0, self.gain * self.release, allowed)
        # Attack: the whole block at the lower gain. Release: a ramp whose every gain is between the old gain and
        # the new one, both at most `allowed`, so no sample clips either.
        ramp = gain if gain < self.gain else np.linspace(self.gain, gain, block.size, dtype=np.float32)
        self.gain = gain
        out: Samples = np.clip(block * ramp, -self.ceiling, self.ceiling).astype(np.float32)  # float rounding only
        return out


class TalkbackFeed:
    """One site's microphone shared by every call that mixes it: a tap's `next_block` consumes its audio, so two
    calls reading the tap directly would each hear every other block. The fastest reader pulls from the tap;
    the others get the same blocks from a short backlog (a reader further behind skips to the newest)."""

    def __init__(self, tap: TalkbackTap) -> None:
        self.tap = tap
        self._blocks: deque[Samples] = deque()
        self._first = 0  # index of _blocks[0] in the tap's sequence of blocks

    @classmethod
    def of(cls, tap: TalkbackTap) -> TalkbackFeed:
        feed = _FEEDS.get(tap)
        if feed is None:
            feed = _FEEDS[tap] = cls(tap)
        return feed

    def read(self, cursor: int | None) -> tuple[Samples, int]:
        """The block at `cursor` (None: a new reader) and the reader's next cursor."""
        end = self._first + len(self._blocks)
        if cursor is None or not self._first <= cursor <= end:
            cursor = end
        if cursor == end:
            self._blocks.append(self.tap.next_block(FRAME_SAMPLES))
            if len(self._blocks) > TALKBACK_BACKLOG:
                self._blocks.popleft()
                self._first += 1
        return self._blocks[cursor - self._first], cursor + 1


_FEEDS: weakref.WeakKeyDictionary[TalkbackTap, TalkbackFeed] = weakref.WeakKeyDictionary()


class ReturnStream:
    """What the caller hears: queued prompts, else silence, plus the talkback site's microphone when
    `talkback` names one, limited, encoded and sent as RTP every 20 ms."""

    def __init__(
        self,
        encoder: Encoder,
        payload_type: int,
        send: Callable[[bytes], None],
        talkback: Callable[[], TalkbackTap | None] | None = None,
    ) -> None:
        self.encoder = encoder
        self.payload_type = payload_type
        self.send = send
        self.talkback = talkback  # set when the call goes live
        self.limiter = Limiter()
        self._feed: TalkbackFeed | None = None
        self._cursor: int | None = None
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.packets = 0
        self.octets = 0
        self._queue: deque[Samples] = deque()
        self._current = np.zeros(0, np.float32)
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        self._first = True

    def play(self, pcm: Samples) -> None:
        self._queue.append(pcm)
        self._drained.clear()

    def clear(self) -> None:
        self._queue.clear()
        self._current = np.zeros(0, np.float32)
        self._drained.set()

    async def played(self) -> None:
        await self._drained.wait()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rtp-return")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    def _block(self) -> Samples:
        """The next 20 ms the caller hears."""
        block = self._prompt_block()
        tap = self.talkback() if self.talkback is not None else None
        if tap is None:
            self._feed = self._cursor = None
            return block
        if self._feed is None or self._feed.tap is not tap:
            self._feed, self._cursor = TalkbackFeed.of(tap), None
        mic, self._cursor = self._feed.read(self._cursor)
        if mic.size != FRAME_SAMPLES:
            mic = np.pad(mic[:FRAME_SAMPLES], (0, max(0, FRAME_SAMPLES - mic.size)))
        return self.limiter.process(block + mic)

    def _prompt_block(self) -> Samples:
        while self._current.size < FRAME_SAMPLES and self._queue:
            self._current = np.concatenate([self._current, self._queue.popleft()])
        if self._current.size == 0:
            self._drained.set()
            return np.zeros(FRAME_SAMPLES, np.float32)
        block = self._current[:FRAME_SAMPLES]
        self._current = self._current[FRAME_SAMPLES:]
        if block.size < FRAME_SAMPLES:
            block = np.concatenate([block, np.zeros(FRAME_SAMPLES - block.size, np.float32)])
        if self._current.size == 0 and not self._queue:
            self._drained.set()
        return block

    async def _run(self) -> None:
        pacer = Pacer(time.monotonic())
        while True:
            delay, skipped = pacer.next(time.monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
            # Late ticks are skipped, never sent in a burst; the RTP clock still moves on by their duration so the
            # caller's jitter buffer sees a gap, not a time warp.
            self.ts = (self.ts + skipped * self.encoder.timestamp_step()) & 0xFFFFFFFF
            for payload in self.encoder.encode(self._block()):
                pkt = RtpPacket(
                    payload_type=self.payload_type,
                    seq=self.seq,
                    timestamp=self.ts,
                    ssrc=self.ssrc,
                    payload=payload,
                    marker=self._first,
                )
                self._first = False
                self.seq = (self.seq + 1) & 0xFFFF
                self.ts = (self.ts + self.encoder.timestamp_step()) & 0xFFFFFFFF
                self.packets += 1
                self.octets += len(payload)
                self.send(pkt.build())


class Pacer:
    """One tick every `period` from `t0`, sans-IO: `next(now)` gives how long to sleep before the next tick and
    how many ticks were missed (skipped, so a late loop never sends a burst)."""

    def __init__(self, t0: float, period: float = FRAME_S) -> None:
        self.t0 = t0
        self.period = period
        self.n = 0

    def next(self, now: float) -> tuple[float, int]:
        self.n += 1
        due = self.t0 + self.n * self.period
        if now - due < self.period:
            return max(0.0, due - now), 0
        skipped = int((now - due) // self.period)
        self.n += skipped
        return 0.0, skipped


# -- the call -------------------------------------------------------------------------------------------------
def _sdp_media(neg: Negotiated) -> SdpMedia:
    pts = {neg.codec.payload_type} | ({neg.dtmf_pt} if neg.dtmf_pt is not None else set())
    return SdpMedia((neg.remote_addr[0], neg.remote_addr[1]), neg.rtcp_port, frozenset(pts))


def _rtcp_sender(packets: list[Any]) -> int | None:
    """The SSRC that sent an RTCP compound (its first packet's), or None."""
    if not packets:
        return None
    first = packets[0]
    if isinstance(first, (SenderReport, ReceiverReport)):
        return first.ssrc
    if isinstance(first, SourceDescription) and first.chunks:
        return first.chunks[0].ssrc
    if isinstance(first, Bye) and first.ssrcs:
        return first.ssrcs[0]
    return None


@dataclass
class _Media:
    neg: Negotiated
    transport: asyncio.DatagramTransport
    rtcp: asyncio.DatagramTransport
    port: int
    latch: MediaLatch
    receiver: RtpReceiver
    audio: CallAudio
    back: ReturnStream
    dtmf: Rfc4733Decoder
    srtp: SrtpContext | None
    rtp_budget: SendBudget
    rtcp_budget: SendBudget

    def sending(self) -> tuple[str, int] | None:
        """Where our RTP goes now, or None: nothing to a caller who holds, and nothing to an address the latch
        does not allow."""
        if self.neg.direction in ("sendonly", "inactive"):
            return None
        return self.latch.rtp_target()


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
        self.media: _Media | None = None
        self.address_id: int | None = None
        self.broadcaster: LiveBroadcaster | None = None
        self.digits: asyncio.Queue[str] = asyncio.Queue()
        self.end_reason = ""
        self.sdp_version = 1
        self.session_id = random.getrandbits(31)
        self.failed_pins = 0
        self.sites_live: int | None = None  # the N of "you are live to N sites", once on air
        self._task: asyncio.Task[None] | None = None
        self._ended = asyncio.Event()
        self._cancelled = False
        self._rtcp_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the call's own (control) loop
        self._reporter = ReceptionReporter()
        self.rtcp_sent = 0
        self.heard_report: ReportBlock | None = None  # the caller's latest report on our stream (what it decodes)
        self._drop_logged = -DROP_LOG_S

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
            self.host.open_rtp(lambda: _RtpProtocol(self, rtcp=False), lambda: _RtpProtocol(self, rtcp=True))
        )
        receiver = RtpReceiver(neg.codec.clock_rate, neg.ptime_ms or 20, JITTER_TARGET_MS, decoder=decoder)
        latch = MediaLatch(self.flow.remote[0], _sdp_media(neg), trusted=self.host.trusted_media,
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
        self.media = _Media(neg, transport, rtcp, port, latch, receiver, CallAudio(receiver), back, Rfc4733Decoder(),
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
        plane = self.host.media_plane
        self.broadcaster = LiveBroadcaster(plane.nc if plane is not None else self.host.nc, channel=channel,
                                           signer=self.host.signer, source=self.media.audio,
                                           subjects=self.host.subjects)  # fmt: skip
        await self._on_media_loop(_start(self.broadcaster))
        self.state = CallState.live
        n = self.sites_live = await self.host.sites_live(grant.zone_ids)
        self.media.back.talkback = self._talkback_tap
        self.media.back.clear()
        self.media.back.play(self.host.prompts.live_to(n))
        log.info("call %s from %s live as address %d on channel %d (%s, %d sites)", self.call_id, self.from_uri,
                 self.address_id, channel, grant.label, n)  # fmt: skip

    def _talkback_tap(self) -> TalkbackTap | None:
        """The site the hub listens to, while this call is on air."""
        if self.state is not CallState.live:
            return None
        control = self.host.hub.talkback
        return control.current if control is not None else None

    async def _say_and_hang_up(self, prompt: str) -> None:
        assert self.media is not None
        self.media.back.clear()
        self.media.back.play(self.host.prompts.get(prompt))
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
            self._media_soon(self.media.latch.renegotiate, _sdp_media(neg))
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
        verdict = m.latch.on_rtp(data, addr, m.srtp.unprotect if m.srtp is not None else None)
        pkt = verdict.packet
        if pkt is None:
            self._dropped(verdict.reason, addr)
            return
        if m.neg.dtmf_pt is not None and pkt.payload_type == m.neg.dtmf_pt:
            digit = m.dtmf.push(pkt)
            if digit is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self.digits.put_nowait, digit)  # to the conversation's loop
        elif pkt.payload_type == m.neg.codec.payload_type:
            m.receiver.push(pkt, time.monotonic())

    def _on_rtcp(self, data: bytes, addr: tuple[str, int]) -> None:
        m = self.media
        if m is None or self.state is CallState.ended:
            return
        # The source is checked before anything is parsed or decrypted: a stranger never reaches the SRTCP state.
        if not m.latch.rtcp_source_ok(addr):
            m.latch.on_rtcp(addr, None)
            self._dropped("rtcp_foreign", addr)
            return
        try:
            if m.srtp is not None:
                data = m.srtp.unprotect_rtcp(data)
            packets = parse_compound(data)
        except SrtpError:
            m.latch.dropped["srtcp_auth"] += 1
            self._dropped("srtcp_auth", addr)
            return
        except RtcpError:
            m.latch.dropped["bad_packet"] += 1
            self._dropped("bad_packet", addr)
            return
        if not m.latch.on_rtcp(addr, _rtcp_sender(packets)):
            self._dropped("rtcp_foreign", addr)
            return
        for packet in packets:
            self._reporter.on_packet(packet, time.monotonic())
            if isinstance(packet, (SenderReport, ReceiverReport)):
                self.heard_report = next((b for b in packet.reports if b.ssrc == m.back.ssrc), self.heard_report)

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
            await asyncio.sleep(self._reporter.next_interval())
            m = self.media
            if m is None:
                return
            target = m.latch.rtcp_target()
            if target is None or not m.rtcp_budget.take(time.monotonic()):
                continue
            block = self._reporter.report_block(m.receiver.stats, time.monotonic())
            data = build_rr(m.back.ssrc, [block] if block is not None else [], cname)
            self._media_soon(m.rtcp.sendto, m.srtp.protect_rtcp(data) if m.srtp is not None else data, target)
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
