"""Simulated fleets on a real bus: full site agents in one process (`simulate`) and light receivers
that only count what the bus delivers (`probe`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from citycast import runtime
from citycast.cli.common import DEFAULT_NATS, ChannelOpt, NatsOpt, PrefixOpt

app = typer.Typer()


@app.command()
def simulate(
    sites: Annotated[int, typer.Option("--sites", min=1, help="How many full site agents to run.")] = 10,
    nats: NatsOpt = DEFAULT_NATS,
    trust: Annotated[Path, typer.Option(help="File of trusted ingest public keys.")] = Path("keys/trusted.keys"),
    channel: ChannelOpt = 1,
    prefix: PrefixOpt = "citycast",
    delay_ms: Annotated[float, typer.Option(help="Playout delay D.")] = 80.0,
    seconds: Annotated[float, typer.Option(help="How long to play.")] = 30.0,
    out: Annotated[Path | None, typer.Option(help="Write each site's WAV (+ timing sidecar) here.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sites' clock errors.")] = 1,
    first: Annotated[int, typer.Option(help="Number of the first site (to split a fleet over processes).")] = 0,
    time_zone: Annotated[str | None, typer.Option(help="Sync to this city's time responder.")] = None,
    fast_site_ppm: Annotated[float | None, typer.Option(help="Site 0's DAC runs exactly this many ppm fast.")] = None,
    ready_file: Annotated[Path | None, typer.Option(hidden=True)] = None,
    block: Annotated[int, typer.Option(min=120, max=4800, help="Samples per DAC block (sound-card period).")] = 480,
) -> None:
    """Run N real site agents in this process, each with its own wrong clock and drifting DAC, into timed sinks."""
    from citycast.tooling.sim.simulate import SimOptions, run_simulate

    opts = SimOptions(
        sites=sites,
        nats_url=nats,
        trust=trust,
        channel=channel,
        prefix=prefix,
        delay_ms=delay_ms,
        seconds=seconds,
        out=out,
        seed=seed,
        first=first,
        time_zone=time_zone,
        fast_site_ppm=fast_site_ppm,
        ready_file=ready_file,
        block=block,
    )
    runtime.run(run_simulate(opts))


@app.command()
def probe(
    count: Annotated[int, typer.Option(min=1, help="Probe connections (light receivers, not full sites).")] = 100,
    nats: NatsOpt = DEFAULT_NATS,
    channel: ChannelOpt = 1,
    prefix: PrefixOpt = "citycast",
    seconds: Annotated[float, typer.Option(help="How long to listen.")] = 30.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write figures here.")] = None,
) -> None:
    """Light fan-out probes: subscribe and check sequence/timestamps only, to measure what the bus delivers."""
    from citycast.protocol.subjects import Subjects
    from citycast.tooling.bench.probe import probe_report, run_probes

    stats = runtime.run(run_probes(nats, Subjects(prefix).audio(channel), count, seconds))
    if stats is None:
        raise typer.Exit(1)
    figures = probe_report(stats, count)
    text = json.dumps(figures, indent=1)
    if json_out:
        json_out.write_text(text)
    else:
        sys.stdout.write(text + "\n")
