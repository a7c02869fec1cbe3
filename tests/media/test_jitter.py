from __future__ import annotations

from citycast.media.jitter import JitterBuffer, Put


def test_packets_come_out_in_sequence_whatever_order_they_came_in() -> None:
    jb = JitterBuffer()
    for seq in (3, 1, 2, 0):
        assert jb.put(seq, bytes([seq])) is Put.OK
    assert [jb.take(s) for s in range(4)] == [b"\0", b"\1", b"\2", b"\3"]
    assert len(jb) == 0


def test_duplicates_late_and_far_future_are_refused() -> None:
    jb = JitterBuffer(capacity=8)
    jb.put(10, b"a")
    assert jb.put(10, b"a") is Put.DUPLICATE
    assert jb.take(10) == b"a"
    assert jb.put(9, b"old") is Put.LATE
    assert jb.put(11 + 8, b"far") is Put.TOO_FAR
    assert jb.put(11 + 7, b"edge") is Put.OK


def test_a_missing_packet_is_none_and_older_ones_are_forgotten() -> None:
    jb = JitterBuffer()
    for seq in (0, 1, 3):
        jb.put(seq, b"x")
    assert jb.take(2) is None  # 0 and 1 were never asked for: dropped with the gap
    assert len(jb) == 1
    assert jb.has_from(3) and not jb.has_from(4)


def test_lowest_and_discard() -> None:
    jb = JitterBuffer()
    for seq in (5, 7, 9):
        jb.put(seq, b"x")
    assert jb.lowest_seq() == 5
    assert jb.discard_before(8) == 2
    assert jb.lowest_seq() == 9
    assert jb.next_seq == 8


def test_memory_is_bounded_by_capacity() -> None:
    jb = JitterBuffer(capacity=64)
    jb.take(0)
    accepted = sum(jb.put(seq, b"x" * 100) is Put.OK for seq in range(10_000))
    assert accepted == 64
