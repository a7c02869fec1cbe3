"""`citycast bench --soak-hours H`: run the soak with a progress bar and print what it found."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from citycast.tooling.bench.soak import SoakSite, run_soak


def soak_command(*, hours: float, sites: int, delay_ms: float, json_out: Path | None, console: Console) -> None:
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.2f}/{task.total:.2f} h"),
        TimeElapsedColumn(), console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task(f"simulated address, {sites} sites one after another", total=hours * sites)
        done = [0.0]

        def tick(seconds: float) -> None:
            progress.update(task, completed=done[0] + seconds / 3600)

        result = []
        for i in range(sites):
            result.extend(
                run_soak(
                    hours=hours, sites=1, delay_ns=round(delay_ms * 1e6), seed=i + 1, fast_first=i == 0, progress=tick
                )
            )
            done[0] += hours
    table = Table(title=f"citycast bench --soak-hours {hours:g}: |heard − due| per checkpoint (ms), RSS (MB)")
    table.add_column("hour")
    for i, s in enumerate(result):
        table.add_column(f"site {i} (DAC {s.dac_ppm:+.0f} ppm, clock {s.clock.ppm:+.0f} ppm)", justify="right")
    for row in range(max(len(s.checkpoints) for s in result)):
        cells = []
        for s in result:
            c = s.checkpoints[row] if row < len(s.checkpoints) else None
            cells.append(f"{c.max_abs_error_ms:.4f} ms, {c.markers} markers, {c.rss_mb:.0f} MB" if c else "")
        first = next(s.checkpoints[row] for s in result if row < len(s.checkpoints))
        table.add_row(f"{first.hour:.2f}", *cells)
    console.print(table)
    worst = max(c.max_abs_error_ms for s in result for c in s.checkpoints)
    stats = [asdict(s.engine.stats) for s in result]
    console.print(
        f"worst |error| {worst:.4f} ms over {hours:g} h; resyncs {sum(st['resyncs'] for st in stats)}, "
        f"underruns {sum(st['underruns'] for st in stats)}; ran in {time.monotonic() - started:.0f} s"
    )
    if json_out is not None:
        figures = {
            "command": f"citycast bench --soak-hours {hours:g}",
            "hours": hours,
            "worst_abs_error_ms": worst,
            "sites": [_site_json(s) for s in result],
        }
        json_out.write_text(json.dumps(figures, indent=1))


def _site_json(s: SoakSite) -> dict[str, object]:
    return {
        "dac_ppm": s.dac_ppm,
        "clock_ppm": s.clock.ppm,
        "checkpoints": [asdict(c) for c in s.checkpoints],
        "stats": asdict(s.engine.stats),
    }
