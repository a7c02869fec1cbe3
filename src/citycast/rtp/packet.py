"""RTP packets (RFC 3550 §5.1): strict parsing and building, CSRC list, header extension and padding.

Parsing is strict because the input comes off an open UDP port: anything that is not a well-formed RTP version 2
packet raises `RtpError` (a `ValueError`) with a message saying what was wrong, and the caller drops it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER_SIZE = 12
MAX_PACKET = 65_535
# With rtcp-mux (RFC 5761 §4) RTCP SR/RR/SDES/BYE/APP (200–204) read as payload types 72–76 with the marker bit;
# an RTP stream must never use them, so such a datagram is RTCP, not media.
RTCP_LOOKALIKE_TYPES = range(72, 77)


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet, or fields that cannot be encoded."""


@dataclass(frozen=True, slots=True)
class RtpExtension:
    """A header extension (RFC 3550 §5.3.1): 16-bit profile-defined value and data (a multiple of 4 bytes)."""

    profile: int
    data: bytes


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: RtpExtension | None = None
    padding: int = 0
    """Padding bytes after the payload, counting the final count byte (0 = no padding bit)."""
    version: int = 2

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one RTP datagram; raise `RtpError` naming the first problem found."""
        n = len(data)
        if n < HEADER_SIZE:
            raise RtpError(f"RTP packet too short: {n} bytes, the fixed header is {HEADER_SIZE}")
        if n > MAX_PACKET:
            raise RtpError(f"RTP packet too long: {n} bytes")
        b0, b1, seq, timestamp, ssrc = struct.unpack_from("!BBHII", data)
        version = b0 >> 6
        if version != 2:
            raise RtpError(f"RTP version must be 2, not {version}")
        payload_type = b1 & 0x7F
        if payload_type in RTCP_LOOKALIKE_TYPES:
            raise RtpError(f"payload type {payload_type} is RTCP packet type {payload_type + 128}, not RTP")
        cc = b0 & 0x0F
        offset = HEADER_SIZE + 4 * cc
        if n < offset:
            raise RtpError(f"RTP packet of {n} bytes cannot hold its {cc} CSRCs")
        csrc = struct.unpack_from(f"!{cc}I", data, HEADER_SIZE) if cc else ()
        extension = None
        if b0 & 0x10:
            if n < offset + 4:
                raise RtpError("RTP extension bit set but no room for the extension header")
            profile, words = struct.unpack_from("!HH", data, offset)
            end = offset + 4 + 4 * words
            if n < end:
                raise RtpError(f"RTP extension of {words} words overruns the {n}-byte packet")
            extension = RtpExtension(profile, bytes(data[offset + 4 : end]))
            offset = end
        padding = 0
        if b0 & 0x20:
            padding = data[-1]
            if padding == 0:
                raise RtpError("RTP padding bit set but the padding count is 0")
            if n - offset < padding:
                raise RtpError(f"RTP padding count {padding} exceeds the {n - offset} bytes after the header")
        payload = bytes(data[offset : n - padding])
        return cls(
            payload_type=payload_type,
            seq=seq,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=payload,
            marker=bool(b1 & 0x80),
            csrc=tuple(csrc),
            extension=extension,
            padding=padding,
            version=version,
        )

    def build(self) -> bytes:
        """Serialise; raise `RtpError` for a field out of range (the result always parses back to `self`)."""
        if self.version != 2:
            raise RtpError(f"only RTP version 2 can be built, not {self.version}")
        if not 0 <= self.payload_type <= 127:
            raise RtpError(f"payload type {self.payload_type} out of range 0..127")
        if self.payload_type in RTCP_LOOKALIKE_TYPES:
            raise RtpError(f"payload type {self.payload_type} collides with RTCP (RFC 5761 §4)")
        if not 0 <= self.seq <= 0xFFFF:
            raise RtpError(f"sequence number {self.seq} out of range 0..65535")
        for name, value in (("timestamp", self.timestamp), ("ssrc", self.ssrc), *(("csrc", c) for c in self.csrc)):
            if not 0 <= value <= 0xFFFFFFFF:
                raise RtpError(f"{name} {value} out of range for 32 bits")
        if len(self.csrc) > 15:
            raise RtpError(f"at most 15 CSRCs, not {len(self.csrc)}")
        if not 0 <= self.padding <= 255:
            raise RtpError(f"padding {self.padding} out of range 0..255")
        b0 = 0x80 | len(self.csrc) | (0x20 if self.padding else 0) | (0x10 if self.extension else 0)
        parts = [struct.pack("!BBHII", b0, self.payload_type | (0x80 if self.marker else 0), self.seq,
                             self.timestamp, self.ssrc)]  # fmt: skip
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension is not None:
            ext = self.extension
            if not 0 <= ext.profile <= 0xFFFF:
                raise RtpError(f"extension profile {ext.profile} out of range 0..65535")
            if len(ext.data) % 4 or len(ext.data) > 4 * 0xFFFF:
                raise RtpError(f"extension data must be a multiple of 4 bytes (≤ 262140), not {len(ext.data)}")
            parts.append(struct.pack("!HH", ext.profile, len(ext.data) // 4) + ext.data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes([self.padding]))
        data = b"".join(parts)
        if len(data) > MAX_PACKET:
            raise RtpError(f"RTP packet would be {len(data)} bytes, more than {MAX_PACKET}")
        return data
