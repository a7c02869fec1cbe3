"""`citycast bench-hub`: the hub and its console under a fleet's telemetry.

A real hub (`citycast serve`, its own process) with N sites created through its API, N LIGHT simulated sites
(telemetry only, no audio: `citycast.tooling.sim.light`) reporting every second, and headless Chromium showing the
console. Figures: the console's load time with every marker drawn, how long a site's state change takes to show on
its marker, and the hub's CPU and memory while the fleet reports (read by pid, from the hub's WebSocket events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import websockets

from citycast.bus.server import free_port
from citycast.hub.runtime import ADMIN_PASSWORD_FILE
from citycast.tooling.bench.fleet import citycast_argv, wait_http_ok
from citycast.tooling.bench.hub_load import HubLoadFigures, measure_hub_load
from citycast.tooling.demo_city import ZONES, plan_city
from citycast.tooling.sim.light import LABEL, LightFleet

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@dataclass
class ConsoleFigures:
    sites: int
    page_load_ms: float  # navigation start → every marker drawn and the live feed connected
    marker_update_ms: dict[str, float] = field(default_factory=dict)  # state change published → marker updated
    updates_seen: int = 0
    updates_forced: int = 0


@dataclass
class HubBenchResult:
    kind: str
    hub_idle_cpu_percent: float  # baseline, same run: the hub with its sites created and none reporting
    hub_idle_rss_mb: float
    console: ConsoleFigures | None
    load: HubLoadFigures

    @property
    def cpu_ratio(self) -> float:
        return self.load.hub_cpu_percent / max(self.hub_idle_cpu_percent, 0.01)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hub_cpu_vs_idle": round(self.cpu_ratio, 1)}


def _pct(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    a = np.asarray(xs)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p99": round(float(np.percentile(a, 99)), 1),
            "max": round(float(a.max()), 1)}  # fmt: skip


class _Hub:
    def __init__(self, work: Path, *, verbose: bool = False) -> None:
        self.work = work
        self.verbose = verbose  # INFO logs: each address's publish lateness when it ends
        self.http_port = free_port()
        self.nats_port = free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    async def log_in_admin(self, api: httpx.AsyncClient) -> str:
        """Log `api` in as the hub's first admin (its one-time password file); returns the session token."""
        password = (self.work / "hub" / ADMIN_PASSWORD_FILE).read_text().strip()
        r = await api.post("/api/login", json={"username": "admin", "password": password})
        r.raise_for_status()
        token = str(r.json()["token"])
        api.headers["Authorization"] = f"Bearer {token}"
        return token

    def start(self) -> None:
        log = open(self.work / "hub.log", "wb")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            citycast_argv(
                *(["-v"] if self.verbose else []),
                "serve",
                "--data-dir",
                str(self.work / "hub"),
                "--listen",
                f"127.0.0.1:{self.nats_port}",
                "--http",
                f"127.0.0.1:{self.http_port}",
                "--https",  # no fixed 8443 shared by concurrent runs; NATS is TLS all the same
                "off",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # One log record per line (Rich wraps at 80 without a terminal), written at once (not block-buffered).
            env={**os.environ, "COLUMNS": "400", "PYTHONUNBUFFERED": "1"},
        )
        proc = self.proc
        if wait_http_ok(f"{self.base}/api/health", lambda: proc.poll() is None, 60):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the hub exited: {(self.work / 'hub.log').read_text()[-2000:]}")
        raise RuntimeError("the hub did not start in 60 s")

    @property
    def creds(self) -> Path:
        # Light sites share connections (100 sites each), so they use the hub's own NATS user: a site's user
        # may publish only its own telemetry.
        return self.work / "hub" / "nats-auth" / "hub.creds"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def _seed(api: httpx.AsyncClient, n: int) -> list[str]:
    zone_ids = {}
    for name, (channel, color) in ZONES.items():
        r = await api.post("/api/zones", json={"name": name, "channel": channel, "color": color})
        r.raise_for_status()
        zone_ids[name] = r.json()["id"]
    plan = plan_city(n, random.Random(1))
    sem = asyncio.Semaphore(8)

    async def one(p: Any) -> None:
        async with sem:
            body = {"name": p.name, "label": p.label, "lat": p.lat, "lon": p.lon, "zone_id": zone_ids[p.zone]}
            r = await api.post("/api/sites", json=body)
            r.raise_for_status()

    await asyncio.gather(*(one(p) for p in plan))
    return [p.name for p in plan]


async def _ws_events(base: str, token: str) -> AsyncIterator[dict[str, Any]]:
    # A program, not a browser: no Origin, the session token as a bearer header (never in the URL).
    url = base.replace("http://", "ws://") + "/api/ws"
    async with websockets.connect(url, max_size=None, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        async for raw in ws:
            with contextlib.suppress(ValueError):
                yield json.loads(raw)


async def _console(base: str, token: str, fleet: LightFleet, names: list[str], changes: int) -> ConsoleFigures:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            ctx = await browser.new_context(viewport={"width": 1366, "height": 800})
            await ctx.add_cookies([{"name": "citycast_session", "value": token, "url": base}])
            page = await ctx.new_page()
            t0 = time.perf_counter()
            await page.goto(base + "/")
            await page.wait_for_function(
                "n => window.citycast && window.citycast.markerCount() >= n && window.citycast.status().wsConnected",
                arg=len(names),
                timeout=120_000,
            )
            load_ms = (time.perf_counter() - t0) * 1000
            delays: list[float] = []
            for i in range(changes):
                name = names[(i * 7919) % len(names)]
                state = "idle" if fleet.sites[name].state == "playing" else "playing"
                forced_wall = time.time() * 1000
                await fleet.force(name, state=state)
                try:
                    await page.wait_for_function(
                        "([n, s]) => { const m = window.citycast.markerState(n); return m && m.state === s; }",
                        arg=[name, state],
                        timeout=5_000,
                    )
                except Exception:
                    continue
                m = await page.evaluate("n => window.citycast.markerState(n)", name)
                delays.append(float(m["changedWall"]) - forced_wall)
                await asyncio.sleep(0.2)
            return ConsoleFigures(len(names), round(load_ms, 1), _pct(delays), len(delays), changes)
        finally:
            await browser.close()


async def _idle(pid: int, seconds: float) -> tuple[float, float]:
    proc = psutil.Process(pid)
    await asyncio.sleep(2)  # the site creation burst is over
    c0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
    await asyncio.sleep(seconds)
    c1, t1 = sum(proc.cpu_times()[:2]), time.monotonic()
    return 100 * (c1 - c0) / (t1 - t0), proc.memory_info().rss / 2**20


async def run_hub_bench(
    *, sites: int, seconds: float, changes: int, browser: bool, work: Path | None = None, idle_s: float = 10.0
) -> HubBenchResult:
    tmp = Path(tempfile.mkdtemp(prefix="citycast-hubbench-")) if work is None else work
    tmp.mkdir(parents=True, exist_ok=True)
    hub = _Hub(tmp)
    try:
        await asyncio.to_thread(hub.start)
        async with httpx.AsyncClient(base_url=hub.base, timeout=60) as api:
            token = await hub.log_in_admin(api)
            names = await _seed(api, sites)
        assert hub.proc is not None
        idle_cpu, idle_rss = await _idle(hub.proc.pid, idle_s)
        console = None
        if browser:
            fleet = LightFleet(hub.nats_url, names, creds=str(hub.creds))
            await fleet.start()
            try:
                await asyncio.sleep(3)
                console = await _console(hub.base, token, fleet, names, changes)
            finally:
                await fleet.stop()
        assert hub.proc is not None
        load = await measure_hub_load(
            hub.nats_url,
            hub.proc.pid,
            sites=sites,
            names=names,
            window_s=seconds,
            changes=changes,
            events=_ws_events(hub.base, token),
            creds=str(hub.creds),
        )
        return HubBenchResult(LABEL, round(idle_cpu, 2), round(idle_rss, 1), console, load)
    finally:
        await asyncio.to_thread(hub.stop)
        if work is None:
            shutil.rmtree(tmp, ignore_errors=True)
