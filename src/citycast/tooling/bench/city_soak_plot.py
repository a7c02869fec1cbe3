"""The soak of the deployed shape as a picture (`citycast bench-city --soak-minutes M --soak-plot FILE`).

Three panels over the address's minutes, from the per-minute samples: every process's resident memory (is anything
growing?), the frames all sites concealed in each minute (when was something lost, and everywhere or at one
site?), and the worst site's own sync error (does sync hold?). Drawn by `citycast.tooling.bench.svg_panels`, as
the simulated hours of `bench --soak-hours` are.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from citycast.tooling.bench.svg_panels import Panel, Series, panels_svg

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")

Sample = Mapping[str, Any]  # one per-minute sample as the soak's JSON keeps it (`samples`)


def _memory(s: Sample) -> dict[str, float]:
    rss = s["rss_mb"]
    out = {name: float(v) for name, v in rss.items() if not name.startswith("site-")}
    sites = [float(v) for name, v in rss.items() if name.startswith("site-")]
    out["site (mean)"] = sum(sites) / len(sites) if sites else 0.0
    return out


def soak_svg(samples: Sequence[Sample], title: str) -> str:
    """The three panels for `samples` (at least two), titled `title`."""
    if len(samples) < 2:
        raise ValueError("a soak plot needs at least two samples")
    minutes = [float(s["t_s"]) / 60 for s in samples]
    memory = [_memory(s) for s in samples]
    totals = [sum(s["concealed"].values()) for s in samples]
    lost = [0] + [max(0, b - a) for a, b in itertools.pairwise(totals)]
    panels = [
        Panel("resident memory (MB)", [
            Series(name, COLOURS[i % len(COLOURS)], [(m, mem.get(name, 0.0)) for m, mem in zip(minutes, memory,
                                                                                               strict=True)])
            for i, name in enumerate(memory[0])
        ]),
        Panel("frames concealed per minute, all sites", [
            Series("concealed", "#d62728", list(zip(minutes, map(float, lost), strict=True)), bars=True)
        ]),
        Panel("worst site's sync error (ms)", [
            Series("sync error", COLOURS[0], [(m, max(s["sync_error_ms"].values(), default=0.0))
                                              for m, s in zip(minutes, samples, strict=True)])
        ]),
    ]  # fmt: skip
    return panels_svg(title, panels)
