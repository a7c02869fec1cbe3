from __future__ import annotations

import math
import os

import nats

from citycast.bus.server import EmbeddedNats
from citycast.hub.alerts import AlertRules
from citycast.hub.events import EventHub
from citycast.hub.fleet import FleetState
from citycast.hub.monitor import FleetMonitor
from citycast.protocol.subjects import Subjects
from citycast.tooling.bench.hub_load import measure_hub_load


async def test_small_hub_load_run_returns_sane_figures(nats_server: EmbeddedNats) -> None:
    # The "hub" is this process: the monitor runs here, beside the light sites.
    subjects = Subjects()
    fleet, events = FleetState(), EventHub(queue_size=10_000)
    nc = await nats.connect(nats_server.url)
    monitor = FleetMonitor(nc, subjects, fleet, AlertRules(), events)
    await monitor.start()
    try:
        with events.subscribe() as sub:
            figures = await measure_hub_load(
                nats_server.url, os.getpid(), sites=50, warmup_s=2.5, window_s=3.0, changes=5, events=sub,
                per_connection=20,
            )  # fmt: skip
    finally:
        await monitor.stop()
        await nc.close()
    assert figures.sites == 50 and figures.connections == 3 and "LIGHT" in figures.kind
    assert figures.changes == 5 and figures.changes_seen == 5
    lat = figures.change_to_event_ms
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 5000
    assert figures.hub_cpu_percent > 0 and figures.hub_rss_mb > 10 and figures.hub_rss_peak_mb >= figures.hub_rss_mb
    assert 2.9 <= figures.window_s < 4.0
    # About 50 reports a second for 5.5 s, plus the forced ones; all reached the monitor.
    assert 50 * 4 <= figures.telemetry_sent <= 50 * 7 and figures.publish_errors == 0
    assert monitor.counters.received == figures.telemetry_sent and monitor.counters.bad == 0
    assert sum(fleet.counts()[s] for s in ("idle", "playing")) == 50


async def test_without_events_no_latency_and_bad_pid_is_clear(nats_server: EmbeddedNats) -> None:
    figures = await measure_hub_load(nats_server.url, os.getpid(), sites=5, warmup_s=0.2, window_s=0.5, changes=1)
    assert figures.changes == 1 and figures.changes_seen == 0 and math.isnan(figures.change_to_event_ms["p50"])
    try:
        await measure_hub_load(nats_server.url, 2**22 + 12345, sites=1, window_s=0.1)
    except ValueError as e:
        assert "cannot watch hub process" in str(e)
    else:
        raise AssertionError("no error for a missing process")
