"""`citycast bench --soak-hours H`: run a soak with a progress bar and print what it found.

With `--wan none` the LAN soak (the clock and the playout over hours); with a WAN profile the deployed shape over
that profile's long-haul paths, merged, with scripted faults: a table per 10 minutes, JSON and an SVG plot."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from citycast.tooling.bench.soak import CitySoak, LongHaul, SoakSite, run_city_soak, run_soak
from citycast.tooling.bench.svg_panels import Band, Panel, Series, panels_svg


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


# -- the deployed shape: `citycast bench --soak-hours H --wan PROFILE [--paths 2] [--shared-loss F]` -------------


def city_soak_command(
    *,
    hours: float,
    sites: int,
    wan: str,
    paths: int,
    shared_loss: float,
    delay_ms: float,
    seed: int,
    json_out: Path | None,
    plot_out: Path | None,
    console: Console,
    clock: str = "city",
) -> CitySoak:
    from citycast.tooling.bench.wan import get_profile

    profile = get_profile(wan)
    link = LongHaul(profile.delay_ms, profile.jitter_ms, profile.loss)
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.2f}/{task.total:.2f} h"),
        TimeElapsedColumn(), console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task(f"simulated address over {paths} path(s), {sites} sites", total=hours * sites)
        done = [0.0, -1.0]

        def tick(seconds: float) -> None:
            if seconds < done[1]:
                done[0] += hours  # the next site started
            done[1] = seconds
            progress.update(task, completed=done[0] + seconds / 3600)

        result = run_city_soak(hours=hours, sites=sites, paths=paths, link=link, shared_loss=shared_loss,
                               delay_ns=round(delay_ms * 1e6), seed=seed, city_clock=clock != "hub",
                               correction=clock == "city", progress=tick)  # fmt: skip
    ran_s = time.monotonic() - started
    command = (f"citycast bench --soak-hours {hours:g} --wan {wan} --paths {paths} --shared-loss {shared_loss:g} "
               f"--delay {delay_ms:g} --sites {sites} --soak-clock {clock}")  # fmt: skip
    print_city_soak(result, command, console)
    console.print(f"ran in {ran_s:.0f} s; load {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    figures = city_soak_json(result, command, ran_s)
    if json_out is not None:
        json_out.write_text(json.dumps(figures, indent=1))
    if plot_out is not None:
        plot_out.write_text(soak_svg(figures))
    return result


def city_soak_json(result: CitySoak, command: str, ran_s: float) -> dict[str, Any]:
    return {
        "command": command,
        "hours": result.hours,
        "paths": result.paths,
        "shared_loss": result.shared_loss,
        "delay_ms": result.delay_ms,
        "city_clock": result.city_clock,
        "correction": result.correction,
        "link": asdict(result.link),
        "ran_s": round(ran_s, 1),
        "load": [round(x, 2) for x in os.getloadavg()],
        "rows": [{k: _num(v) for k, v in asdict(r).items()} for r in result.rows],
        "faults": [{k: _num(v) for k, v in asdict(f).items()} for f in result.faults],
        "late_copies_per_path": result.retransmissions,
        "sites": [
            {
                "dac_ppm": s.dac_ppm,
                "clock_ppm": s.clock.ppm,
                "stats": asdict(s.engine.stats),
                "first_by_uplink": s.merge.first_by_uplink,
            }
            for s in result.sites
        ],
    }


def _num(v: object) -> object:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 3)
    return v


def print_city_soak(result: CitySoak, command: str, console: Console) -> None:
    table = Table(title=f"{command}: per 10 simulated minutes (fleet: counters summed, p99s the worst site's)")
    for col in ("min", "underruns", "concealed", "late", "dup", "fallback s", "sync err p99 µs", "marker err p99 µs",
                "skew p99 µs", "city clock p99 µs", "RSS MB", "jb max", "merge", "est kept"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in result.rows:
        table.add_row(f"{r.minute:.0f}", str(r.underruns), str(r.concealed), str(r.late), str(r.duplicates),
                      f"{r.fallback_s:.1f}", f"{r.sync_error_p99_us:.2f}", f"{r.marker_error_p99_us:.2f}",
                      f"{r.skew_p99_us:.2f}", _opt_nan(r.city_clock_p99_us), f"{r.rss_mb:.0f}",
                      str(r.jitter_buffer_max), str(r.merge_streams),
                      str(r.estimator_kept))  # fmt: skip
    console.print(table)
    faults = Table(title="faults (worst site; fallback and counters from the fault's start to 60 s after its end)")
    for col in ("fault", "at min", "s", "concealed", "underruns", "fallback s", "frames back s", "resync s",
                "sync err max µs", "responder switches"):  # fmt: skip
        faults.add_column(col, justify="right")
    for f in result.faults:
        faults.add_row(f.kind, f"{f.start_s / 60:.1f}", f"{f.duration_s:g}", str(f.concealed), str(f.underruns),
                       f"{f.fallback_s:.1f}", _opt(f.frames_back_s), _opt(f.resync_s), f"{f.sync_error_max_us:.1f}",
                       str(f.responder_switches))  # fmt: skip
    console.print(faults)


def _opt_nan(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.1f}"


def _opt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def soak_svg(figures: dict[str, Any], width: int = 900) -> str:
    """Three panels over the address's minutes: sync error and skew p99 (µs), RSS (MB), and the seconds of
    fallback and concealed frames per row; the faults as shaded bands."""
    rows = figures["rows"]

    def series(key: str, colour: str) -> Series:
        return Series(key, colour, [(r["minute"], r[key]) for r in rows if r.get(key) is not None])

    panels = [
        Panel("sync error p99 / marker skew p99 (µs)", [series("sync_error_p99_us", "#1f77b4"),
                                                        series("skew_p99_us", "#d62728")]),
        Panel("RSS of the process (MB)", [series("rss_mb", "#2ca02c")]),
        Panel("per row: fallback s / concealed frames", [series("fallback_s", "#ff7f0e"),
                                                         series("concealed", "#9467bd")]),
    ]  # fmt: skip
    bands = [Band(f["start_s"] / 60, (f["start_s"] + f["duration_s"]) / 60, f["kind"]) for f in figures["faults"]]
    x_max = max((r["minute"] for r in rows), default=1.0)
    return panels_svg(figures["command"], panels, bands, x_max=x_max, width=width)
