"""`Handover`: a change of clock source is slewed in, never stepped (sans-IO, simulated time)."""

from __future__ import annotations

import pytest

from citycast.clock.handover import Handover, Source

S = 1_000_000_000
MS = 1_000_000


def offset_source(offset_ns: int, ppm: float = 0.0) -> Source:
    return lambda t: t + offset_ns + round(t * ppm * 1e-6)


def test_a_change_of_source_is_continuous_then_slewed_at_the_rate_limit() -> None:
    peer, hub = offset_source(0), offset_source(-MS)  # the hub estimate reads 1 ms earlier than the peer
    h = Handover(max_slew_ppm=20.0, min_slew_ns=60 * S)
    sources = [peer, hub]
    t = 1_000 * S
    assert h.to_broadcast(t, 0, sources) == t
    # The peer is lost: the served clock does not move at the change.
    assert h.to_broadcast(t + 1, 1, sources) == t + 1
    assert h.switches == 1
    # 1 ms at 20 ppm takes 50 s, less than the 60 s floor: it is spread over 60 s.
    step = 100 * MS
    previous = h.to_broadcast(t + 1, 1, sources)
    for k in range(1, 700):
        now = t + 1 + k * step
        served = h.to_broadcast(now, 1, sources)
        rate_ppm = ((served - previous) - step) / step * 1e6
        assert -20.0 - 0.02 <= rate_ppm <= 0.02
        previous = served
    assert h.to_broadcast(t + 70 * S, 1, sources) == t + 70 * S - MS  # slewed out: the hub's clock


def test_a_big_difference_is_slewed_no_faster_than_the_limit() -> None:
    h = Handover(max_slew_ppm=20.0, min_slew_ns=60 * S)
    sources = [offset_source(0), offset_source(3 * MS)]
    h.to_broadcast(0, 0, sources)
    h.to_broadcast(0, 1, sources)
    assert h.to_broadcast(75 * S, 1, sources) == pytest.approx(75 * S + 1.5 * MS, abs=2)  # half of 150 s
    assert h.to_broadcast(150 * S, 1, sources) == 150 * S + 3 * MS


def test_switching_back_mid_slew_starts_from_where_the_served_clock_is() -> None:
    a, b = offset_source(0), offset_source(2 * MS)
    h = Handover(max_slew_ppm=20.0, min_slew_ns=60 * S)
    h.to_broadcast(0, 0, [a, b])
    h.to_broadcast(0, 1, [a, b])
    mid = h.to_broadcast(50 * S, 1, [a, b])  # half way: 1 ms of the 2 ms taken in
    assert mid == 50 * S + MS
    assert h.to_broadcast(50 * S, 0, [a, b]) == mid  # back to a: no step
    # The 1 ms taken in is slewed out again over the 60 s floor.
    assert h.to_broadcast(80 * S, 0, [a, b]) == pytest.approx(80 * S + MS // 2, abs=2)
    assert h.to_broadcast(110 * S, 0, [a, b]) == 110 * S


def test_sources_drifting_apart_are_followed_at_their_own_rate_after_the_slew() -> None:
    h = Handover(max_slew_ppm=20.0, min_slew_ns=10 * S)
    a, b = offset_source(0), offset_source(100_000, ppm=5.0)
    h.to_broadcast(0, 0, [a, b])
    h.to_broadcast(0, 1, [a, b])
    assert h.to_broadcast(20 * S, 1, [a, b]) == b(20 * S)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        Handover(max_slew_ppm=0.0)
    with pytest.raises(ValueError):
        Handover(min_slew_ns=-1)
