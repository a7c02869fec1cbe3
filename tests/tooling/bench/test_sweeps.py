"""What repeated `bench` runs conclude: the floor of a quota sweep, the highest clean N of a capacity search."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console

from citycast.tooling.bench.runner import BenchOptions
from citycast.tooling.bench.sweeps import Figures, floor, run_capacity


def test_the_floor_is_the_smallest_quota_with_every_larger_one_clean() -> None:
    assert floor([(50, True), (25, True), (10, False), (5, True)]) == 25  # a clean 5 % after a failed 10 % is luck
    assert floor([(5, True), (50, True)]) == 5
    assert floor([(50, False), (25, True)]) is None
    assert floor([]) is None


def test_capacity_stops_at_the_first_run_with_a_late_block_and_says_why(tmp_path: Path) -> None:
    """The search's own logic: N grows while every run of a size is clean; a run with late blocks (0 underruns)
    is not clean, and its row says what failed it."""
    asked: list[tuple[int, int]] = []

    def bench(opts: BenchOptions, console: Console) -> Figures:
        asked.append((opts.sites, opts.snapclients))
        late = 3 if opts.sites >= 40 else 0
        f: dict[str, Any] = {
            "underruns": 0,
            "sink_xruns": late,
            "missing_markers": {},
            "site_cpu_percent_per_site": 1.2,
        }
        f.update(snapclient_underruns=0, snapclient_hard_syncs=0, snapclient_missing_markers=0,
                 snapclient_cpu_percent=0.5)  # fmt: skip
        return f

    base = BenchOptions(sites=40, snapclients=40, out=tmp_path)
    out = run_capacity(base, [20, 40], 2, Console(file=io.StringIO()), bench)
    assert out["citycast"]["highest_clean_n"] == 20
    assert out["snapclient"]["highest_clean_n"] == 40
    failed = out["citycast"]["runs_tried"][-1]
    assert failed == {"n": 40, "run": 1, "underruns": 0, "glitches": 3, "missing": 0, "cpu": 1.2, "ok": False}
    assert asked == [(20, 0), (20, 0), (40, 0), (0, 20), (0, 20), (0, 40), (0, 40)]
