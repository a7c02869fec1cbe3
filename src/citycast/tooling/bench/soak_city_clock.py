"""The city's clock in the long soak: city responder A syncing to the hub over its long haul, as `citycast city`
does (`citycast.hub.timeserver`), in simulated time.

A's free-running clock has its own offset and drift; its estimator of the hub's clock (the gentle one a city
responder runs: slews at 20 ppm at most, over a minute) is fed NTP-style exchanges that cross the long haul on the
leafnode's TCP connection, so a lost segment delays a request or a reply by a retransmission, and a cut of path A
(or of both) leaves A on its own drift. What A served (its estimate of the hub's clock) is kept on a grid over
the whole address; the sites of the soak sync to it, with or without A's correction (docs/protocol.md "Time
service"). Responder B is A's clock plus a constant (it follows A over the city's LAN, `--time-peer`), with a
free-running clock of its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from citycast.clock.local import SkewedClock
from citycast.hub.timeserver import city_estimator

S = 1_000_000_000
MS = 1_000_000
GRID_NS = 100 * MS
HUB_HOLD_NS = 5_000  # the hub responder's time between t2 and t3
RETRY_NS = S  # an exchange lost in a cut is tried again this much later


@dataclass
class CityClock:
    """A's served clock over the address, as its error from the hub's (true) clock on a `GRID_NS` grid, and
    the free-running clocks of A and B."""

    start_ns: int
    error_ns: np.ndarray  # served − true at start_ns + i·GRID_NS
    raws: tuple[SkewedClock, SkewedClock]
    b_offset_ns: int

    def error_at(self, true_ns: int) -> float:
        """A's served clock minus the hub's at `true_ns` (linear between grid points)."""
        x = (true_ns - self.start_ns) / GRID_NS
        i = min(max(int(x), 0), len(self.error_ns) - 2)
        f = min(max(x - i, 0.0), 1.0)
        return float(self.error_ns[i] * (1 - f) + self.error_ns[i + 1] * f)

    def served(self, responder: int, true_ns: int) -> int:
        """What responder 0 (A) or 1 (B) serves at `true_ns`."""
        return true_ns + round(self.error_at(true_ns)) + (self.b_offset_ns if responder == 1 else 0)

    def raw(self, responder: int, true_ns: int) -> int:
        """Responder's free-running clock at `true_ns`."""
        return self.raws[responder].at(true_ns)


def simulate_city_clock(
    *,
    start_ns: int,
    end_ns: int,
    delay_ms: float,
    jitter_ms: float,
    loss: float,
    retransmit_ns: int,
    cuts: list[tuple[int, int]],
    seed: int,
    b_offset_ns: int,
) -> CityClock:
    """A from `start_ns` (the city server started, before the address) to `end_ns`; a lost segment (`loss`) of
    an exchange arrives `retransmit_ns` later (soak.TcpPath's first retransmission); `cuts`: true-time windows
    in which A's path to the hub carries nothing."""
    rng = random.Random(seed * 15485863 + 11)
    raw_a = SkewedClock(round(rng.uniform(-3, 3) * S), rng.uniform(-60, 60), ref_ns=start_ns)
    raw_b = SkewedClock(round(rng.uniform(-3, 3) * S), rng.uniform(-60, 60), ref_ns=start_ns)
    est = city_estimator()

    def one_way() -> int:
        d = round((delay_ms + rng.uniform(-jitter_ms, jitter_ms)) * MS)
        return d + (retransmit_ns if rng.random() < loss else 0)

    n = (end_ns - start_ns) // GRID_NS + 2
    error = np.zeros(n, np.float64)
    next_exchange = start_ns
    first_synced: int | None = None
    for i in range(n):
        g = start_ns + i * GRID_NS
        while next_exchange <= g:
            t = next_exchange
            if any(a <= t < z for a, z in cuts):
                next_exchange += RETRY_NS
                continue
            at2 = t + one_way()
            at3 = at2 + HUB_HOLD_NS
            back = at3 + one_way()
            if any(a <= back < z for a, z in cuts):  # the reply is held until the path returns: too late, dropped
                next_exchange += RETRY_NS
                continue
            est.add_sample(raw_a.at(t), at2, at3, raw_a.at(back))
            next_exchange = t + max(est.next_interval_ns(), back - t)
        if est.synced:
            if first_synced is None:
                first_synced = i
            error[i] = est.to_broadcast(raw_a.at(g)) - g
    if first_synced is None:
        raise ValueError("the city responder never synced to the hub in the simulated time")
    error[:first_synced] = error[first_synced]  # silent until synced: nobody reads those
    return CityClock(start_ns, error, (raw_a, raw_b), b_offset_ns)
