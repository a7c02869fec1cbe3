"""One served clock from several estimates of the broadcast clock, with no step when the source changes (sans-IO).

A city's second time responder serves the first responder's clock (learnt over the city's LAN) while that one
answers, and its own estimate of the hub's clock when it does not. The two estimates differ by the long-haul
paths' asymmetry (hundreds of µs to milliseconds); the sites track whatever their responder serves, so a change of
source must not reach them as a step. `Handover` keeps the served clock continuous at the change and slews the
difference out linearly, at no more than `max_slew_ppm` and over no less than `min_slew_ns`, as the city
responder's own estimator slews its corrections.

The caller decides which source is in use (its freshness is I/O) and passes local time in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

_S = 1_000_000_000

Source = Callable[[int], int]  # local ns -> broadcast ns


class Handover:
    def __init__(self, *, max_slew_ppm: float = 20.0, min_slew_ns: int = 60 * _S) -> None:
        if max_slew_ppm <= 0 or min_slew_ns < 0:
            raise ValueError("max_slew_ppm must be positive and min_slew_ns not negative")
        self.max_slew_ppm = max_slew_ppm
        self.min_slew_ns = min_slew_ns
        self.choice: int | None = None
        self.switches = 0
        self._c0 = 0.0  # correction at _t0, added to the chosen source, slewed to 0 by _t0 + _dur
        self._t0 = 0
        self._dur = 0

    def correction_ns(self, local_ns: int) -> float:
        """What is added to the chosen source's reading at `local_ns` (0 once a change has been slewed out)."""
        if self._c0 == 0.0 or self._dur == 0:
            return 0.0
        elapsed = local_ns - self._t0
        if elapsed <= 0:
            return self._c0
        if elapsed >= self._dur:
            self._c0 = 0.0
            return 0.0
        return self._c0 * (1.0 - elapsed / self._dur)

    def to_broadcast(self, local_ns: int, choice: int, sources: Sequence[Source]) -> int:
        """The served broadcast time at `local_ns`, from `sources[choice]`; a new `choice` starts a slew from
        where the previous one left the served clock."""
        if self.choice is None:
            self.choice = choice
        elif choice != self.choice:
            before = sources[self.choice](local_ns) + self.correction_ns(local_ns)
            self._c0 = before - sources[choice](local_ns)
            self._t0 = local_ns
            self._dur = max(self.min_slew_ns, round(abs(self._c0) / (self.max_slew_ppm * 1e-6)))
            self.choice = choice
            self.switches += 1
        return sources[choice](local_ns) + round(self.correction_ns(local_ns))
