"""SDP (RFC 4566) parsing and the answerer's half of offer/answer (RFC 3264), sans-IO, for hostile input.

`parse_sdp` keeps every line (so `SessionDescription.to_bytes` gives them back) and reads what the hub uses:
``c=``, ``m=``, ``a=rtpmap``, ``a=fmtp``, ``a=ptime``, ``a=sendrecv|sendonly|recvonly|inactive``, with the static
payload types of RFC 3551 (0 PCMU, 8 PCMA, 9 G722…) understood without an rtpmap. `negotiate` picks the first
usable audio stream and, in *our* order of preference, one of PCMU, PCMA, G.722 (8000 on the RTP clock, 16 kHz
audio, RFC 3551 §4.5.2) and Opus (``opus/48000/2``, RFC 7587), plus telephone-event (RFC 4733) if offered.
`build_answer` answers every offered m-line, rejecting the others with port 0 (RFC 3264 §6), with the offer's
payload type numbers.

``Negotiated.direction`` is the offer's direction as the offerer sees it; an old-style hold (``c=0.0.0.0``,
RFC 3264 §8.4) counts as the offerer not receiving. The answer's direction is what the caller asks for,
narrowed to what the offer allows (we never send to a peer that does not receive).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from citycast.rtp.srtp import SdesCrypto, SrtpError, parse_crypto

MAX_SDP = 64 * 1024
MAX_LINES = 1000
MAX_MEDIA = 32
DEFAULT_PTIME_MS = 20

# RFC 3551 table 4: the static audio payload types an offer may use without an rtpmap.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    18: ("G729", 8000, 1),
}

# What we can decode: name → (RTP clock rate, channels) as they must appear in the rtpmap.
SUPPORTED: dict[str, tuple[int, int]] = {"pcmu": (8000, 1), "pcma": (8000, 1), "g722": (8000, 1), "opus": (48000, 2)}
_CANONICAL_NAME = {"pcmu": "PCMU", "pcma": "PCMA", "g722": "G722", "opus": "opus"}

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_RTP_PROTOS = frozenset({"RTP/AVP", "RTP/AVPF"})
_SRTP_PROTOS = frozenset({"RTP/SAVP", "RTP/SAVPF"})  # keyed by SDES a=crypto (RFC 4568); DTLS is not spoken

_LINE_RE = re.compile(r"([a-z])=(.*)")
_RTPMAP_RE = re.compile(r"([0-9]{1,3})[ \t]+([A-Za-z0-9._-]+)/([0-9]{1,7})(?:/([0-9]{1,2}))?[ \t]*")
_FMTP_RE = re.compile(r"([0-9]{1,3})[ \t]+(.*)")
_PTIME_RE = re.compile(r"[ \t]*([0-9]{1,4})(?:\.[0-9]{1,3})?[ \t]*")
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class SdpError(ValueError):
    """A session description that cannot be parsed or answered (a SIP peer gets 488 Not Acceptable Here)."""


@dataclass(frozen=True, slots=True)
class Origin:
    username: str
    session_id: str
    version: str
    nettype: str
    addrtype: str
    address: str


@dataclass(frozen=True, slots=True)
class Connection:
    nettype: str
    addrtype: str
    address: str  # without a /ttl or /count suffix


@dataclass(frozen=True, slots=True)
class RtpMap:
    payload_type: int
    encoding: str
    clock_rate: int
    channels: int = 1


@dataclass(slots=True)
class MediaDescription:
    """One ``m=`` section. ``lines`` holds all its lines (``m=`` first) as ``(type, value)``."""

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int = 1
    connection: Connection | None = None
    rtpmaps: dict[int, RtpMap] = field(default_factory=dict)
    fmtp: dict[str, str] = field(default_factory=dict)
    ptime_ms: float | None = None
    direction: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        """The rtpmap for `payload_type`, or the static RFC 3551 one."""
        found = self.rtpmaps.get(payload_type)
        if found is None and payload_type in STATIC_PAYLOAD_TYPES:
            name, rate, channels = STATIC_PAYLOAD_TYPES[payload_type]
            found = RtpMap(payload_type, name, rate, channels)
        return found


@dataclass(slots=True)
class SessionDescription:
    """A parsed SDP. ``lines`` holds the session-level lines; each media section holds its own."""

    origin: Origin
    session_name: str
    connection: Connection | None = None
    direction: str | None = None
    ptime_ms: float | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        out = [f"{t}={v}" for t, v in self.lines]
        for m in self.media:
            out.extend(f"{t}={v}" for t, v in m.lines)
        return ("\r\n".join(out) + "\r\n").encode()


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """A negotiated codec: ``name`` as in the rtpmap (PCMU, PCMA, G722, opus), RTP clock rate and channels."""

    name: str
    payload_type: int
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None


@dataclass(frozen=True, slots=True)
class Negotiated:
    codec: CodecSpec
    dtmf_pt: int | None
    remote_addr: tuple[str, int]
    ptime_ms: int
    direction: str  # the offer's (the peer's) direction
    media_index: int = 0  # which offered m-line we accepted
    offered: tuple[tuple[str, str, str], ...] = ()  # (media, proto, first format) per offered m-line
    dtmf_clock_rate: int = 8000
    rtcp_port: int | None = None  # a=rtcp (RFC 3605), else RTP + 1
    crypto: SdesCrypto | None = None  # the peer's SRTP key (RTP/SAVP); None: plain RTP


def _parse_connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3:
        raise SdpError(f"malformed c= line {value[:80]!r}: want 'IN IP4 address'")
    nettype, addrtype, address = parts
    if nettype != "IN" or addrtype not in ("IP4", "IP6"):
        raise SdpError(f"unsupported connection {nettype} {addrtype}")
    address = address.split("/", 1)[0]
    if not address:
        raise SdpError("empty connection address")
    return Connection(nettype, addrtype, address)


def _parse_origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6:
        raise SdpError(f"malformed o= line {value[:80]!r}: want 6 fields")
    return Origin(*parts)


def _parse_media(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"malformed m= line {value[:80]!r}: want 'media port proto formats…'")
    media, port_text, proto, *formats = parts
    port_part, slash, count_part = port_text.partition("/")
    if not port_part.isascii() or not port_part.isdigit() or int(port_part) > 65535:
        raise SdpError(f"malformed port {port_text[:20]!r} in m= line")
    port_count = 1
    if slash:
        if not count_part.isascii() or not count_part.isdigit() or not 1 <= int(count_part) <= 65535:
            raise SdpError(f"malformed port count {port_text[:20]!r} in m= line")
        port_count = int(count_part)
    if proto in _RTP_PROTOS or proto.startswith("RTP/"):
        if not formats:
            raise SdpError(f"m= line without payload types: {value[:80]!r}")
        for f in formats:
            if not f.isascii() or not f.isdigit() or int(f) > 127:
                raise SdpError(f"payload type {f[:10]!r} is not a number 0..127")
    return MediaDescription(media, int(port_part), proto, formats, port_count)


def _apply_attribute(value: str, target: SessionDescription | MediaDescription) -> None:
    name, colon, arg = value.partition(":")
    if not name or not _TOKEN_RE.fullmatch(name):
        raise SdpError(f"malformed attribute {value[:80]!r}")
    target.attributes.append((name, arg if colon else None))
    if name in DIRECTIONS and not colon:
        target.direction = name
    elif name == "ptime":
        m = _PTIME_RE.fullmatch(arg)
        if m is None:
            raise SdpError(f"malformed a=ptime {arg[:20]!r}")
        target.ptime_ms = float(arg)
    elif isinstance(target, MediaDescription) and name == "rtpmap":
        m = _RTPMAP_RE.fullmatch(arg)
        if m is None:
            raise SdpError(f"malformed a=rtpmap {arg[:80]!r}: want 'pt name/rate[/channels]'")
        pt, rate = int(m.group(1)), int(m.group(3))
        channels = int(m.group(4)) if m.group(4) else 1
        if pt > 127 or rate == 0 or not 1 <= channels <= 8:
            raise SdpError(f"a=rtpmap {arg[:80]!r} out of range")
        if pt in target.rtpmaps:
            raise SdpError(f"two a=rtpmap lines for payload type {pt}")
        target.rtpmaps[pt] = RtpMap(pt, m.group(2), rate, channels)
    elif isinstance(target, MediaDescription) and name == "fmtp":
        m = _FMTP_RE.fullmatch(arg)
        if m is None:
            raise SdpError(f"malformed a=fmtp {arg[:80]!r}: want 'pt params'")
        target.fmtp.setdefault(m.group(1), m.group(2).strip())


def parse_sdp(data: bytes) -> SessionDescription:
    """A session description; raises `SdpError` with the reason."""
    if len(data) > MAX_SDP:
        raise SdpError(f"SDP of {len(data)} bytes exceeds {MAX_SDP}")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise SdpError(f"SDP is not UTF-8 (byte {exc.start})") from None
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) > MAX_LINES:
        raise SdpError(f"SDP has more than {MAX_LINES} lines")
    if not lines or lines[0].strip() != "v=0":
        raise SdpError("SDP must start with v=0")
    session_lines: list[tuple[str, str]] = []
    origin: Origin | None = None
    session_name: str | None = None
    session_connection: Connection | None = None
    pending_attrs: list[str] = []
    media: list[MediaDescription] = []
    for line in lines:
        m = _LINE_RE.fullmatch(line)
        if m is None:
            raise SdpError(f"malformed SDP line {line[:80]!r}: want 'x=value'")
        kind, value = m.group(1), m.group(2)
        if _CTL_RE.search(value):
            raise SdpError(f"control character in SDP line {line[:80]!r}")
        if kind == "m":
            if len(media) >= MAX_MEDIA:
                raise SdpError(f"more than {MAX_MEDIA} m= lines")
            media.append(_parse_media(value))
        if media:
            section = media[-1]
            section.lines.append((kind, value))
            if kind == "c":
                section.connection = _parse_connection(value)
            elif kind == "a":
                _apply_attribute(value, section)
            continue
        session_lines.append((kind, value))
        if kind == "o":
            if origin is not None:
                raise SdpError("two o= lines")
            origin = _parse_origin(value)
        elif kind == "s":
            session_name = value
        elif kind == "c":
            session_connection = _parse_connection(value)
        elif kind == "a":
            pending_attrs.append(value)
    if origin is None:
        raise SdpError("SDP without an o= line")
    sd = SessionDescription(origin, session_name or "", session_connection, lines=session_lines, media=media)
    for value in pending_attrs:
        _apply_attribute(value, sd)
    return sd


def _direction_of(offer: SessionDescription, m: MediaDescription, address: str) -> str:
    direction = m.direction or offer.direction or "sendrecv"
    try:
        unspecified = ipaddress.ip_address(address).is_unspecified
    except ValueError:
        unspecified = False
    if unspecified:  # old-style hold: the offerer does not want to receive
        direction = {"sendrecv": "sendonly", "recvonly": "inactive"}.get(direction, direction)
    return direction


def _first_crypto(m: MediaDescription) -> tuple[SdesCrypto | None, str]:
    """The first usable ``a=crypto`` of an RTP/SAVP stream, or None and why none is."""
    why = f"{m.proto} without an a=crypto line"
    for name, value in m.attributes:
        if name != "crypto" or value is None:
            continue
        try:
            return parse_crypto(value), ""
        except SrtpError as e:
            why = str(e)
    return None, why


def _rtcp_port(m: MediaDescription) -> int | None:
    """The a=rtcp port (RFC 3605); a malformed one is ignored (RTP + 1 then)."""
    for name, value in m.attributes:
        if name == "rtcp" and value:
            port = value.split()[0]
            if port.isascii() and port.isdigit() and 0 < int(port) <= 65535:
                return int(port)
    return None


def negotiate(offer: SessionDescription, *, prefer: Sequence[str] = ("opus", "G722", "PCMU", "PCMA")) -> Negotiated:
    """Our answer's choices for `offer`: the first audio m-line we can take, our most preferred codec in it.

    Raises `SdpError` ("no common codec", "no audio stream"…), which a user agent answers with 488.
    """
    wanted = [p.lower() for p in prefer if p.lower() in SUPPORTED]
    if not wanted:
        raise SdpError(f"no supported codec among {list(prefer)}")
    offered = tuple((m.media, m.proto, m.formats[0] if m.formats else "0") for m in offer.media)
    reasons: list[str] = []
    for index, m in enumerate(offer.media):
        if m.media != "audio" or m.port == 0:
            continue
        if m.proto not in _RTP_PROTOS | _SRTP_PROTOS:
            reasons.append(f"transport {m.proto} is not supported")
            continue
        crypto: SdesCrypto | None = None
        if m.proto in _SRTP_PROTOS:
            crypto, why = _first_crypto(m)
            if crypto is None:
                reasons.append(why)
                continue
        connection = m.connection or offer.connection
        if connection is None:
            raise SdpError("audio stream without a c= line")
        try:
            ip = ipaddress.ip_address(connection.address)
        except ValueError:
            raise SdpError(f"connection address {connection.address[:80]!r} is not an IP address") from None
        if (ip.version == 4) != (connection.addrtype == "IP4"):
            raise SdpError(f"connection address {connection.address!r} is not {connection.addrtype}")
        candidates: dict[str, CodecSpec] = {}
        dtmf: dict[int, int] = {}  # clock rate → first telephone-event payload type
        for fmt in m.formats:
            pt = int(fmt)
            rtpmap = m.rtpmap(pt)
            if rtpmap is None:
                continue
            name = rtpmap.encoding.lower()
            if name == "telephone-event":
                dtmf.setdefault(rtpmap.clock_rate, pt)
            elif name in SUPPORTED and (rtpmap.clock_rate, rtpmap.channels) == SUPPORTED[name]:
                candidates.setdefault(
                    name, CodecSpec(_CANONICAL_NAME[name], pt, rtpmap.clock_rate, rtpmap.channels, m.fmtp.get(fmt))
                )
        chosen = next((candidates[n] for n in wanted if n in candidates), None)
        if chosen is None:
            reasons.append("no common codec")
            continue
        # RFC 4733 §2.1: telephone-event should run at the codec's clock; take another rate rather than none
        dtmf_pt = dtmf.get(chosen.clock_rate)
        dtmf_rate = chosen.clock_rate
        if dtmf_pt is None and dtmf:
            dtmf_rate, dtmf_pt = next(iter(dtmf.items()))
        ptime = m.ptime_ms if m.ptime_ms is not None else offer.ptime_ms
        ptime_ms = DEFAULT_PTIME_MS if ptime is None or not 10 <= ptime <= 120 else round(ptime)
        return Negotiated(
            codec=chosen,
            dtmf_pt=dtmf_pt,
            remote_addr=(str(ip), m.port),
            ptime_ms=ptime_ms,
            direction=_direction_of(offer, m, connection.address),
            media_index=index,
            offered=offered,
            dtmf_clock_rate=dtmf_rate,
            rtcp_port=_rtcp_port(m),
            crypto=crypto,
        )
    if reasons:
        raise SdpError(reasons[0])
    raise SdpError("no audio stream in the offer")


_ANSWER_FMTP = {"opus": "useinbandfec=1"}  # what we want to receive; the peer's own fmtp describes its side


def _narrow(ours: str, offer: str) -> str:
    """Our direction limited by the offer's: we send only if the peer receives, receive only if it sends."""
    send = ours in ("sendrecv", "sendonly") and offer in ("sendrecv", "recvonly")
    recv = ours in ("sendrecv", "recvonly") and offer in ("sendrecv", "sendonly")
    return {(True, True): "sendrecv", (True, False): "sendonly", (False, True): "recvonly"}.get(
        (send, recv), "inactive"
    )


def build_answer(
    neg: Negotiated,
    *,
    local_ip: str,
    local_port: int,
    session_id: int,
    version: int,
    direction: str = "sendrecv",
    crypto: SdesCrypto | None = None,
) -> bytes:
    """The SDP answer for `neg` (RFC 3264 §6): one m-line per offered m-line, all but ours rejected (port 0)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {DIRECTIONS}")
    ip = ipaddress.ip_address(local_ip)
    if not 0 < local_port <= 65535:
        raise ValueError(f"local_port {local_port} outside 1..65535")
    addrtype = "IP4" if ip.version == 4 else "IP6"
    c = neg.codec
    lines = [
        "v=0",
        f"o=citycast {session_id} {version} IN {addrtype} {ip}",
        "s=citycast",
        f"c=IN {addrtype} {ip}",
        "t=0 0",
    ]
    offered = neg.offered or (("audio", "RTP/AVP", str(c.payload_type)),)
    for index, (media, proto, first) in enumerate(offered):
        if index != neg.media_index:
            lines.append(f"m={media} 0 {proto} {first}")
            continue
        pts = [c.payload_type] + ([neg.dtmf_pt] if neg.dtmf_pt is not None else [])
        lines.append(f"m=audio {local_port} {proto} {' '.join(map(str, pts))}")
        channels = f"/{c.channels}" if c.channels != 1 else ""
        lines.append(f"a=rtpmap:{c.payload_type} {c.name}/{c.clock_rate}{channels}")
        fmtp = _ANSWER_FMTP.get(c.name.lower())
        if fmtp:
            lines.append(f"a=fmtp:{c.payload_type} {fmtp}")
        if neg.dtmf_pt is not None:
            lines.append(f"a=rtpmap:{neg.dtmf_pt} telephone-event/{neg.dtmf_clock_rate}")
            lines.append(f"a=fmtp:{neg.dtmf_pt} 0-15")
        lines.append(f"a=ptime:{neg.ptime_ms}")
        lines.append(f"a={_narrow(direction, neg.direction)}")
        if crypto is not None:
            lines.append(f"a=crypto:{crypto.attribute()}")
    return ("\r\n".join(lines) + "\r\n").encode()
