"""Local clocks: what a site's own oscillator reads.

On one machine every process shares one system clock, which would make sync trivially perfect. Benchmarks and
simulations therefore give each site a `SkewedClock`: the system clock plus an offset and a rate error the agent
does not know. Everything above this module only sees `Clock.now_ns()`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    """A source of local time in nanoseconds.

    `at(system_ns)` is the reading at an instant given on the system clock: the kernel stamps packets and the
    sound card's timing in system time, and a simulated site must see those instants through its own clock.
    """

    def now_ns(self) -> int: ...

    def at(self, true_ns: int) -> int: ...


class SystemClock:
    """The machine's realtime clock; on the hub this *is* the broadcast clock."""

    def now_ns(self) -> int:
        return time.time_ns()

    def at(self, true_ns: int) -> int:
        return true_ns


@dataclass(frozen=True)
class SkewedClock:
    """System clock plus a fixed offset and a rate error, as a cheap oscillator would read.

    `at(true_ns)` gives the reading at a given instant of the true (system) clock; simulations use it to
    stamp events that happen at a known true time (a timed sink's DAC instant, for example).
    """

    offset_ns: int = 0
    ppm: float = 0.0
    ref_ns: int = field(default_factory=time.time_ns)

    def at(self, true_ns: int) -> int:
        return true_ns + self.offset_ns + round((true_ns - self.ref_ns) * self.ppm * 1e-6)

    def true_of(self, local_ns: int) -> int:
        """Inverse of `at` (to within a nanosecond)."""
        k = 1.0 + self.ppm * 1e-6
        return self.ref_ns + round((local_ns - self.offset_ns - self.ref_ns) / k)

    def now_ns(self) -> int:
        return self.at(time.time_ns())

    @classmethod
    def random(cls, rng: random.Random, max_offset_s: float = 2.0, max_ppm: float = 100.0) -> SkewedClock:
        return cls(
            offset_ns=round(rng.uniform(-max_offset_s, max_offset_s) * 1e9),
            ppm=rng.uniform(-max_ppm, max_ppm),
        )
