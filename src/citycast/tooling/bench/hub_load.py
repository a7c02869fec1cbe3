"""What a fleet's telemetry costs the hub, measured with LIGHT simulated sites (telemetry only, no audio).

Start N light sites against a running hub's NATS, let them settle, then over a window read the hub process's CPU
(% of one core) and resident memory by pid, and force state changes of some light sites to time how long each
takes to appear in a console event (`{"type": "sites"}` from the hub's `EventHub`, or the same events read from
its WebSocket: any async iterator of event dicts). A forced change is published at once, so that figure is the
hub's reaction: bus, parse, fleet, the 0.25 s console flush and the event path; not the sites' 1 s report period.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from citycast.protocol.subjects import Subjects
from citycast.tasks import cancel_and_wait
from citycast.tooling.sim.light import LABEL, LightFleet


@dataclass
class HubLoadFigures:
    sites: int
    connections: int
    window_s: float
    hub_pid: int
    hub_cpu_percent: float  # of one core, over the window
    hub_rss_mb: float  # at the end of the window
    hub_rss_peak_mb: float  # highest sampled in the window
    bench_cpu_percent: float  # this process: the light sites themselves
    telemetry_sent: int
    publish_errors: int
    changes: int
    changes_seen: int
    change_to_event_ms: dict[str, float] = field(default_factory=dict)  # p50, p99, max
    kind: str = LABEL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _ChangeWatch:
    """Matches forced changes with the first console event that shows them."""

    def __init__(self) -> None:
        self.expected: dict[str, tuple[str, float]] = {}  # site -> (console state, perf_counter at the force)
        self.latencies_ms: list[float] = []

    def expect(self, site: str, state: str, t0: float) -> None:
        self.expected[site] = (state, t0)

    async def follow(self, events: AsyncIterator[dict[str, Any]]) -> None:
        async for event in events:
            if event.get("type") != "sites" or not self.expected:
                continue
            now = time.perf_counter()
            for view in event.get("sites", ()):
                want = self.expected.get(view.get("name"))
                if want is not None and view.get("state") == want[0]:
                    del self.expected[view["name"]]
                    self.latencies_ms.append((now - want[1]) * 1000)


def _rss_mb(proc: psutil.Process) -> float:
    return float(proc.memory_info().rss) / 2**20


async def measure_hub_load(
    nats_url: str,
    hub_pid: int,
    *,
    sites: int = 500,
    window_s: float = 30.0,
    warmup_s: float = 5.0,
    changes: int = 20,
    events: AsyncIterator[dict[str, Any]] | None = None,
    subjects: Subjects | None = None,
    names: Sequence[str] | None = None,
    per_connection: int = 100,
    creds: str | Path | Sequence[str | Path | None] | None = None,
    change_timeout_s: float = 5.0,
) -> HubLoadFigures:
    """Run `sites` light sites for `warmup_s + window_s` and return the figures. `events`: the hub's console
    events; without them no change latency is measured (the changes are still made)."""
    if window_s <= 0 or warmup_s < 0:
        raise ValueError("window_s must be positive and warmup_s not negative")
    site_names = list(names) if names is not None else [f"light-{i:05d}" for i in range(sites)]
    try:
        hub = psutil.Process(hub_pid)
        hub.cpu_times()
    except psutil.Error as e:
        raise ValueError(f"cannot watch hub process {hub_pid}: {e}") from e
    me = psutil.Process()
    fleet = LightFleet(nats_url, site_names, subjects=subjects, per_connection=per_connection, creds=creds)
    watch = _ChangeWatch()
    follower = asyncio.create_task(watch.follow(events)) if events is not None else None
    forced = 0
    try:
        await fleet.start()
        await asyncio.sleep(warmup_s)
        hub0, me0, wall0 = sum(hub.cpu_times()[:2]), sum(me.cpu_times()[:2]), time.monotonic()
        rss_peak = _rss_mb(hub)
        deadline = wall0 + window_s
        step = window_s / max(1, changes)
        next_change = wall0 + step / 2
        while (now := time.monotonic()) < deadline:
            rss_peak = max(rss_peak, _rss_mb(hub))
            if forced < changes and now >= next_change:
                name = site_names[(forced * 7919) % len(site_names)]  # spread over the fleet's connections
                state = "idle" if fleet.sites[name].state == "playing" else "playing"
                t0 = time.perf_counter()
                await fleet.force(name, state=state)
                watch.expect(name, state, t0)
                forced += 1
                next_change += step
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        hub1, me1, wall1 = sum(hub.cpu_times()[:2]), sum(me.cpu_times()[:2]), time.monotonic()
        rss_end = _rss_mb(hub)
        if follower is not None:
            # Changes forced near the end of the window still get their chance to show.
            end = time.monotonic() + change_timeout_s
            while watch.expected and time.monotonic() < end:
                await asyncio.sleep(0.05)
    finally:
        if follower is not None:
            await cancel_and_wait(follower)
        await fleet.stop()
    wall = max(1e-9, wall1 - wall0)
    lat = np.asarray(watch.latencies_ms, dtype=np.float64)
    return HubLoadFigures(
        sites=len(site_names),
        connections=fleet.stats.connections,
        window_s=round(wall, 3),
        hub_pid=hub_pid,
        hub_cpu_percent=100 * (hub1 - hub0) / wall,
        hub_rss_mb=rss_end,
        hub_rss_peak_mb=max(rss_peak, rss_end),
        bench_cpu_percent=100 * (me1 - me0) / wall,
        telemetry_sent=fleet.stats.published,
        publish_errors=fleet.stats.publish_errors,
        changes=forced,
        changes_seen=len(watch.latencies_ms),
        change_to_event_ms={
            "p50": float(np.percentile(lat, 50)) if lat.size else math.nan,
            "p99": float(np.percentile(lat, 99)) if lat.size else math.nan,
            "max": float(lat.max()) if lat.size else math.nan,
        },
    )
