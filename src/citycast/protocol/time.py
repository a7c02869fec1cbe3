"""Time service messages: the request a clock client sends and the reply a time responder writes.

Where they travel and who may ask: docs/protocol.md "Subjects" (`<prefix>.time[.<zone>][.site.<site>]`); their
bytes and meaning: docs/protocol.md "Time service". Both ends (`citycast.clock.service.TimeResponder` and
`ClockSync`) encode and decode here; when to stamp and what the stamps mean stays in `citycast.clock`.

    request (8 bytes)   t1: the client's clock when it wrote the request (i64, big-endian, ns)
    reply  (24 bytes)   t2: the responder's clock when the request reached its host (i64)
                        t3: the responder's clock when it wrote the reply (i64)
                        the request's 8 bytes echoed, so a late answer is never taken for the current one

Anything of another size is not a time message (`TimeMessageError`): a responder ignores it, a client drops it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
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

    def __post_init__(self) -> None:
        _check_i64("t1", self.t1)

    def encode(self) -> bytes:
        return _REQUEST.pack(self.t1)

    @classmethod
    def decode(cls, data: bytes) -> TimeRequest:
        if len(data) != REQUEST_SIZE:
            raise TimeMessageError(f"a time request is {REQUEST_SIZE} bytes, got {len(data)}")
        return cls(_REQUEST.unpack(data)[0])

    def reply(self, t2: int, t3: int) -> TimeReply:
        """The reply to this request, stamped `t2` (request in) and `t3` (reply out) by the responder."""
        return TimeReply(t1=self.t1, t2=t2, t3=t3)

    def reply_bytes(self, t2: int, t3: int) -> bytes:
        """`reply(t2, t3).encode()` in a tenth of the time: a responder reads t3 just before this, and every µs
        between the stamp and the socket is an error in what the client learns."""
        try:
            return _REPLY.pack(t2, t3, self.t1)
        except struct.error:
            raise TimeMessageError(f"t2 {t2!r} and t3 {t3!r} must be i64 nanoseconds") from None


@dataclass(frozen=True, slots=True)
class TimeReply:
    t1: int  # echoed from the request: which exchange this answers
    t2: int  # the responder's clock when the request reached its host
    t3: int  # the responder's clock when it wrote the reply

    def __post_init__(self) -> None:
        _check_i64("t1", self.t1)
        _check_i64("t2", self.t2)
        _check_i64("t3", self.t3)

    def encode(self) -> bytes:
        return _REPLY.pack(self.t2, self.t3, self.t1)

    @classmethod
    def decode(cls, data: bytes) -> TimeReply:
        if len(data) != REPLY_SIZE:
            raise TimeMessageError(f"a time reply is {REPLY_SIZE} bytes, got {len(data)}")
        t2, t3, t1 = _REPLY.unpack(data)
        return cls(t1=t1, t2=t2, t3=t3)
