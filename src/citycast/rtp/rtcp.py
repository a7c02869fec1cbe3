"""RTCP (RFC 3550 §6): compound packet parsing, receiver/sender report building, and reception-report state.

We send a receiver report about the caller's stream (and a sender report about our return stream) every few
seconds, each in a compound packet with an SDES CNAME as §6.1 requires; we parse what the caller sends to learn its
sender reports (for LSR/DLSR, so the caller can measure the round trip) and its BYE. Parsing is strict: anything
malformed raises `RtcpError` (a `ValueError`); packet types we do not interpret (APP, feedback, XR) are returned
as `UnknownRtcp` rather than rejected, since a compound packet may legitimately carry them.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from citycast.rtp.jitter import ReceiverStats

SR, RR, SDES, BYE, APP = 200, 201, 202, 203, 204
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
SDES_CNAME = 1
MIN_INTERVAL_S = 5.0  # RFC 3550 §6.2 recommended minimum


class RtcpError(ValueError):
    """A malformed RTCP packet, or fields that cannot be encoded."""


@dataclass(frozen=True, slots=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int
    """Lost fraction since the previous report, in 1/256 (0..255)."""
    cumulative_lost: int
    """Signed 24-bit."""
    highest_seq: int
    """Extended highest sequence number received."""
    jitter: int
    """Interarrival jitter in timestamp units."""
    lsr: int = 0
    """Middle 32 bits of the NTP timestamp of the last SR received from this source (0 = none)."""
    dlsr: int = 0
    """Delay since that SR, in 1/65536 s."""


@dataclass(frozen=True, slots=True)
class SenderInfo:
    ntp_timestamp: int
    """64-bit NTP time (32.32 fixed point)."""
    rtp_timestamp: int
    packet_count: int
    octet_count: int

    @property
    def middle32(self) -> int:
        return (self.ntp_timestamp >> 16) & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    sender: SenderInfo
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class SdesChunk:
    ssrc: int
    items: tuple[tuple[int, bytes], ...]
    """(item type, value) pairs; type 1 is CNAME."""

    @property
    def cname(self) -> str | None:
        for kind, value in self.items:
            if kind == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(frozen=True, slots=True)
class SourceDescription:
    chunks: tuple[SdesChunk, ...]


@dataclass(frozen=True, slots=True)
class Bye:
    ssrcs: tuple[int, ...]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class UnknownRtcp:
    packet_type: int
    count: int
    body: bytes


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye | UnknownRtcp


def ntp_from_unix(unix_s: float) -> int:
    """64-bit NTP timestamp for a Unix time in seconds."""
    if unix_s < -NTP_EPOCH_OFFSET:
        raise RtcpError(f"time {unix_s} is before the NTP epoch")
    return round((unix_s + NTP_EPOCH_OFFSET) * 2**32) & 0xFFFFFFFFFFFFFFFF


# --- parsing -----------------------------------------------------------------------------------------------------


def _blocks(body: bytes, offset: int, count: int) -> tuple[ReportBlock, ...]:
    out = []
    for i in range(count):
        ssrc, lost_word, highest, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", body, offset + 24 * i)
        cumulative = lost_word & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 0x1000000
        out.append(ReportBlock(ssrc, lost_word >> 24, cumulative, highest, jitter, lsr, dlsr))
    return tuple(out)


def _parse_one(pt: int, count: int, body: bytes) -> RtcpPacket:
    if pt in (SR, RR):
        fixed = 24 if pt == SR else 4
        if len(body) < fixed + 24 * count:
            raise RtcpError(f"RTCP {'SR' if pt == SR else 'RR'} with {count} report blocks needs "
                            f"{fixed + 24 * count} bytes, has {len(body)}")  # fmt: skip
        (ssrc,) = struct.unpack_from("!I", body)
        blocks = _blocks(body, fixed, count)
        if pt == RR:
            return ReceiverReport(ssrc, blocks)
        hi, lo, rtp_ts, packets, octets = struct.unpack_from("!IIIII", body, 4)
        return SenderReport(ssrc, SenderInfo((hi << 32) | lo, rtp_ts, packets, octets), blocks)
    if pt == SDES:
        chunks = []
        offset = 0
        for _ in range(count):
            if offset + 4 > len(body):
                raise RtcpError("RTCP SDES chunk runs past the packet")
            (ssrc,) = struct.unpack_from("!I", body, offset)
            offset += 4
            items = []
            while True:
                if offset >= len(body):
                    raise RtcpError("RTCP SDES chunk has no terminating null item")
                kind = body[offset]
                if kind == 0:
                    offset = (offset + 4) & ~3  # the null item, padded to a 32-bit boundary
                    break
                if offset + 2 > len(body) or offset + 2 + body[offset + 1] > len(body):
                    raise RtcpError(f"RTCP SDES item {kind} runs past the packet")
                size = body[offset + 1]
                items.append((kind, bytes(body[offset + 2 : offset + 2 + size])))
                offset += 2 + size
            chunks.append(SdesChunk(ssrc, tuple(items)))
        return SourceDescription(tuple(chunks))
    if pt == BYE:
        if len(body) < 4 * count:
            raise RtcpError(f"RTCP BYE with {count} sources needs {4 * count} bytes, has {len(body)}")
        ssrcs = struct.unpack_from(f"!{count}I", body) if count else ()
        reason = ""
        rest = body[4 * count :]
        if rest:
            if 1 + rest[0] > len(rest):
                raise RtcpError("RTCP BYE reason runs past the packet")
            reason = rest[1 : 1 + rest[0]].decode("utf-8", "replace")
        return Bye(tuple(ssrcs), reason)
    return UnknownRtcp(pt, count, bytes(body))


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Parse an RTCP compound packet (one or more RTCP packets back to back); raise `RtcpError` if malformed."""
    if len(data) < 4:
        raise RtcpError(f"RTCP packet too short: {len(data)} bytes")
    if len(data) % 4:
        raise RtcpError(f"RTCP compound length {len(data)} is not a multiple of 4")
    out: list[RtcpPacket] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            raise RtcpError("RTCP header truncated")
        b0, pt, words = struct.unpack_from("!BBH", data, offset)
        if b0 >> 6 != 2:
            raise RtcpError(f"RTCP version must be 2, not {b0 >> 6}")
        if not 192 <= pt <= 223:
            raise RtcpError(f"RTCP packet type {pt} is outside 192..223 (not RTCP)")
        end = offset + 4 * (words + 1)
        if end > len(data):
            raise RtcpError(f"RTCP packet of {4 * (words + 1)} bytes overruns the {len(data)}-byte datagram")
        body = data[offset + 4 : end]
        if b0 & 0x20:
            if end != len(data):
                raise RtcpError("RTCP padding is only allowed on the last packet of a compound")
            pad = data[end - 1]
            if pad == 0 or pad > len(body):
                raise RtcpError(f"RTCP padding count {pad} is invalid")
            body = body[:-pad]
        out.append(_parse_one(pt, b0 & 0x1F, body))
        offset = end
    return out


# --- building ----------------------------------------------------------------------------------------------------


def _pack(fmt: str, *values: int) -> bytes:
    try:
        return struct.pack(fmt, *values)
    except struct.error as exc:
        raise RtcpError(f"RTCP field out of range: {exc}") from None


def _header(pt: int, count: int, body: bytes) -> bytes:
    if len(body) % 4:
        raise RtcpError("RTCP body must be 32-bit aligned")
    if count > 31:
        raise RtcpError(f"at most 31 items per RTCP packet, not {count}")
    return struct.pack("!BBH", 0x80 | count, pt, len(body) // 4) + body


def _block_bytes(block: ReportBlock) -> bytes:
    if not 0 <= block.fraction_lost <= 255:
        raise RtcpError(f"fraction lost {block.fraction_lost} out of range 0..255")
    cumulative = max(-0x800000, min(0x7FFFFF, block.cumulative_lost)) & 0xFFFFFF
    return _pack("!IIIIII", block.ssrc, (block.fraction_lost << 24) | cumulative,
                 block.highest_seq, block.jitter, block.lsr, block.dlsr)  # fmt: skip


def _sdes(ssrc: int, cname: str) -> bytes:
    value = cname.encode()
    if not 0 < len(value) <= 255:
        raise RtcpError("CNAME must be 1..255 bytes")
    chunk = _pack("!IBB", ssrc, SDES_CNAME, len(value)) + value
    chunk += bytes(4 - len(chunk) % 4)  # the null item, then padding to a 32-bit boundary
    return _header(SDES, 1, chunk)


def build_rr(ssrc: int, blocks: list[ReportBlock] | tuple[ReportBlock, ...], cname: str) -> bytes:
    """A compound packet: RR with `blocks`, then SDES CNAME."""
    body = _pack("!I", ssrc) + b"".join(_block_bytes(b) for b in blocks)
    return _header(RR, len(blocks), body) + _sdes(ssrc, cname)


def build_sr(ssrc: int, sender: SenderInfo, blocks: list[ReportBlock] | tuple[ReportBlock, ...], cname: str) -> bytes:
    """A compound packet: SR about our stream (with report blocks about the caller's), then SDES CNAME."""
    info = _pack("!IIIIII", ssrc, sender.ntp_timestamp >> 32, sender.ntp_timestamp & 0xFFFFFFFF,
                 sender.rtp_timestamp, sender.packet_count & 0xFFFFFFFF, sender.octet_count & 0xFFFFFFFF)  # fmt: skip
    body = info + b"".join(_block_bytes(b) for b in blocks)
    return _header(SR, len(blocks), body) + _sdes(ssrc, cname)


def build_bye(ssrc: int, cname: str, reason: str = "") -> bytes:
    """A compound packet: RR (no blocks), SDES CNAME and BYE, as §6.1 wants a BYE to travel."""
    body = _pack("!I", ssrc)
    if reason:
        text = reason.encode()[:255]
        body += bytes([len(text)]) + text
        body += bytes(-len(body) % 4)
    return build_rr(ssrc, (), cname) + _header(BYE, 1, body)


# --- reception-report state --------------------------------------------------------------------------------------


@dataclass
class ReceptionReporter:
    """Turns a receiver's cumulative statistics into report blocks (RFC 3550 A.3) and remembers the caller's
    last SR for LSR/DLSR. `now` is the caller's monotonic clock in seconds."""

    _expected_prior: int = 0
    _received_prior: int = 0
    _source: int | None = None
    _lsr: int = 0
    _sr_arrival: float | None = None
    rng: random.Random = field(default_factory=random.Random)

    def on_packet(self, packet: RtcpPacket, now: float) -> None:
        """Note an RTCP packet from the peer (only SRs matter here)."""
        if isinstance(packet, SenderReport):
            self._lsr = packet.sender.middle32
            self._sr_arrival = now

    def report_block(self, stats: ReceiverStats, now: float) -> ReportBlock | None:
        """The report block for the interval since the previous call; None before any packet was received."""
        if stats.ssrc is None or not stats.received:
            return None
        if stats.ssrc != self._source:  # a new source: its interval starts at nothing
            self._source = stats.ssrc
            self._expected_prior = self._received_prior = 0
        expected_interval = stats.expected - self._expected_prior
        lost_interval = expected_interval - (stats.received - self._received_prior)
        self._expected_prior, self._received_prior = stats.expected, stats.received
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        dlsr = 0
        if self._sr_arrival is not None:
            dlsr = min(0xFFFFFFFF, max(0, round((now - self._sr_arrival) * 65536)))
        return ReportBlock(
            ssrc=stats.ssrc,
            fraction_lost=fraction,
            cumulative_lost=stats.lost,
            highest_seq=stats.ext_highest_seq & 0xFFFFFFFF,
            jitter=min(0xFFFFFFFF, int(stats.jitter)),
            lsr=self._lsr if self._sr_arrival is not None else 0,
            dlsr=dlsr,
        )

    def next_interval(self) -> float:
        """Seconds to the next report: the 5 s minimum randomised over [0.5, 1.5] and compensated
        (RFC 3550 §6.3.1), so that many calls started together do not report in step."""
        return MIN_INTERVAL_S * self.rng.uniform(0.5, 1.5) / 1.21828
