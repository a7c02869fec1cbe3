"""LIGHT simulated sites: telemetry only, no audio. For loading the hub, not for measuring playback.

A light site publishes the same `Telemetry` a real agent does, every second, with plausible values (a clock
offset and error, a link RTT, levels while "playing", counters that grow) and state changes on command or at
random, but it plays nothing, receives no frames and runs no clock sync. Many share a process and a few nats-py
connections (a real agent has one connection of its own), so one box can stand in for 2,000 sites when the
question is what the hub does with their telemetry. Every report that uses them must say "light sites".

The full agent (`citycast.site.agent`, `citycast simulate`) is what to run when the question is about audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client

from citycast.bus.connection import connect, retire
from citycast.protocol.subjects import Subjects
from citycast.protocol.telemetry import Telemetry
from citycast.tasks import cancel_and_wait

log = logging.getLogger(__name__)

LABEL = "LIGHT simulated sites (telemetry only, no audio)"
SILENCE_DBFS = -180.0  # what the real engine reports for silence
ENGINE_STATES = ("syncing", "idle", "playing", "fallback")
SLICES = 10  # a connection's sites publish in this many slices per second, not all at one instant


@dataclass
class LightSite:
    """One light site's simulated condition. Change it through `LightFleet.force`, not directly."""

    name: str
    channel: int
    state: str = "syncing"
    muted: bool = False
    volume: float = 1.0
    sync_error_ms: float | None = None  # forced; None: the simulated estimate
    underruns: int = 0
    concealed: int = 0
    frames: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    synced_at: float = 0.0  # monotonic seconds when a syncing site becomes idle by itself
    offset_ms: float = 0.0
    drift_ppm: float = 0.0
    clock_error_ms: float = 0.2
    rtt_ms: float = 40.0
    silent: bool = False  # forced off the bus: publishes nothing (to simulate a site going offline)
    fallback_until: float = 0.0

    def telemetry(self, rng: random.Random, now_ns: int, dt_s: float) -> Telemetry:
        """The report for the second that just passed (advances the counters as a real site's would)."""
        playing = self.state == "playing"
        audible = self.state in ("playing", "fallback") and not self.muted
        if playing:
            self.frames += round(50 * dt_s)
            if rng.random() < 0.002:
                self.concealed += 1
        if audible:
            rms = rng.gauss(-21.0, 2.5) if playing else rng.gauss(-30.0, 2.0)
            rms = min(rms, -3.0)
            peak = min(0.0, rms + rng.uniform(9.0, 15.0))
        else:
            rms = peak = SILENCE_DBFS
        synced = self.state != "syncing"
        tracking = rng.gauss(0.0, 0.01) if synced else 0.0
        clock_err = self.clock_error_ms * rng.uniform(0.9, 1.1) if synced else 0.0
        sync_error = self.sync_error_ms if self.sync_error_ms is not None else clock_err + abs(tracking)
        return Telemetry(
            site=self.name,
            ts_ns=now_ns if synced else 0,
            state=self.state,
            channel=self.channel,
            buffer_ms=round(rng.uniform(78.0, 102.0), 2) if playing else 0.0,
            clock_offset_ms=self.offset_ms if synced else 0.0,
            clock_drift_ppm=self.drift_ppm if synced else 0.0,
            clock_error_ms=clock_err,
            sync_error_ms=sync_error,
            tracking_error_ms=tracking,
            resample_ppm=-self.drift_ppm if playing else 0.0,
            underruns=self.underruns,
            concealed=self.concealed,
            late=0,
            rejected=dict(self.rejected),
            level_rms_dbfs=round(rms, 1),
            level_peak_dbfs=round(peak, 1),
            link_rtt_ms=round(self.rtt_ms * rng.uniform(0.9, 1.2), 2),
            sink_xruns=0,
            resyncs=0,
            frames=self.frames,
            cpu={},
            volume=self.volume,
            muted=self.muted,
        )


@dataclass
class LightStats:
    sites: int = 0
    connections: int = 0
    published: int = 0
    publish_errors: int = 0
    random_changes: int = 0


class LightFleet:
    """Many light sites over `ceil(len(names) / per_connection)` nats-py connections.

    `creds`: one credentials file for every connection, or one per connection (auth mode), or None.
    `change_rate`: random state changes per site per second (0 for none: tests and benchmarks force them).
    """

    def __init__(
        self,
        nats_url: str,
        names: Iterable[str],
        *,
        subjects: Subjects | None = None,
        channel: int = 1,
        per_connection: int = 100,
        creds: str | Path | Sequence[str | Path | None] | None = None,
        interval_s: float = 1.0,
        sync_after_s: tuple[float, float] = (0.5, 2.0),
        change_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        if per_connection < 1:
            raise ValueError("per_connection must be at least 1")
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.nats_url = nats_url
        self.subjects = subjects or Subjects()
        self.interval_s = interval_s
        self.change_rate = change_rate
        self.rng = random.Random(seed)
        now = time.monotonic()
        self.sites: dict[str, LightSite] = {}
        for name in names:
            if name in self.sites:
                raise ValueError(f"site name {name!r} given twice")
            self.sites[name] = LightSite(
                name,
                channel,
                synced_at=now + self.rng.uniform(*sync_after_s),
                offset_ms=self.rng.uniform(-50.0, 50.0),
                drift_ppm=self.rng.uniform(-40.0, 40.0),
                clock_error_ms=self.rng.uniform(0.05, 0.4),
                rtt_ms=self.rng.uniform(15.0, 160.0),
            )
        ordered = list(self.sites)
        self.groups = [ordered[i : i + per_connection] for i in range(0, len(ordered), per_connection)]
        if isinstance(creds, str | Path) or creds is None:
            self.creds: list[str | Path | None] = [creds] * len(self.groups)
        else:
            self.creds = list(creds)
            if len(self.creds) != len(self.groups):
                raise ValueError(f"{len(self.creds)} credentials files for {len(self.groups)} connections")
        self.stats = LightStats(sites=len(self.sites), connections=len(self.groups))
        self._conns: list[Client] = []
        self._conn_of: dict[str, Client] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        log.info("%s: %d sites over %d connections", LABEL, len(self.sites), len(self.groups))
        try:
            for i, group in enumerate(self.groups):
                path = self.creds[i]
                nc = await connect(
                    self.nats_url,
                    name=f"citycast-light-sites-{i}",
                    forever=False,
                    creds=Path(path) if path else None,
                )
                self._conns.append(nc)
                for name in group:
                    self._conn_of[name] = nc
        except BaseException:
            await self.stop()
            raise
        for nc, group in zip(self._conns, self.groups, strict=True):
            self._tasks.append(asyncio.create_task(self._publish_loop(nc, group)))

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        for nc in self._conns:
            await retire(nc)
        self._conns = []
        self._conn_of = {}

    async def __aenter__(self) -> LightFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- publishing ---------------------------------------------------------------------------------------------
    async def _publish_loop(self, nc: Client, group: list[str]) -> None:
        slices = [group[i::SLICES] for i in range(SLICES)]
        step = self.interval_s / SLICES
        # Connections start at different points of the second, like sites booted at different times.
        await asyncio.sleep(self.rng.uniform(0.0, step))
        while True:
            for part in slices:
                t0 = time.monotonic()
                for name in part:
                    site = self.sites[name]
                    self._evolve(site, t0)
                    if not site.silent:
                        await self._publish(nc, site)
                await asyncio.sleep(max(0.0, step - (time.monotonic() - t0)))

    async def _publish(self, nc: Client, site: LightSite) -> None:
        try:
            await nc.publish(
                self.subjects.telemetry(site.name), site.telemetry(self.rng, time.time_ns(), 1.0).to_json()
            )
            self.stats.published += 1
        except Exception as e:  # a dropped heartbeat is what a real site on a bad link sends too
            self.stats.publish_errors += 1
            log.debug("light site %s: publish failed: %s", site.name, e)

    def _evolve(self, site: LightSite, now: float) -> None:
        if site.state == "syncing" and site.synced_at and now >= site.synced_at:
            site.state, site.synced_at = "idle", 0.0
        if site.state == "fallback" and site.fallback_until and now >= site.fallback_until:
            site.state, site.fallback_until = "playing", 0.0
        if self.change_rate > 0 and site.state != "syncing" and self.rng.random() < self.change_rate * self.interval_s:
            self.stats.random_changes += 1
            roll = self.rng.random()
            if roll < 0.6:
                site.state = "playing" if site.state == "idle" else "idle"
            elif roll < 0.8:
                site.state, site.fallback_until = "fallback", now + self.rng.uniform(2.0, 8.0)
            else:
                site.underruns += self.rng.randint(1, 3)

    # -- commands -----------------------------------------------------------------------------------------------
    async def force(
        self,
        name: str,
        *,
        state: str | None = None,
        muted: bool | None = None,
        volume: float | None = None,
        sync_error_ms: float | None = None,
        clear_sync_error: bool = False,
        underruns: int = 0,
        rejected: dict[str, int] | None = None,
        silent: bool | None = None,
        publish: bool = True,
    ) -> None:
        """Change a site's condition; unless `publish=False` it reports at once (not at its next second), so a
        benchmark measures the hub's reaction, not the wait for the next report."""
        site = self.sites[name]  # KeyError: not one of ours
        if state is not None:
            if state not in ENGINE_STATES:
                raise ValueError(f"state must be one of {', '.join(ENGINE_STATES)}")
            site.state, site.synced_at, site.fallback_until = state, 0.0, 0.0
        if muted is not None:
            site.muted = muted
        if volume is not None:
            site.volume = volume
        if sync_error_ms is not None:
            site.sync_error_ms = sync_error_ms
        if clear_sync_error:
            site.sync_error_ms = None
        site.underruns += underruns
        for reason, n in (rejected or {}).items():
            site.rejected[reason] = site.rejected.get(reason, 0) + n
        if silent is not None:
            site.silent = silent
        nc = self._conn_of.get(name)
        if publish and nc is not None and not site.silent:
            await self._publish(nc, site)
            await nc.flush()


async def run_light_sites(
    nats_url: str,
    names: Iterable[str],
    *,
    subjects: Subjects | None = None,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
    per_connection: int = 100,
    creds: str | Path | Sequence[str | Path | None] | None = None,
    change_rate: float = 1 / 300,
    seed: int = 0,
) -> LightStats:
    """Run light sites until `stop` is set or `duration_s` passes (forever if neither); returns what they sent."""
    fleet = LightFleet(
        nats_url, names, subjects=subjects, per_connection=per_connection, creds=creds, change_rate=change_rate,
        seed=seed,
    )  # fmt: skip
    async with fleet:
        waiter = (stop or asyncio.Event()).wait()
        if duration_s is None:
            await waiter
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(duration_s):
                    await waiter
    log.info("%s: published %d reports (%d failed)", LABEL, fleet.stats.published, fleet.stats.publish_errors)
    return fleet.stats
