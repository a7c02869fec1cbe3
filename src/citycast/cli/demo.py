"""The demo (`citycast demo`): a hub, its console and enrolled sites on this machine, one clip to all."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from citycast.cli.common import console

app = typer.Typer()


@app.command()
def demo(
    sites: Annotated[int, typer.Option(min=1, max=64, help="Site agents to start, each its own process.")] = 8,
    out: Annotated[Path, typer.Option(help="Where the hub's data and the sites' WAV files go.")] = Path(
        "citycast-out/demo"
    ),
    delay_ms: Annotated[float, typer.Option(help="Playout delay D.")] = 80.0,
    source: Annotated[str | None, typer.Option(help="What to play (default: the bundled speech clip).")] = None,
    http: Annotated[str, typer.Option(help="Where the console listens, HOST:PORT.")] = "127.0.0.1:8000",
    linger: Annotated[
        float | None,
        typer.Option(help="Seconds to keep the console up after the measured address (default: until Ctrl-C)."),
    ] = None,
) -> None:
    """Run a hub with its console and N enrolled sites in Karachi; speak a clip to all; report latency and sync.

    Prints the console's address and a one-time admin password, then keeps the console up."""
    from citycast.tooling.demo import run_demo

    code = run_demo(sites=sites, out=out, delay_ms=delay_ms, source=source, console=console, http=http, linger=linger)
    raise typer.Exit(code)
