"""The clock estimator's simulated world, shared by the estimator tests: a site with a wrong clock exchanging
with a responder over a path model, in simulated time (no real clock, no sleeping)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from citycast.clock.estimator import ClockEstimator
from citycast.clock.local import SkewedClock

US = 1_000
MS = 1_000_000
S = 1_000_000_000
T0 = 1_700_000_000 * S
HOLD = 20 * US  # responder's time between t2 and t3

Path = Callable[[random.Random], tuple[int, int]]


def loopback_path(rng: random.Random) -> tuple[int, int]:
    """Asymmetric and jittery: up 0.1-5 ms, down 0.05-0.3 ms, 1 % of requests delayed 50 ms."""
    up = rng.uniform(0.1, 5.0) * MS
    down = rng.uniform(0.05, 0.3) * MS
    if rng.random() < 0.01:
        up += 50 * MS
    return round(up), round(down)


def lan_path(rng: random.Random) -> tuple[int, int]:
    """A site beside its city server (or on one machine): 30-300 µs each way."""
    return round(rng.uniform(0.03, 0.3) * MS), round(rng.uniform(0.03, 0.3) * MS)


def wan_path(rng: random.Random) -> tuple[int, int]:
    """60-80 ms each way, 1 % of requests delayed a further 200-400 ms (a lost packet's retransmission)."""
    up = rng.uniform(60, 80) * MS
    down = rng.uniform(60, 80) * MS
    if rng.random() < 0.01:
        up += rng.uniform(200, 400) * MS
    return round(up), round(down)


# the unobservable part: half the difference of the two minimum one-way delays
LOOPBACK_ASYMMETRY = (0.1 - 0.05) / 2 * MS


@dataclass
class Sim:
    """A site exchanging with the hub every `next_interval_ns()` (or a fixed interval), in simulated time."""

    path: Path
    seed: int
    offset_ns: int
    ppm: float
    estimator: ClockEstimator = field(default_factory=ClockEstimator)
    fixed_interval_ns: int | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.clock = SkewedClock(offset_ns=self.offset_ns, ppm=self.ppm, ref_ns=T0)
        self.now = T0  # true (broadcast) time
        self.next_exchange = T0

    def exchange(self) -> None:
        up, down = self.path(self.rng)
        t1 = self.clock.at(self.now)
        t2 = self.now + up
        t3 = t2 + HOLD
        t4 = self.clock.at(t3 + down)
        self.estimator.add_sample(t1, t2, t3, t4)
        step = self.fixed_interval_ns or self.estimator.next_interval_ns()
        self.next_exchange = self.now + step

    def error_ns(self, true_ns: int | None = None) -> int:
        t = self.now if true_ns is None else true_ns
        return self.estimator.to_broadcast(self.clock.at(t)) - t

    def run(self, seconds: float, *, exchanging: bool = True, tick_ns: int = S) -> list[int]:
        """Advance; return the error at each tick (ticks fall between exchanges, never on them)."""
        end = self.now + round(seconds * S)
        errors: list[int] = []
        next_tick = self.now + tick_ns // 2
        while self.now < end:
            if exchanging and self.next_exchange <= next_tick:
                self.now = self.next_exchange
                self.exchange()
            else:
                self.now = next_tick
                next_tick += tick_ns
                errors.append(self.error_ns())
        if not exchanging:
            self.next_exchange = self.now
        return errors


def quantile(values: list[int], q: float) -> float:
    ordered = sorted(abs(v) for v in values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])
