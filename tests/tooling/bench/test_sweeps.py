"""What repeated `bench` runs conclude: the floor of a quota sweep."""

from __future__ import annotations

from citycast.tooling.bench.sweeps import floor


def test_the_floor_is_the_smallest_quota_with_every_larger_one_clean() -> None:
    assert floor([(50, True), (25, True), (10, False), (5, True)]) == 25  # a clean 5 % after a failed 10 % is luck
    assert floor([(5, True), (50, True)]) == 5
    assert floor([(50, False), (25, True)]) is None
    assert floor([]) is None
