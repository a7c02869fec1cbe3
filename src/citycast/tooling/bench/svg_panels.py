"""Stacked panels over the minutes of an address, as plain SVG: the picture of a soak (the simulated hours of
`bench --soak-hours`, the real hour of `bench-city --soak-minutes`). A few lines, dots and bars do not need a
plotting library on the box that runs the benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

LEFT, RIGHT, TOP, PANEL_H, GAP = 70, 20, 40, 150, 45


@dataclass(frozen=True)
class Series:
    label: str
    colour: str
    points: Sequence[tuple[float, float]]  # (minute, value)
    bars: bool = False  # a bar per point, labelled with its value when not zero, instead of a line with dots


@dataclass(frozen=True)
class Panel:
    title: str
    series: Sequence[Series]


@dataclass(frozen=True)
class Band:
    """A stretch of the address to shade on every panel (a fault), named on the first."""

    start_min: float
    end_min: float
    label: str


def panels_svg(
    title: str, panels: Sequence[Panel], bands: Sequence[Band] = (), x_max: float | None = None, width: int = 900
) -> str:
    """`panels` one above the other over minutes 0..`x_max` (default: the last point's minute)."""
    height = TOP + len(panels) * (PANEL_H + GAP)
    if x_max is None:
        x_max = max((m for p in panels for s in p.series for m, _ in s.points), default=1.0)
    x_max = x_max or 1.0
    plot_w = width - LEFT - RIGHT

    def x(m: float) -> float:
        return LEFT + plot_w * m / x_max

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{LEFT}" y="20" font-size="13">{escape(title)}</text>']  # fmt: skip
    for p, panel in enumerate(panels):
        y0 = TOP + p * (PANEL_H + GAP)
        y_max = max((v for s in panel.series for _, v in s.points), default=1.0) * 1.15 or 1.0
        for band in bands:
            a, b = x(band.start_min), x(band.end_min)
            out.append(f'<rect x="{a:.1f}" y="{y0}" width="{max(b - a, 2):.1f}" height="{PANEL_H}" fill="#eee"/>')
            if p == 0:
                out.append(f'<text x="{a:.1f}" y="{y0 - 3}" fill="#777">{escape(band.label)}</text>')
        out.append(f'<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#999"/>')
        caption = f"{escape(panel.title)}; x: minutes into the address"
        out.append(f'<text x="{LEFT}" y="{y0 + PANEL_H + 28}">{caption}</text>')
        for frac in (0.0, 0.5, 1.0):
            out.append(f'<text x="{LEFT - 5}" y="{y0 + PANEL_H - frac * PANEL_H + 4:.1f}" text-anchor="end">'
                       f"{y_max * frac:.3g}</text>")  # fmt: skip
        for m in range(0, int(x_max) + 1, 30 if x_max > 60 else 5):
            out.append(f'<text x="{x(m):.1f}" y="{y0 + PANEL_H + 13}" text-anchor="middle">{m}</text>')
        for series in panel.series:
            pts = [(x(m), y0 + PANEL_H - PANEL_H * v / y_max, v) for m, v in series.points]
            if series.bars:
                for px, py, v in pts:
                    bar = f'x="{px - 3:.1f}" y="{py:.1f}" width="6" height="{y0 + PANEL_H - py:.1f}"'
                    out.append(f'<rect {bar} fill="{series.colour}"/>')
                    if v:
                        out.append(f'<text x="{px + 5:.1f}" y="{py + 12:.1f}">{v:g}</text>')
            elif pts:
                path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in pts)
                out.append(f'<polyline points="{path}" fill="none" stroke="{series.colour}" stroke-width="1.5"/>')
                out.extend(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2" fill="{series.colour}"/>' for px, py, _ in pts)
        for i, series in enumerate(panel.series):
            at = f'x="{LEFT + 8}" y="{y0 + 14 + 13 * i}"'
            out.append(f'<text {at} fill="{series.colour}">{escape(series.label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
