from __future__ import annotations

from citycast.ingest.pacing import FramePacer, packets_for_delay
from citycast.media.audio import FRAME_NS


def test_timestamps_follow_the_sample_count_for_hours() -> None:
    p = FramePacer(ts0_ns=1_000_000_000_000, packets_per_message=2)
    seq = 4 * 3600 * 50  # four hours of 20 ms packets
    assert p.ts_of(seq) == 1_000_000_000_000 + 4 * 3600 * 1_000_000_000
    assert p.due_ns(10, 2) == p.ts_of(12)  # a message leaves when its last packet's samples exist


def test_aligned_start_is_on_the_grid_and_after_now() -> None:
    start = FramePacer.aligned_start(1_234_567_890_123, grid_ns=100_000_000, margin_ns=50_000_000)
    assert start % 100_000_000 == 0
    assert start > 1_234_567_890_123 + 50_000_000


def test_a_live_block_keeps_its_slot_while_the_card_keeps_time() -> None:
    p = FramePacer(ts0_ns=5_000_000_000)
    # capture-time jitter well inside a frame never moves a block off its slot
    for seq in range(200):
        jitter = (seq * 7_919) % 19_000_000 - 9_500_000
        assert p.live_seq(seq, p.ts_of(seq) + jitter) == seq


def test_a_card_that_lost_samples_moves_its_stamps_to_its_capture_time() -> None:
    p = FramePacer(ts0_ns=5_000_000_000)
    # PulseAudio's input lost ~496 ms after start: the block that should be seq 40 was captured 496 ms late
    slot = p.live_seq(40, p.ts_of(40) + 496_000_000)
    assert slot == 40 + 24
    assert 0 <= p.ts_of(40) + 496_000_000 - p.ts_of(slot) < FRAME_NS


def test_a_block_a_frame_ahead_of_its_slot_is_dropped() -> None:
    p = FramePacer(ts0_ns=5_000_000_000)
    # a card running fast against the broadcast clock: its block would be stamped a frame after it was spoken
    assert p.live_seq(100, p.ts_of(100) - FRAME_NS) is None
    assert p.live_seq(100, p.ts_of(100) - FRAME_NS + 1) == 100


def test_a_drifting_card_stays_within_one_frame_of_its_capture_time_for_hours() -> None:
    p = FramePacer(ts0_ns=0)
    for ppm in (-100, 100):
        seq, worst = 0, 0
        for k in range(4 * 3600 * 50):  # four hours of 20 ms blocks from a card off by `ppm`
            captured = k * FRAME_NS * (1_000_000 + ppm) // 1_000_000
            slot = p.live_seq(seq, captured)
            if slot is None:
                continue
            worst = max(worst, abs(p.ts_of(slot) - captured))
            seq = slot + 1
        assert worst < FRAME_NS


def test_two_packets_a_message_from_a_long_haul_D() -> None:
    assert packets_for_delay(80_000_000) == 1  # a LAN: 20 ms more would be a quarter of D
    assert packets_for_delay(199_999_999) == 1
    assert packets_for_delay(200_000_000) == 2
    assert packets_for_delay(490_000_000) == 2  # london-karachi
