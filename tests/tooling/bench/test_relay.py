"""Unit tests of the sans-IO WAN relay scheduler (no root, no sockets)."""

from __future__ import annotations

import itertools
import random

import pytest

from citycast.tooling.bench.relay import DelayLine, LatencyRecorder

MS = 1_000_000


def _line(delay_ms: float = 70, jitter_ms: float = 10, loss: float = 0.01, seed: int = 7, **kw: int) -> DelayLine:
    return DelayLine(round(delay_ms * MS), round(jitter_ms * MS), loss, rng=random.Random(seed), **kw)


def _drive(line: DelayLine, n: int, spacing_ns: int) -> tuple[dict[bytes, int], list[tuple[int, bytes]]]:
    """Push n numbered packets `spacing_ns` apart, draining as time goes; return send times and deliveries."""
    sent: dict[bytes, int] = {}
    delivered: list[tuple[int, bytes]] = []
    now = 0
    for i in range(n):
        now = i * spacing_ns
        delivered.extend(line.due_with_times(now))
        pkt = i.to_bytes(4, "big")
        if not line.push(pkt, now):
            sent[pkt] = now
    # drain the rest
    while (nd := line.next_due_ns()) is not None:
        delivered.extend(line.due_with_times(nd))
    return sent, delivered


def test_delay_within_range_and_no_duplicates() -> None:
    line = _line(loss=0.0)
    sent, delivered = _drive(line, 20_000, spacing_ns=MS // 2)
    assert len(delivered) == len(sent) == 20_000
    assert len({p for _, p in delivered}) == len(delivered)  # nothing duplicated, nothing invented
    delays = [due - sent[p] for due, p in delivered]
    assert min(delays) >= 60 * MS and max(delays) <= 80 * MS
    # uniform: mean near 70 ms, and both ends of the range are used
    assert abs(sum(delays) / len(delays) - 70 * MS) < 0.3 * MS
    assert min(delays) < 60.5 * MS and max(delays) > 79.5 * MS
    assert line.stats.forwarded == 20_000 and line.stats.dropped == 0 and len(line) == 0


def test_due_is_in_due_order_and_respects_now() -> None:
    line = _line(loss=0.0)
    for i in range(100):
        line.push(bytes([i]), 0)
    assert line.due(59 * MS) == []
    nd = line.next_due_ns()
    assert nd is not None and 60 * MS <= nd <= 80 * MS
    got = line.due_with_times(75 * MS)
    assert all(d <= 75 * MS for d, _ in got)
    assert [d for d, _ in got] == sorted(d for d, _ in got)
    rest = line.due(10**12)
    assert len(got) + len(rest) == 100
    assert line.next_due_ns() is None


def test_loss_rate_over_100k_packets() -> None:
    for loss, seed in ((0.01, 1), (0.05, 2)):
        line = _line(loss=loss, seed=seed, max_queued=200_000)
        dropped = sum(line.push(b"x", i * 1000) for i in range(100_000))
        assert line.stats.overflow == 0
        # binomial sd at 1 %: ~31 packets; at 5 %: ~69; allow ~5 sd
        assert abs(dropped - loss * 100_000) < 5 * (100_000 * loss * (1 - loss)) ** 0.5
        assert line.stats.dropped == dropped and line.stats.pushed == 100_000


def test_loss_is_reproducible_with_a_seed() -> None:
    a, b = _line(loss=0.05, seed=42), _line(loss=0.05, seed=42)
    pattern_a = [a.push(b"x", i) for i in range(5000)]
    pattern_b = [b.push(b"x", i) for i in range(5000)]
    assert pattern_a == pattern_b
    assert a.due(10**12) == b.due(10**12)


def test_reordering_happens_with_jitter() -> None:
    line = _line(loss=0.0)
    _, delivered = _drive(line, 5000, spacing_ns=MS)  # 1 ms apart, ±10 ms jitter: heavy reordering
    order = [int.from_bytes(p, "big") for _, p in delivered]
    inversions = sum(1 for x, y in itertools.pairwise(order) if y < x)
    assert inversions > 1000


def test_no_reordering_without_jitter() -> None:
    line = _line(jitter_ms=0, loss=0.0)
    _, delivered = _drive(line, 2000, spacing_ns=MS)
    order = [int.from_bytes(p, "big") for _, p in delivered]
    assert order == sorted(order)
    # equal due times stay FIFO too
    line2 = _line(jitter_ms=0, loss=0.0)
    for i in range(50):
        line2.push(bytes([i]), 0)
    assert line2.due(10**12) == [bytes([i]) for i in range(50)]


def test_memory_is_bounded() -> None:
    line = _line(loss=0.0, max_queued=100)
    results = [line.push(b"x" * 1500, 0) for i in range(1000)]
    assert len(line) == 100
    assert results.count(True) == 900
    assert line.stats.overflow == 900 and line.stats.dropped == 0
    line.due(10**12)
    assert len(line) == 0
    assert line.push(b"y", 10**12) is False


def test_zero_delay_passes_through() -> None:
    line = DelayLine(0, 0, 0.0)
    assert line.push(b"a", 5) is False
    assert line.due(5) == [b"a"]


@pytest.mark.parametrize(
    ("delay", "jitter", "loss"),
    [(-1, 0, 0.0), (10, 11, 0.0), (10, 0, 1.0), (10, 0, -0.1)],
)
def test_rejects_bad_parameters(delay: int, jitter: int, loss: float) -> None:
    with pytest.raises(ValueError):
        DelayLine(delay, jitter, loss)


def test_latency_recorder_percentiles_and_bounded_ring() -> None:
    rec = LatencyRecorder(capacity=1000)
    assert rec.percentile_ns(50) == 0
    for v in range(1, 101):
        rec.add(v)
    assert rec.percentile_ns(50) == 50
    assert rec.percentile_ns(99) == 99
    assert rec.percentile_ns(100) == 100
    assert rec.max_ns == 100
    for _ in range(5000):
        rec.add(1)
    assert rec.percentile_ns(99) == 1  # ring keeps only the most recent 1000
    assert rec.max_ns == 100 and rec.count == 5100
