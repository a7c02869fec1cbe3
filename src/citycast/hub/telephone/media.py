"""One call's media: its RTP/RTCP sockets, the latch, SRTP, the jitter buffer, DTMF events and its RTCP reports.

One UDP socket per call on an even port of the RTP range (RTCP on the next, odd one). Incoming packets of the
negotiated codec go to the jitter buffer; the broadcaster takes one 20 ms block per frame from it
(`CallAudio.next_block`), so the caller's clock never paces the broadcast. Telephone-events go to the RFC 4733
decoder. Only the caller's datagrams are taken, and the return stream goes only to the caller, never faster than
its pace: the `MediaLatch` (rtp/latch.py, rule in docs/sip-internals.md) and the send budgets decide both. SRTP
when the offer is RTP/SAVP with SDES keys. All of this runs on the hub's media plane (its own thread and loop);
`receive_rtp`/`receive_rtcp` take the time as an argument and say what became of a datagram.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from citycast.hub.telephone.return_stream import ReturnStream
from citycast.media.audio import FRAME_SAMPLES
from citycast.media.render import Samples
from citycast.rtp.dtmf import Rfc4733Decoder
from citycast.rtp.jitter import RtpReceiver
from citycast.rtp.latch import MediaLatch, SdpMedia, SendBudget
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
from citycast.rtp.srtp import SrtpContext, SrtpError
from citycast.sip.sdp import Negotiated

log = logging.getLogger(__name__)

JITTER_TARGET_MS = 60
# Hard ceilings on what one call may send, whatever the pacing does: 50 RTP packets a second plus a little
# slack for timer jitter, and RTCP at most once a second (its schedule is ~5 s).
RTP_SEND_RATE, RTP_SEND_BURST = 55.0, 4
RTCP_SEND_RATE, RTCP_SEND_BURST = 1.0, 2


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


class DatagramSink(asyncio.DatagramProtocol):
    """A call's RTP or RTCP socket: every datagram to `received` (the call checks it is still running)."""

    def __init__(self, received: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.received = received

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("rtp: %s", exc)


def sdp_media(neg: Negotiated) -> SdpMedia:
    """What the latch needs of a negotiated offer: the caller's media address, RTCP port and payload types."""
    pts = {neg.codec.payload_type} | ({neg.dtmf_pt} if neg.dtmf_pt is not None else set())
    return SdpMedia((neg.remote_addr[0], neg.remote_addr[1]), neg.rtcp_port, frozenset(pts))


def rtcp_sender(packets: list[Any]) -> int | None:
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


@dataclass(frozen=True)
class RtpOutcome:
    """What became of one RTP datagram: `dropped` names why it was refused (a latch or SRTP reason), `digit` is a
    key the caller finished pressing (RFC 4733)."""

    dropped: str | None = None
    digit: str | None = None


@dataclass
class CallMedia:
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
    reporter: ReceptionReporter = field(default_factory=ReceptionReporter)
    heard_report: ReportBlock | None = None  # the caller's latest report on our stream (what it decodes)

    def sending(self) -> tuple[str, int] | None:
        """Where our RTP goes now, or None: nothing to a caller who holds, and nothing to an address the latch
        does not allow."""
        if self.neg.direction in ("sendonly", "inactive"):
            return None
        return self.latch.rtp_target()

    def receive_rtp(self, data: bytes, addr: tuple[str, int], now: float) -> RtpOutcome:
        verdict = self.latch.on_rtp(data, addr, self.srtp.unprotect if self.srtp is not None else None)
        pkt = verdict.packet
        if pkt is None:
            return RtpOutcome(dropped=verdict.reason)
        if self.neg.dtmf_pt is not None and pkt.payload_type == self.neg.dtmf_pt:
            return RtpOutcome(digit=self.dtmf.push(pkt))
        if pkt.payload_type == self.neg.codec.payload_type:
            self.receiver.push(pkt, now)
        return RtpOutcome()

    def receive_rtcp(self, data: bytes, addr: tuple[str, int], now: float) -> str | None:
        """Take one RTCP datagram; the reason it was dropped, or None."""
        # The source is checked before anything is parsed or decrypted: a stranger never reaches the SRTCP state.
        if not self.latch.rtcp_source_ok(addr):
            self.latch.on_rtcp(addr, None)
            return "rtcp_foreign"
        try:
            if self.srtp is not None:
                data = self.srtp.unprotect_rtcp(data)
            packets = parse_compound(data)
        except SrtpError:
            self.latch.dropped["srtcp_auth"] += 1
            return "srtcp_auth"
        except RtcpError:
            self.latch.dropped["bad_packet"] += 1
            return "bad_packet"
        if not self.latch.on_rtcp(addr, rtcp_sender(packets)):
            return "rtcp_foreign"
        for packet in packets:
            self.reporter.on_packet(packet, now)
            if isinstance(packet, (SenderReport, ReceiverReport)):
                self.heard_report = next((b for b in packet.reports if b.ssrc == self.back.ssrc), self.heard_report)
        return None

    def receiver_report(self, cname: str, now: float) -> tuple[bytes, tuple[str, int]] | None:
        """The RTCP receiver report due now (RFC 3550 §6.4.2), protected if SRTP, and where it goes; None while
        the latch allows no RTCP target or the RTCP send budget is spent."""
        target = self.latch.rtcp_target()
        if target is None or not self.rtcp_budget.take(now):
            return None
        block = self.reporter.report_block(self.receiver.stats, now)
        data = build_rr(self.back.ssrc, [block] if block is not None else [], cname)
        return (self.srtp.protect_rtcp(data) if self.srtp is not None else data), target
