"""`citycast bench-hub` end to end on a small fleet: a real hub process, light sites, Chromium; every figure there."""

from __future__ import annotations

import asyncio

import pytest

from citycast.bench.hub_bench import run_hub_bench


@pytest.mark.slow
def test_hub_bench_reports_every_figure() -> None:
    result = asyncio.run(run_hub_bench(sites=30, seconds=5, changes=3, browser=True, idle_s=2))
    assert result.kind.startswith("LIGHT")
    assert result.console is not None
    assert result.console.sites == 30 and result.console.page_load_ms > 0
    assert result.console.updates_seen == 3 and result.console.marker_update_ms["max"] < 5_000
    load = result.load
    assert load.sites == 30 and load.telemetry_sent > 30 * 5 and load.publish_errors == 0
    assert load.changes_seen == 3 and load.hub_rss_mb > 20 and load.hub_cpu_percent > 0
    assert result.hub_idle_rss_mb > 20
    figures = result.as_dict()
    assert figures["hub_cpu_vs_idle"] > 0 and "marker_update_ms" in figures["console"]
