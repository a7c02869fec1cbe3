"""The playout delay D as a signed schedule: "D goes from `old` to `new`, starting at stream time `from`, over
`ramp` of stream time" (docs/protocol.md "Delay schedule").

A change of D is not a per-site reaction: the hub decides it, and the ingest key signs it inside every frame of
the channel (`citycast.protocol.frame`, flag 0x80 of the packet_count byte), so a stranger on the bus cannot
change it and every site reads the same schedule. The schedule defines D as a function of *stream* time m (the
broadcast timestamp a sample was stamped with): D(m) = old before `from`, new after `from + ramp`, linear between.
The sample stamped m plays at broadcast time m + D(m). While D rises by Δ over the ramp, the stream is read
Δ/ramp slower (stretched), while it falls, faster: a gentle resampling, never a jump and never a gap, and a pure
function of the frames, so every site plays the same sample at the same instant throughout.

Integers in ns everywhere, so every site computes exactly the same positions.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from citycast.media.playout import DelayCurve

__all__ = [
    "DELAY_SCHEDULE_SIZE",
    "MAX_DELAY_NS",
    "MAX_RAMP_NS",
    "MAX_STRETCH",
    "DelayCurve",
    "DelaySchedule",
]

_SCHEDULE = struct.Struct(">qIIQ")
DELAY_SCHEDULE_SIZE = _SCHEDULE.size  # 24
MAX_DELAY_NS = 4_000_000_000  # no channel waits longer than 4 s; u32 ns holds 4.29 s
MAX_RAMP_NS = 600_000_000_000  # ten minutes: a change of D never takes longer
# The ramp is at least 20 x the change: the stream is never read more than 5 % off its rate (the hub's tuner
# uses 0.5 to 1 %, which speech carries without anyone noticing).
MAX_STRETCH = 0.05

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class DelaySchedule(DelayCurve):
    """A `DelayCurve` as it travels in frames: checked, packed, unpacked."""

    def problem(self) -> str | None:
        """Why this schedule cannot be carried or followed, or None."""
        for name, d in (("old_delay_ns", self.old_delay_ns), ("new_delay_ns", self.new_delay_ns)):
            if not 0 <= d <= MAX_DELAY_NS:
                return f"{name} {d} outside 0..{MAX_DELAY_NS}"
        if not 0 <= self.ramp_ns <= MAX_RAMP_NS:
            return f"ramp_ns {self.ramp_ns} outside 0..{MAX_RAMP_NS}"
        if not _I64_MIN <= self.from_ts_ns <= _I64_MAX - self.ramp_ns:
            return f"from_ts_ns {self.from_ts_ns} (+ramp) outside i64"
        change = abs(self.new_delay_ns - self.old_delay_ns)
        if change and change > self.ramp_ns * MAX_STRETCH:
            return f"a change of {change} ns needs a ramp of at least {change / MAX_STRETCH:.0f} ns, not {self.ramp_ns}"
        return None

    def pack(self) -> bytes:
        problem = self.problem()
        if problem is not None:
            raise ValueError(f"cannot encode delay schedule: {problem}")
        return _SCHEDULE.pack(self.from_ts_ns, self.old_delay_ns, self.new_delay_ns, self.ramp_ns)

    @classmethod
    def unpack(cls, data: bytes) -> DelaySchedule:
        """The exact inverse of `pack`. Raises `ValueError` for the wrong size or a schedule `problem` names."""
        if len(data) != DELAY_SCHEDULE_SIZE:
            raise ValueError(f"a delay schedule is {DELAY_SCHEDULE_SIZE} bytes, got {len(data)}")
        schedule = cls(*_SCHEDULE.unpack(data))
        problem = schedule.problem()
        if problem is not None:
            raise ValueError(problem)
        return schedule
