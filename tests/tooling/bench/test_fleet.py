"""The benchmark's process fleet, with real processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from citycast.tooling.bench.fleet import Fleet


def test_watch_until_samples_until_the_process_ends_and_gives_up_after_its_time(tmp_path: Path) -> None:
    with Fleet(tmp_path) as fleet:
        quick = fleet.spawn("ingest", "quick", [sys.executable, "-c", "import time; time.sleep(0.5)"])
        ticks: list[float] = []
        assert quick.popen is not None
        popen = quick.popen
        assert fleet.watch_until(lambda: popen.poll() is not None, lambda: None, 5, ticks.append)
        assert 1 <= len(ticks) <= 10 and ticks == sorted(ticks)
        assert quick.last_rss_mb > 0  # sampled while it ran

        slow = fleet.spawn("ingest", "slow", [sys.executable, "-c", "import time; time.sleep(60)"])
        assert slow.popen is not None
        stuck = slow.popen
        assert not fleet.watch_until(lambda: stuck.poll() is not None, lambda: None, -29.5, lambda _: None)


def test_watch_until_stops_when_the_check_raises(tmp_path: Path) -> None:
    with Fleet(tmp_path) as fleet:
        member = fleet.spawn("sites", "dies", [sys.executable, "-c", "raise SystemExit(3)"])
        assert member.popen is not None
        member.popen.wait()

        def check() -> None:
            if fleet.failed():
                raise RuntimeError("a member died")

        with pytest.raises(RuntimeError, match="died"):
            fleet.watch_until(lambda: False, check, 5, lambda _: None)
