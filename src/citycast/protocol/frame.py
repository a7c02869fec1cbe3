"""The audio frame: one NATS message carrying 1–4 Opus packets, a small header and an Ed25519 signature.

On the bus: `<prefix>.audio.<channel>` from ingest to the sites, `<prefix>.talkback.<site>` from a site's microphone
to the hub. Wire format (big-endian; docs/protocol.md "Frame", whose example a test decodes against this module)::

    off size field
    0   2    magic b"CC"
    2   1    version = 1
    3   1    packet_count (1..4); bit 0x80: a delay schedule follows the header
    4   4    channel (u32 field; a channel is 0..CHANNEL_MAX = 65535, see citycast.protocol.channel)
    8   4    stream (u32): random per ingest session
    12  8    seq (u64) of the first packet; packet i has seq + i
    20  8    ts_ns (i64): broadcast-clock time of the first sample of the first packet
    28  4    packet_ns (u32): duration of one packet
    32  8    key_id: SHA-256(raw public key)[:8]
    40  24   only with flag 0x80: the channel's delay schedule (citycast.protocol.delay)
    ..  ...  packet_count x (u16 length, 1..1275, then the Opus packet)
    end-64 64 Ed25519 signature over every byte before it

`parse_frame` checks structure only; `FrameVerifier.verify` adds the key and signature checks. What a receiver
then does (freshness, replay) is `is_fresh` and `ReplayWindow`, in that order, and only for verified frames.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError as NaclBadSignature
from nacl.signing import VerifyKey

from citycast.media.audio import FRAME_NS
from citycast.media.keys import KEY_ID_SIZE, PrivateKey, PublicKey, key_id
from citycast.protocol.channel import CHANNEL_MAX, CHANNEL_MIN
from citycast.protocol.delay import DELAY_SCHEDULE_SIZE, DelaySchedule

__all__ = [
    "DELAY_FLAG",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_FRAME_SIZE",
    "MAX_PACKETS",
    "MAX_PACKET_BYTES",
    "MAX_PACKET_NS",
    "MIN_FRAME_SIZE",
    "SIGNATURE_SIZE",
    "VERSION",
    "BadSignature",
    "Frame",
    "FrameError",
    "FrameSigner",
    "FrameVerifier",
    "MalformedFrame",
    "ReplayWindow",
    "UntrustedKey",
    "is_fresh",
    "pack_frame_body",
    "parse_frame",
]

MAGIC = b"CC"
VERSION = 1
MAX_PACKETS = 4
MAX_PACKET_BYTES = 1275  # RFC 6716: the largest Opus frame
MAX_PACKET_NS = 120_000_000  # RFC 6716: the longest Opus packet
SIGNATURE_SIZE = 64
DELAY_FLAG = 0x80  # in the packet_count byte: the frame carries its channel's delay schedule

_HEADER = struct.Struct(">2sBBIIQqI8s")
_U16 = struct.Struct(">H")
HEADER_SIZE = _HEADER.size  # 40
MIN_FRAME_SIZE = HEADER_SIZE + 2 + 1 + SIGNATURE_SIZE  # 107
MAX_FRAME_SIZE = HEADER_SIZE + DELAY_SCHEDULE_SIZE + MAX_PACKETS * (2 + MAX_PACKET_BYTES) + SIGNATURE_SIZE  # 5236

_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1

assert HEADER_SIZE == 40


class FrameError(ValueError):
    """A frame was refused. ``str(e)`` says why."""


class MalformedFrame(FrameError):
    """The bytes are not a well-formed frame (size, magic, version, counts, lengths, field ranges)."""


class UntrustedKey(FrameError):
    """The frame names a key this receiver does not trust."""


class BadSignature(FrameError):
    """The signature does not match the frame's bytes under the named (trusted) key."""


@dataclass(frozen=True, slots=True)
class Frame:
    channel: int
    stream: int
    seq: int
    ts_ns: int
    packet_ns: int
    key_id: bytes
    packets: tuple[bytes, ...]
    delay: DelaySchedule | None = None  # the channel's playout delay schedule, signed with the audio

    @property
    def end_ns(self) -> int:
        """Broadcast time just after the last sample of the last packet."""
        return self.ts_ns + self.packet_ns * len(self.packets)

    @property
    def duration_ns(self) -> int:
        return self.packet_ns * len(self.packets)

    def packet_ts(self, i: int) -> int:
        """Broadcast time of the first sample of packet ``i``."""
        self._check_index(i)
        return self.ts_ns + self.packet_ns * i

    def packet_seq(self, i: int) -> int:
        """Sequence number of packet ``i``."""
        self._check_index(i)
        return self.seq + i

    def _check_index(self, i: int) -> None:
        if not 0 <= i < len(self.packets):
            raise IndexError(f"packet index {i} out of range for a frame of {len(self.packets)} packets")


def _field_problem(frame: Frame) -> str | None:
    """Why ``frame`` cannot be put on the wire, or None. Packet contents are checked by the caller."""
    n = len(frame.packets)
    if not 1 <= n <= MAX_PACKETS:
        return f"packet_count {n} outside 1..{MAX_PACKETS}"
    if not CHANNEL_MIN <= frame.channel <= CHANNEL_MAX:
        return f"channel {frame.channel} outside {CHANNEL_MIN}..{CHANNEL_MAX}"
    if not 0 <= frame.stream <= _U32_MAX:
        return f"stream {frame.stream} outside u32"
    if not 0 <= frame.seq <= _U64_MAX - (n - 1):
        return f"seq {frame.seq} (+{n - 1}) outside u64"
    if not 0 < frame.packet_ns <= MAX_PACKET_NS:
        return f"packet_ns {frame.packet_ns} outside 1..{MAX_PACKET_NS}"
    if frame.ts_ns < _I64_MIN or frame.end_ns > _I64_MAX:
        return f"ts_ns {frame.ts_ns} (end {frame.end_ns}) outside i64"
    if len(frame.key_id) != KEY_ID_SIZE:
        return f"key_id must be {KEY_ID_SIZE} bytes, got {len(frame.key_id)}"
    if frame.delay is not None:
        return frame.delay.problem()
    return None


def pack_frame_body(frame: Frame) -> bytes:
    """The bytes the signature covers: header and packets, everything but the signature.

    Raises `ValueError` if a field is out of range. ``parse_frame`` is its exact inverse: one frame has one
    encoding.
    """
    problem = _field_problem(frame)
    if problem is not None:
        raise ValueError(f"cannot encode frame: {problem}")
    parts = [
        _HEADER.pack(
            MAGIC,
            VERSION,
            len(frame.packets) | (DELAY_FLAG if frame.delay is not None else 0),
            frame.channel,
            frame.stream,
            frame.seq,
            frame.ts_ns,
            frame.packet_ns,
            frame.key_id,
        )
    ]
    if frame.delay is not None:
        parts.append(frame.delay.pack())
    for i, packet in enumerate(frame.packets):
        if not 1 <= len(packet) <= MAX_PACKET_BYTES:
            raise ValueError(f"cannot encode frame: packet {i} is {len(packet)} bytes, outside 1..1275")
        parts.append(_U16.pack(len(packet)))
        parts.append(packet)
    return b"".join(parts)


def parse_frame(data: bytes) -> tuple[Frame, bytes]:
    """Structural parse: ``(frame, signature)``. Checks sizes and fields, not the key or the signature.

    Raises `MalformedFrame` for anything that is not exactly one well-formed frame.
    """
    if not isinstance(data, bytes):
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        else:
            raise MalformedFrame(f"expected bytes, got {type(data).__name__}")
    size = len(data)
    if size < MIN_FRAME_SIZE:
        raise MalformedFrame(f"too short: {size} bytes, a frame has at least {MIN_FRAME_SIZE}")
    if size > MAX_FRAME_SIZE:
        raise MalformedFrame(f"too long: {size} bytes, a frame has at most {MAX_FRAME_SIZE}")
    magic, version, count_byte, channel, stream, seq, ts_ns, packet_ns, kid = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MalformedFrame(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise MalformedFrame(f"unsupported version {version}, expected {VERSION}")
    count = count_byte & ~DELAY_FLAG
    if not 1 <= count <= MAX_PACKETS:
        raise MalformedFrame(f"packet_count {count_byte} outside 1..{MAX_PACKETS} (or those + {DELAY_FLAG:#04x})")
    if not count_byte & DELAY_FLAG and size > MAX_FRAME_SIZE - DELAY_SCHEDULE_SIZE:
        raise MalformedFrame(
            f"too long: {size} bytes, a frame without a delay schedule has at most "
            f"{MAX_FRAME_SIZE - DELAY_SCHEDULE_SIZE}"
        )
    body_end = size - SIGNATURE_SIZE
    off = HEADER_SIZE
    delay: DelaySchedule | None = None
    if count_byte & DELAY_FLAG:
        if off + DELAY_SCHEDULE_SIZE > body_end:
            raise MalformedFrame("truncated: no room for the delay schedule the flag announces")
        try:
            delay = DelaySchedule.unpack(data[off : off + DELAY_SCHEDULE_SIZE])
        except ValueError as e:
            raise MalformedFrame(f"delay schedule: {e}") from None
        off += DELAY_SCHEDULE_SIZE
    packets: list[bytes] = []
    for i in range(count):
        if off + 2 > body_end:
            raise MalformedFrame(f"truncated: no length for packet {i} of {count}")
        (length,) = _U16.unpack_from(data, off)
        off += 2
        if not 1 <= length <= MAX_PACKET_BYTES:
            raise MalformedFrame(f"packet {i} length {length} outside 1..{MAX_PACKET_BYTES}")
        if off + length > body_end:
            raise MalformedFrame(f"packet {i} length {length} overruns the frame ({body_end - off} bytes left)")
        packets.append(data[off : off + length])
        off += length
    if off != body_end:
        raise MalformedFrame(f"{body_end - off} unexpected bytes between the last packet and the signature")
    frame = Frame(channel, stream, seq, ts_ns, packet_ns, kid, tuple(packets), delay)
    problem = _field_problem(frame)
    if problem is not None:
        raise MalformedFrame(problem)
    return frame, data[body_end:]


class FrameSigner:
    """Signs frames with one Ed25519 private key (ingest side).

    `delays` holds each channel's playout delay schedule (set by the hub's delay tuner): every frame signed for
    that channel carries it, so a site learns a change of D from the audio itself, under the same signature.
    """

    __slots__ = ("_key", "delays", "key_id", "public_key")

    def __init__(self, private_key: PrivateKey) -> None:
        self._key = private_key
        self.public_key: PublicKey = private_key.public_key()
        self.key_id: bytes = key_id(self.public_key)
        self.delays: dict[int, DelaySchedule] = {}

    def sign(
        self,
        *,
        channel: int,
        stream: int,
        seq: int,
        ts_ns: int,
        packets: Sequence[bytes],
        packet_ns: int = FRAME_NS,
    ) -> bytes:
        """The wire bytes of one signed frame. Raises `ValueError` for out-of-range fields or packets."""
        frame = Frame(
            channel,
            stream,
            seq,
            ts_ns,
            packet_ns,
            self.key_id,
            tuple(bytes(p) for p in packets),
            self.delays.get(channel),
        )
        body = pack_frame_body(frame)
        return body + self._key.sign(body)


class FrameVerifier:
    """Accepts a frame only if it is well formed and signed by one of the trusted keys (site side)."""

    __slots__ = ("_fast", "_keys")

    def __init__(self, trusted: Iterable[PublicKey]) -> None:
        self._keys: dict[bytes, PublicKey] = {}
        for pub in trusted:
            kid = key_id(pub)
            other = self._keys.get(kid)
            if other is not None and other.public_bytes_raw() != pub.public_bytes_raw():
                raise ValueError(f"two trusted keys share key_id {kid.hex()}")
            self._keys[kid] = pub
        # Every site checks 50 signatures a second for months: libsodium (PyNaCl) does it in ~2/3 of the time
        # `cryptography` takes here. Same Ed25519, same keys; `cryptography` still reads and writes key files.
        self._fast = {kid: VerifyKey(pub.public_bytes_raw()) for kid, pub in self._keys.items()}

    @property
    def key_ids(self) -> frozenset[bytes]:
        return frozenset(self._keys)

    def verify(self, data: bytes) -> Frame:
        """Parse, look up the key, check the signature.

        Raises `MalformedFrame`, `UntrustedKey` or `BadSignature`; returns the frame only if all pass.
        """
        frame, signature = parse_frame(data)
        pub = self._fast.get(frame.key_id)
        if pub is None:
            raise UntrustedKey(f"frame signed by untrusted key_id {frame.key_id.hex()}")
        try:
            pub.verify(bytes(data[:-SIGNATURE_SIZE]), signature)
        except NaclBadSignature:
            raise BadSignature(
                f"bad signature on channel {frame.channel} stream {frame.stream} seq {frame.seq} "
                f"(key_id {frame.key_id.hex()})"
            ) from None
        return frame


class _StreamWindow:
    __slots__ = ("bits", "top")

    def __init__(self, top: int) -> None:
        self.top = top  # highest sequence number seen
        self.bits = 1  # bit k set: top - k was seen


class ReplayWindow:
    """Per-stream sliding bitmap (like IPsec/DTLS anti-replay), ``width`` sequence numbers wide, for at most
    ``max_streams`` streams (least recently used forgotten first).

    `check_and_mark` is True only the first time a ``(stream, seq)`` inside or ahead of the window is
    seen; False for a duplicate or for one older than the window. A jump ahead slides the window (a jump of
    ``width`` or more clears it). Feed it verified, fresh packets only: a forged sequence number far ahead
    would otherwise push the genuine stream out of its window. A forgotten stream starts afresh, which is why
    freshness (`is_fresh`) is checked as well: it bounds how old a replayed frame can be.
    """

    __slots__ = ("_mask", "_streams", "max_streams", "width")

    def __init__(self, width: int = 4096, max_streams: int = 16) -> None:
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self.width = width
        self.max_streams = max_streams
        self._mask = (1 << width) - 1
        self._streams: OrderedDict[int, _StreamWindow] = OrderedDict()

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream: object) -> bool:
        return stream in self._streams

    def check_and_mark(self, stream: int, seq: int) -> bool:
        w = self._streams.get(stream)
        if w is None:
            if len(self._streams) >= self.max_streams:
                self._streams.popitem(last=False)
            self._streams[stream] = _StreamWindow(seq)
            return True
        self._streams.move_to_end(stream)
        if seq > w.top:
            shift = seq - w.top
            w.bits = ((w.bits << shift) | 1) & self._mask if shift < self.width else 1
            w.top = seq
            return True
        back = w.top - seq
        if back >= self.width:
            return False
        bit = 1 << back
        if w.bits & bit:
            return False
        w.bits |= bit
        return True


def is_fresh(frame: Frame, now_bt_ns: int, *, max_age_ns: int, max_future_ns: int) -> bool:
    """True if the frame still has audio to play (it ends after ``now - max_age``) and does not start beyond
    ``now + max_future``. A recorded frame re-sent later is stale."""
    return frame.end_ns > now_bt_ns - max_age_ns and frame.ts_ns <= now_bt_ns + max_future_ns
