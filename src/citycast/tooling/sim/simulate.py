"""Many real site agents in one process, each with its own honest (wrong) clock and DAC, for load and sync tests.

On one machine every process shares one clock, which would make sync trivially perfect. Each simulated site's
local clock is therefore the system clock plus an unknown offset and rate error, and its timed sink's DAC runs at
a rate error of its own. Latency and skew are then measured on the true system clock, from the WAV files.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from pathlib import Path

from citycast.clock.local import SkewedClock
from citycast.media.sinks import TimedSink
from citycast.site.agent import SiteAgent, SiteConfig
from citycast.site.uplinks import ClockFailover

SIM_BLOCK = 480  # 10 ms DAC blocks, like a sound card period


@dataclass(frozen=True)
class SimSite:
    name: str
    clock: SkewedClock
    dac_ppm: float

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "clock_offset_ms": self.clock.offset_ns / 1e6,
            "clock_ppm": self.clock.ppm,
            "dac_ppm": self.dac_ppm,
        }


def plan_sites(
    n: int,
    *,
    seed: int = 1,
    first: int = 0,
    max_offset_s: float = 2.0,
    max_ppm: float = 100.0,
    max_dac_ppm: float = 100.0,
    fast_site_ppm: float | None = None,
    prefix: str = "site",
) -> list[SimSite]:
    """Sites `first`..`first+n-1`. With `fast_site_ppm`, site 0's DAC runs exactly that fast (the drift case)."""
    sites = []
    for i in range(first, first + n):
        rng = random.Random(seed * 1_000_003 + i)
        clock = SkewedClock.random(rng, max_offset_s, max_ppm)
        dac = rng.uniform(-max_dac_ppm, max_dac_ppm)
        if fast_site_ppm is not None and i == 0:
            dac = fast_site_ppm
        sites.append(SimSite(f"{prefix}-{i:04d}", clock, dac))
    return sites


async def _signal_when_synced(agents: list[SiteAgent], ready: asyncio.Event, settle_s: float = 2.0) -> None:
    while not all(a.broadcast_now() is not None for a in agents):
        await asyncio.sleep(0.1)
    # "Synced" means a first estimate; give the drift fit a moment before anyone measures.
    await asyncio.sleep(settle_s)
    ready.set()


def _clock_events(agent: SiteAgent) -> dict[str, int]:
    """What happened to a site's clock over its run, beyond what telemetry says: a skew that the site's own
    figures do not explain is read from these (estimator restarts and steps, steps the guard took or refused)."""
    est, guard, sync = agent.estimator, agent.guard, agent.clock_sync
    if isinstance(sync, ClockFailover):
        sync = sync.current  # the responder it asks now
    return {
        "estimator_resets": est.resets,
        "estimator_steps": est.steps,
        "samples_rejected": est.rejected,
        "guard_steps_taken": guard.taken_steps,
        "guard_readings_refused": guard.refused,
        "exchanges": sync.exchanges if sync is not None else 0,
        "exchange_failures": sync.failures if sync is not None else 0,
    }


async def run_simulation(
    sites: list[SimSite],
    base: SiteConfig,
    *,
    seconds: float,
    out_dir: Path | None = None,
    ready: asyncio.Event | None = None,
    block: int = SIM_BLOCK,
) -> list[dict[str, object]]:
    """Run every site for `seconds` of playout; returns each site's plan and final telemetry."""
    agents: list[SiteAgent] = []
    sinks: list[TimedSink] = []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    for s in sites:
        wav = out_dir / f"{s.name}.wav" if out_dir is not None else None
        sink = TimedSink(s.clock, dac_ppm=s.dac_ppm, block=block, wav_path=wav, duration_s=seconds)
        cfg = SiteConfig(**{**base.__dict__, "name": s.name})
        agents.append(SiteAgent(cfg, sink, clock=s.clock))
        sinks.append(sink)
    for a in agents:
        await a.start()
        await asyncio.sleep(0.005)  # a thousand sites do not connect at one instant in the field either
    announcer = asyncio.create_task(_signal_when_synced(agents, ready)) if ready is not None else None
    try:
        await asyncio.gather(*(a.sink_task for a in agents if a.sink_task), return_exceptions=True)
    finally:
        # Also when stopped by a signal: what the sites saw is the point of running them.
        results = []
        for s, a in zip(sites, agents, strict=True):
            results.append({**s.as_dict(), "telemetry": json.loads(a.telemetry().to_json()), "clock": _clock_events(a)})
        if out_dir is not None:
            (out_dir / f"{sites[0].name}.results.json").write_text(json.dumps(results, indent=1))
        await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
        if announcer is not None:
            announcer.cancel()
    return results


@dataclass
class SimOptions:
    sites: int
    nats_url: str
    trust: Path
    channel: int = 1
    prefix: str = "citycast"
    delay_ms: float = 80.0
    seconds: float = 30.0
    out: Path | None = None
    seed: int = 1
    first: int = 0
    time_zone: str | None = None
    fast_site_ppm: float | None = None
    ready_file: Path | None = None
    block: int = SIM_BLOCK


async def run_simulate(opts: SimOptions) -> list[dict[str, object]]:
    from citycast.media.keys import load_trusted_keys
    from citycast.protocol.subjects import Subjects

    subjects = Subjects(opts.prefix)
    base = SiteConfig(
        name="",
        nats_url=opts.nats_url,
        trusted_keys=load_trusted_keys(opts.trust),
        channel=opts.channel,
        delay_ns=round(opts.delay_ms * 1e6),
        time_subject=subjects.time(opts.time_zone) if opts.time_zone else None,
        subjects=subjects,
    )
    plan = plan_sites(opts.sites, seed=opts.seed, first=opts.first, fast_site_ppm=opts.fast_site_ppm)
    ready = asyncio.Event()

    async def announce() -> None:
        await ready.wait()
        if opts.ready_file is not None:
            opts.ready_file.write_text("ready\n")

    announcer = asyncio.create_task(announce())
    try:
        return await run_simulation(plan, base, seconds=opts.seconds, out_dir=opts.out, ready=ready, block=opts.block)
    finally:
        announcer.cancel()
