"""DTMF digits from RFC 4733 telephone-events and from SIP INFO bodies.

RFC 4733 §2.5: a sender marks the start of an event with a new RTP timestamp (the first packet carries the marker
bit), repeats packets with the same timestamp and a growing duration while the key is held, and ends with the end
bit set, sending that end packet three times. A digit is therefore one *timestamp*: we report it on the first
packet we see of a new timestamp (start, update or end — whichever survived the network) and ignore every later
packet with that timestamp, so the retransmitted end packets are deduplicated and a lost start packet costs
nothing. A small window of recent event timestamps catches a stale retransmission arriving after the next digit.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from citycast.rtp.packet import RtpPacket

EVENT_CHARS = "0123456789*#ABCD"
_SIGNAL_CODES = {str(i): EVENT_CHARS[i] for i in range(16)}  # dtmf-relay may send "10" for * and "11" for #
RECENT_EVENTS = 16


class DtmfError(ValueError):
    """A malformed telephone-event payload or DTMF INFO body."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        """The DTMF character for events 0–15, None for other events (flash, tones)."""
        return EVENT_CHARS[self.event] if self.event < len(EVENT_CHARS) else None


def parse_event(payload: bytes) -> TelephoneEvent:
    """The first event of a telephone-event payload (RFC 4733 §2.3); raise `DtmfError` if it is too short."""
    if len(payload) < 4:
        raise DtmfError(f"telephone-event payload must be at least 4 bytes, not {len(payload)}")
    event, flags, duration = struct.unpack_from("!BBH", payload)
    return TelephoneEvent(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


class Rfc4733Decoder:
    """Telephone-event packets in (already selected by payload type), each digit out exactly once."""

    def __init__(self) -> None:
        self._recent: deque[tuple[int, int]] = deque(maxlen=RECENT_EVENTS)  # (ssrc, timestamp) reported
        self._last: tuple[int, int, int, int] | None = None  # (ssrc, timestamp, event, duration) of the newest
        self.malformed = 0
        self.digits = 0

    def push(self, pkt: RtpPacket) -> str | None:
        """The digit this packet starts, or None (a repeat of a known event, a non-DTMF event, or malformed)."""
        try:
            ev = parse_event(pkt.payload)
        except DtmfError:
            self.malformed += 1
            return None
        key = (pkt.ssrc, pkt.timestamp)
        if key in self._recent:
            if self._last is not None and self._last[:2] == key:
                self._last = (*key, ev.event, max(self._last[3], ev.duration))
            return None
        last = self._last
        self._recent.append(key)
        self._last = (*key, ev.event, ev.duration)
        # RFC 4733 §2.5.1.3: an event longer than the 16-bit duration continues under a new timestamp that starts
        # where the previous segment's duration ran out; that is the same key press, not a new digit
        continued = last is not None and last[0] == pkt.ssrc and last[2] == ev.event and last[3] == 0xFFFF
        if continued and last is not None and (pkt.timestamp - last[1]) & 0xFFFFFFFF == 0xFFFF:
            return None
        digit = ev.digit
        if digit is not None:
            self.digits += 1
        return digit


def parse_sip_info(content_type: str | None, body: bytes | str) -> str | None:
    """The digit in a SIP INFO body, None when the content type is not a DTMF one (e.g. answer 415).

    `application/dtmf-relay`: lines "Signal=5" and "Duration=160" (the signal may also be "10"/"11" for */#).
    `application/dtmf`: the body is the digit. A DTMF content type with no valid digit raises `DtmfError`.
    """
    if not content_type:
        return None
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime not in ("application/dtmf-relay", "application/dtmf"):
        return None
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if len(text) > 1024:
        raise DtmfError(f"{mime} body too long ({len(text)} characters)")
    if mime == "application/dtmf":
        value = text.strip()
    else:
        value = ""
        for line in text.replace("\r\n", "\n").split("\n"):
            name, sep, rest = line.partition("=")
            if sep and name.strip().lower() == "signal":
                value = rest.strip()
                break
        else:
            raise DtmfError("application/dtmf-relay body has no Signal= line")
    value = value.upper()
    if len(value) == 1 and value in EVENT_CHARS:
        return value
    if mime == "application/dtmf-relay" and value in _SIGNAL_CODES:
        return _SIGNAL_CODES[value]
    raise DtmfError(f"not a DTMF signal: {value[:20]!r}")
