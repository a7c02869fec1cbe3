"""When each frame of a paced source is due: sans-IO, so a four-hour address can be checked in a blink."""

from __future__ import annotations

from dataclasses import dataclass

from citycast.media.audio import FRAME_NS


@dataclass
class FramePacer:
    """Frame k carries the samples captured over [ts0 + k·20 ms, ts0 + (k+1)·20 ms) on the broadcast clock.

    It cannot leave before its last sample exists, so it is due at the end of that span; with several packets per
    message, the message is due when its last packet is. Timestamps follow the sample count, never the wall
    clock's wobble, so the stream stays sample-exact.
    """

    ts0_ns: int
    packets_per_message: int = 1
    packet_ns: int = FRAME_NS

    def ts_of(self, seq: int) -> int:
        return self.ts0_ns + seq * self.packet_ns

    def due_ns(self, first_seq: int, count: int) -> int:
        return self.ts_of(first_seq + count)

    @staticmethod
    def aligned_start(now_ns: int, grid_ns: int = 100_000_000, margin_ns: int = 0) -> int:
        """The next grid instant after now + margin: streams start on round times, which keeps logs readable."""
        t = now_ns + margin_ns
        return (t // grid_ns + 1) * grid_ns
