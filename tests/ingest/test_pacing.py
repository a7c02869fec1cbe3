from __future__ import annotations

from citycast.ingest.pacing import FramePacer


def test_timestamps_follow_the_sample_count_for_hours() -> None:
    p = FramePacer(ts0_ns=1_000_000_000_000, packets_per_message=2)
    seq = 4 * 3600 * 50  # four hours of 20 ms packets
    assert p.ts_of(seq) == 1_000_000_000_000 + 4 * 3600 * 1_000_000_000
    assert p.due_ns(10, 2) == p.ts_of(12)  # a message leaves when its last packet's samples exist


def test_aligned_start_is_on_the_grid_and_after_now() -> None:
    start = FramePacer.aligned_start(1_234_567_890_123, grid_ns=100_000_000, margin_ns=50_000_000)
    assert start % 100_000_000 == 0
    assert start > 1_234_567_890_123 + 50_000_000
