"""Time service messages: the request a clock client sends and the reply a time responder writes.

Where they travel and who may ask: docs/protocol.md "Subjects" (`<prefix>.time[.<zone>][.site.<site>]`); their
bytes and meaning: docs/protocol.md "Time service". Both ends (`citycast.clock.service.TimeResponder` and
`ClockSync`) encode and decode here; when to stamp and what the stamps mean stays in `citycast.clock`.

    request (8 bytes)   t1: the client's clock when it wrote the request (i64, big-endian, ns)
    reply  (24 bytes)   t2: the responder's clock when the request reached its host (i64)
                        t3: the responder's clock when it wrote the reply (i64)
                        the request's 8 bytes echoed, so a late answer is never taken for the current one

    request (16 bytes)  t1, then flags (i64) = 1: "tell me your correction"
    reply  (32 bytes)   t2, t3, t1 as above, then the correction (i64): what the responder's served clock read
                        minus its own free-running clock at t3

A responder that serves its *estimate* of the broadcast clock (a city responder) serves a curve: each of its
corrections is slewed in over a minute or more. A client that fits a line to such a curve bends away from it (0.5 ms
for many minutes, docs/benchmarks.md "One clock per city"). With the correction, the client fits its line to the
responder's free-running clock (t2 and t3 less the correction), a straight line between two oscillators, and adds
the correction itself, which it follows from one exchange to the next. The hub's correction is 0.

Anything of another size, or flags other than 1, is not a time message (`TimeMessageError`): a responder ignores
it, a client drops it. So a responder of before the correction ignores a 16-byte request; the client
(`citycast.clock.service.ClockSync`) then falls back to plain requests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "CORRECTED_REPLY_SIZE",
    "CORRECTED_REQUEST_SIZE",
    "REPLY_SIZE",
    "REQUEST_SIZE",
    "TimeMessageError",
    "TimeReply",
    "TimeRequest",
]

_REQUEST = struct.Struct(">q")
_REPLY = struct.Struct(">qqq")  # t2, t3, then the request (t1) as it came
REQUEST_SIZE = _REQUEST.size  # 8
REPLY_SIZE = _REPLY.size  # 24
_CORRECTED_REQUEST = struct.Struct(">qq")  # t1, flags
_CORRECTED_REPLY = struct.Struct(">qqqq")  # t2, t3, t1, correction
CORRECTED_REQUEST_SIZE = _CORRECTED_REQUEST.size  # 16
CORRECTED_REPLY_SIZE = _CORRECTED_REPLY.size  # 32
WANTS_CORRECTION = 1  # the one flag there is

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1


class TimeMessageError(ValueError):
    """Bytes that are not a time request or reply, or a field that does not fit its i64. ``str(e)`` says why."""


def _check_i64(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not _I64_MIN <= value <= _I64_MAX:
        raise TimeMessageError(f"{name} must be an i64 of nanoseconds, got {value!r}")


@dataclass(frozen=True, slots=True)
class TimeRequest:
    t1: int  # the client's clock when it wrote the request
    wants_correction: bool = False  # a 16-byte request: answered with the responder's correction

    def __post_init__(self) -> None:
        _check_i64("t1", self.t1)

    def encode(self) -> bytes:
        if self.wants_correction:
            return _CORRECTED_REQUEST.pack(self.t1, WANTS_CORRECTION)
        return _REQUEST.pack(self.t1)

    @classmethod
    def decode(cls, data: bytes) -> TimeRequest:
        if len(data) == CORRECTED_REQUEST_SIZE:
            t1, flags = _CORRECTED_REQUEST.unpack(data)
            if flags != WANTS_CORRECTION:
                raise TimeMessageError(f"a 16-byte time request has flags {WANTS_CORRECTION}, got {flags}")
            return cls(t1, wants_correction=True)
        if len(data) != REQUEST_SIZE:
            raise TimeMessageError(
                f"a time request is {REQUEST_SIZE} or {CORRECTED_REQUEST_SIZE} bytes, got {len(data)}"
            )
        return cls(_REQUEST.unpack(data)[0])

    def reply(self, t2: int, t3: int, correction: int = 0) -> TimeReply:
        """The reply to this request, stamped `t2` (request in) and `t3` (reply out) by the responder; with the
        responder's `correction` at t3 if the request asked for it."""
        return TimeReply(t1=self.t1, t2=t2, t3=t3, correction=correction if self.wants_correction else None)

    def reply_bytes(self, t2: int, t3: int, correction: int = 0) -> bytes:
        """`reply(t2, t3, correction).encode()` in a tenth of the time: a responder reads t3 just before this, and
        every µs between the stamp and the socket is an error in what the client learns."""
        try:
            if self.wants_correction:
                return _CORRECTED_REPLY.pack(t2, t3, self.t1, correction)
            return _REPLY.pack(t2, t3, self.t1)
        except struct.error:
            raise TimeMessageError(
                f"t2 {t2!r}, t3 {t3!r} and correction {correction!r} must be i64 nanoseconds"
            ) from None


@dataclass(frozen=True, slots=True)
class TimeReply:
    t1: int  # echoed from the request: which exchange this answers
    t2: int  # the responder's clock when the request reached its host
    t3: int  # the responder's clock when it wrote the reply
    correction: int | None = None  # its served clock minus its own free-running clock at t3 (if asked for)

    def __post_init__(self) -> None:
        _check_i64("t1", self.t1)
        _check_i64("t2", self.t2)
        _check_i64("t3", self.t3)
        if self.correction is not None:
            _check_i64("correction", self.correction)

    def encode(self) -> bytes:
        if self.correction is not None:
            return _CORRECTED_REPLY.pack(self.t2, self.t3, self.t1, self.correction)
        return _REPLY.pack(self.t2, self.t3, self.t1)

    @classmethod
    def decode(cls, data: bytes) -> TimeReply:
        if len(data) == CORRECTED_REPLY_SIZE:
            t2, t3, t1, correction = _CORRECTED_REPLY.unpack(data)
            return cls(t1=t1, t2=t2, t3=t3, correction=correction)
        if len(data) != REPLY_SIZE:
            raise TimeMessageError(f"a time reply is {REPLY_SIZE} or {CORRECTED_REPLY_SIZE} bytes, got {len(data)}")
        t2, t3, t1 = _REPLY.unpack(data)
        return cls(t1=t1, t2=t2, t3=t3)
