"""A mount's timeline: which 20 ms packet goes out next, from the frames heard and the broadcast time now.

Sans-IO (time passed in). The mount runs `hold_ns` behind the broadcast clock: a packet stamped T goes out once
the clock passes T + hold, in timestamp order whatever order the bus delivered it in. Where nothing was heard
for a stretch (no address on air, an idle channel that is silent, frames lost) the stretch goes out as silence,
so the mount never starves and Icecast never drops its listeners (it ends a source that sends nothing for its
source-timeout). A packet that arrives after its slot went out is dropped (`late`), like a late frame at a
site. After a stall longer than `max_catch_up_ns` (the thread was starved) the timeline skips ahead instead of
bursting minutes of audio at Icecast.
"""

from __future__ import annotations

import heapq

from citycast.media.audio import FRAME_NS

__all__ = ["DEFAULT_HOLD_NS", "MountTimeline"]

DEFAULT_HOLD_NS = 200_000_000
"""How far behind the broadcast clock the mount plays: room for the bus's jitter (a frame is published about
one frame ahead of its time and reaches the hub within milliseconds). Listeners' players buffer seconds more."""


class MountTimeline:
    def __init__(self, *, hold_ns: int = DEFAULT_HOLD_NS, max_catch_up_ns: int = 2_000_000_000) -> None:
        if hold_ns < 0 or max_catch_up_ns < FRAME_NS:
            raise ValueError("hold_ns must be >= 0 and max_catch_up_ns at least one frame")
        self.hold_ns = hold_ns
        self.max_catch_up_ns = max_catch_up_ns
        self._queue: list[tuple[int, bytes]] = []  # heap of (ts_ns, packet)
        self._next_ts: int | None = None  # broadcast time of the next slot to go out
        self.played = 0
        self.silent = 0
        self.late = 0
        self.skipped_ns = 0

    @property
    def next_ts_ns(self) -> int | None:
        return self._next_ts

    def push(self, ts_ns: int, packet: bytes) -> None:
        """A 20 ms packet heard on the bus, stamped with the broadcast time of its first sample."""
        if self._next_ts is not None and ts_ns < self._next_ts - FRAME_NS // 2:
            self.late += 1
            return
        if len(self._queue) >= 4096:  # far-future stamps must not grow the queue without end
            self.late += 1
            return
        heapq.heappush(self._queue, (ts_ns, packet))

    def clear(self) -> None:
        """Forget what is queued (the mount switched to another channel); the timeline itself runs on."""
        self._queue.clear()

    def due(self, now_ns: int) -> list[bytes | None]:
        """The packets whose slots have passed by `now_ns` (None: a slot of silence), in order."""
        edge = now_ns - self.hold_ns
        if self._next_ts is None:
            self._next_ts = edge
            return []
        if edge - self._next_ts > self.max_catch_up_ns:
            skip = (edge - self._next_ts) // FRAME_NS * FRAME_NS
            self.skipped_ns += skip
            self._next_ts += skip
        out: list[bytes | None] = []
        while self._next_ts + FRAME_NS <= edge:
            slot = self._next_ts
            while self._queue and self._queue[0][0] < slot - FRAME_NS // 2:
                heapq.heappop(self._queue)
                self.late += 1
            if self._queue and self._queue[0][0] < slot + FRAME_NS // 2:
                out.append(heapq.heappop(self._queue)[1])
                self.played += 1
            else:
                out.append(None)
                self.silent += 1
            self._next_ts = slot + FRAME_NS
        return out
