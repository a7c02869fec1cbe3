"""The soak of the deployed shape as a picture (`citycast bench-city --soak-minutes M --soak-plot FILE`).

Three panels over the address's minutes, from the per-minute samples: every process's resident memory (is anything
growing?), the frames all sites concealed in each minute (when was something lost, and everywhere or at one
site?), and the worst site's own sync error (does sync hold?). Plain SVG, written by hand: a few lines and bars do
not need a plotting library on the box that runs the benchmark.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any

WIDTH, HEIGHT = 900, 560
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 30, 40
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")

Sample = Mapping[str, Any]  # one per-minute sample as the soak's JSON keeps it (`samples`)


def _sites_mean(rss: Mapping[str, float]) -> float:
    sites = [v for k, v in rss.items() if k.startswith("site-")]
    return sum(sites) / len(sites) if sites else 0.0


def _memory(s: Sample) -> dict[str, float]:
    rss = s["rss_mb"]
    out = {name: float(v) for name, v in rss.items() if not name.startswith("site-")}
    out["site (mean)"] = _sites_mean(rss)
    return out


def _concealed_per_minute(samples: Sequence[Sample]) -> list[int]:
    totals = [sum(s["concealed"].values()) for s in samples]
    return [0] + [max(0, b - a) for a, b in itertools.pairwise(totals)]


def soak_svg(samples: Sequence[Sample], title: str) -> str:
    """The three panels for `samples` (at least two), titled `title`."""
    if len(samples) < 2:
        raise ValueError("a soak plot needs at least two samples")
    t_max = max(float(samples[-1]["t_s"]) / 60, 1e-9)
    panel_h = (HEIGHT - TOP - BOTTOM) / 3 - 30
    plot_w = WIDTH - LEFT - RIGHT

    def x_of(t_s: float) -> float:
        return LEFT + (t_s / 60) / t_max * plot_w

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="14">{escape(title)}</text>',
    ]
    lines: list[tuple[str, Callable[[Sample], Mapping[str, float]]]] = [
        ("resident memory (MB)", _memory),
        ("worst site's sync error (ms)", lambda s: {"sync error": max(s["sync_error_ms"].values(), default=0.0)}),
    ]
    panels: list[tuple[str, Mapping[str, list[float]] | list[int]]] = [
        (lines[0][0], _series(samples, lines[0][1])),
        ("frames concealed per minute, all sites", _concealed_per_minute(samples)),
        (lines[1][0], _series(samples, lines[1][1])),
    ]
    for i, (name, data) in enumerate(panels):
        y0 = TOP + 20 + i * (panel_h + 40)
        out.append(f'<text x="{LEFT}" y="{y0 - 4:.1f}">{escape(name)}</text>')
        out.append(f'<rect x="{LEFT}" y="{y0:.1f}" width="{plot_w}" height="{panel_h:.1f}" fill="none" stroke="#999"/>')
        if isinstance(data, list):
            top = float(max(max(data), 1))
            for s, v in zip(samples, data, strict=True):
                h = v / top * panel_h
                x = x_of(float(s["t_s"]))
                out.append(
                    f'<rect x="{x - 3:.1f}" y="{y0 + panel_h - h:.1f}" width="6" height="{h:.1f}" fill="#d62728"/>'
                )
                if v:
                    out.append(f'<text x="{x + 5:.1f}" y="{y0 + panel_h - h + 12:.1f}">{v}</text>')
        else:
            top = max((max(vs) for vs in data.values()), default=1.0) * 1.1 or 1.0
            for j, (label, values) in enumerate(data.items()):
                pts = " ".join(
                    f"{x_of(float(s['t_s'])):.1f},{y0 + panel_h - v / top * panel_h:.1f}"
                    for s, v in zip(samples, values, strict=True)
                )
                colour = COLOURS[j % len(COLOURS)]
                out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
                out.append(
                    f'<text x="{WIDTH - RIGHT - 150}" y="{y0 + 14 + 13 * j:.1f}" fill="{colour}">{escape(label)}</text>'
                )
        for frac in (0.0, 0.5, 1.0):
            out.append(f'<text x="{LEFT - 6}" y="{y0 + panel_h - frac * panel_h + 4:.1f}" text-anchor="end">'
                       f"{frac * top:.3g}</text>")  # fmt: skip
    step = 10 if t_max > 20 else 1
    for m in range(0, int(t_max) + 1, step):
        out.append(f'<text x="{LEFT + m / t_max * plot_w:.1f}" y="{HEIGHT - 22}" text-anchor="middle">{m}</text>')
    out.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 6}" text-anchor="middle">minutes into the address</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _series(samples: Sequence[Sample], pick: Callable[[Sample], Mapping[str, float]]) -> dict[str, list[float]]:
    picked = [pick(s) for s in samples]
    return {name: [float(p.get(name, 0.0)) for p in picked] for name in picked[0]}
