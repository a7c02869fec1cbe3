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

    def live_seq(self, next_seq: int, captured_ns: int) -> int | None:
        """The sequence number for a live block whose first sample was captured at `captured_ns`, when
        `next_seq` is the next free one; None when the block must be dropped.

        A sound card keeps its own time: its stream can stall or lose samples (PulseAudio's input does for
        about a second after it starts) and its clock drifts from the broadcast clock. Counting samples alone
        would then stamp frames ever further from when they were spoken. So a block whose capture time is a
        whole frame or more after its slot takes a later slot (the gap is audio that never came), and one a
        whole frame or more before it is dropped: every stamp stays within one frame of its capture time.
        """
        slip = captured_ns - self.ts_of(next_seq)
        if slip >= self.packet_ns:
            return next_seq + slip // self.packet_ns
        if slip <= -self.packet_ns:
            return None
        return next_seq


TWO_PACKETS_FROM_NS = 200_000_000


def packets_for_delay(delay_ns: int) -> int:
    """Opus packets per bus message for a channel played `delay_ns` (D) after its stamps, when the operator did not
    choose: two on a long-haul channel (D ≥ 200 ms), one below. Two halve the messages every site takes in and
    the signatures it checks (its largest costs after rendering, docs/benchmarks.md), and the first packet waits
    20 ms for the second: a tenth of a long-haul D, but a quarter of a LAN's 80 ms."""
    return 2 if delay_ns >= TWO_PACKETS_FROM_NS else 1
