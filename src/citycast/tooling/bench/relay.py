"""Sans-IO scheduling core of the WAN emulator: one direction of an emulated path.

A `DelayLine` holds packets in a heap keyed by the instant they are due. Each pushed packet is either dropped
(with probability `loss`) or given a one-way delay drawn uniformly from `[delay - jitter, delay + jitter]`;
because every packet draws its own delay, packets sent closer together than `2 * jitter` can overtake each
other. The line never touches a clock or a file descriptor: callers pass the current time (`now_ns`, any
monotonic nanosecond clock) and collect due packets with `due(now_ns)`. The I/O layer
(`citycast.tooling.bench.wan`) sleeps until `next_due_ns()` and moves bytes between TUN devices.

Memory is bounded: at most `max_queued` packets wait at once; beyond that a packet is tail-dropped (counted
separately as `overflow`, not as random loss), as a router's full queue would.
"""

from __future__ import annotations

import heapq
import math
import random
from array import array
from dataclasses import dataclass

DEFAULT_MAX_QUEUED = 10_000


@dataclass
class LineStats:
    pushed: int = 0
    forwarded: int = 0
    dropped: int = 0
    overflow: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "pushed": self.pushed,
            "forwarded": self.forwarded,
            "dropped": self.dropped,
            "overflow": self.overflow,
        }


class DelayLine:
    """One direction of an emulated path: uniform random delay, independent random loss."""

    def __init__(
        self,
        delay_ns: int,
        jitter_ns: int = 0,
        loss: float = 0.0,
        *,
        rng: random.Random | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        if delay_ns < 0 or jitter_ns < 0 or jitter_ns > delay_ns:
            raise ValueError("need 0 <= jitter <= delay")
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss must be in [0, 1)")
        if max_queued < 1:
            raise ValueError("max_queued must be >= 1")
        self.delay_ns = delay_ns
        self.jitter_ns = jitter_ns
        self.loss = loss
        self.max_queued = max_queued
        self._rng = rng if rng is not None else random.Random()
        # (due_ns, seq, packet): seq breaks ties so bytes are never compared and equal-due packets stay FIFO.
        self._heap: list[tuple[int, int, bytes]] = []
        self._seq = 0
        self.stats = LineStats()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, packet: bytes, now_ns: int) -> bool:
        """Accept a packet arriving at `now_ns`; return True if it was dropped (loss or full queue)."""
        self.stats.pushed += 1
        if self.loss and self._rng.random() < self.loss:
            self.stats.dropped += 1
            return True
        if len(self._heap) >= self.max_queued:
            self.stats.overflow += 1
            return True
        lo = self.delay_ns - self.jitter_ns
        hi = self.delay_ns + self.jitter_ns
        delay = self._rng.randint(lo, hi) if hi > lo else lo
        self._seq += 1
        heapq.heappush(self._heap, (now_ns + delay, self._seq, packet))
        return False

    def next_due_ns(self) -> int | None:
        """When the earliest waiting packet is due, or None if nothing waits."""
        return self._heap[0][0] if self._heap else None

    def due(self, now_ns: int) -> list[bytes]:
        """Remove and return, in due order, every packet due at or before `now_ns`."""
        return [p for _, p in self.due_with_times(now_ns)]

    def due_with_times(self, now_ns: int) -> list[tuple[int, bytes]]:
        """Like `due`, but each packet comes with the instant it was due (to measure lateness)."""
        out: list[tuple[int, bytes]] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ns:
            due_ns, _, packet = heapq.heappop(heap)
            out.append((due_ns, packet))
        self.stats.forwarded += len(out)
        return out


class LatencyRecorder:
    """Bounded record of scheduling lateness (ns): a ring of the most recent samples plus the all-time max."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._ring = array("q", bytes(8 * capacity))
        self._capacity = capacity
        self._n = 0
        self.max_ns = 0

    def add(self, lateness_ns: int) -> None:
        self._ring[self._n % self._capacity] = lateness_ns
        self._n += 1
        if lateness_ns > self.max_ns:
            self.max_ns = lateness_ns

    @property
    def count(self) -> int:
        return self._n

    def percentile_ns(self, q: float) -> int:
        """Nearest-rank percentile (q in [0, 100]) over the retained samples; 0 when empty."""
        n = min(self._n, self._capacity)
        if n == 0:
            return 0
        values = sorted(self._ring[:n])
        rank = max(0, min(n - 1, math.ceil(q / 100.0 * n) - 1))
        return values[rank]
