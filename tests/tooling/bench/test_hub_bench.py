"""`citycast bench-hub` end to end on a small fleet: a real hub process, light sites, Chromium; every figure there."""

from __future__ import annotations

import asyncio

import pytest

from citycast.tooling.bench.hub_bench import run_hub_bench


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


@pytest.mark.slow
def test_hub_abuse_bench_reports_both_phases() -> None:
    from citycast.tooling.bench.hub_abuse import run_abuse_bench

    result = asyncio.run(run_abuse_bench(sites=1, seconds=5))
    figures = result.as_dict()
    for phase in ("quiet", "abuse"):
        late = figures[phase]["publish_lateness_ms"]
        assert 0 <= late["p50"] <= late["p99"] <= late["max"], late
        assert figures[phase]["underruns"] >= 0 and figures[phase]["concealed"] >= 0
    asked = result.abuse.requests
    # Every kind of abuse really reached the hub, and each got its refusal.
    assert asked.get("login:401", 0) > 0 and asked.get("body:413", 0) > 0, asked
    assert any(k.startswith("pin:4") for k in asked) and asked.get("list:200", 0) > 0, asked
    assert "p99_delta_ms" in figures
