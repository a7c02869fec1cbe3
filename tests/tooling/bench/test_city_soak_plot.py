"""The hour's picture: memory per process, frames lost per minute, the worst sync error, from the soak's samples."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from citycast.tooling.bench.city_soak_plot import soak_svg

SVG = "{http://www.w3.org/2000/svg}"


def _sample(t_s: float, concealed: int, rss: float) -> dict[str, object]:
    return {
        "t_s": t_s,
        "rss_mb": {"hub": 180.0, "hub/nats-server": 44.0, "site-000": rss, "site-001": rss + 2},
        "underruns": {"site-000": 0, "site-001": 0},
        "concealed": {"site-000": concealed, "site-001": concealed},
        "sync_error_ms": {"site-000": 0.05, "site-001": 0.4},
        "playing": 2,
    }


def test_the_soak_plot_draws_every_process_the_losses_and_sync() -> None:
    samples = [_sample(0, 0, 80.0), _sample(60, 0, 90.0), _sample(120, 75, 100.0), _sample(180, 75, 110.0)]
    root = ET.fromstring(soak_svg(samples, "citycast bench-city --soak-minutes 3 <test>"))
    lines = root.findall(f"{SVG}polyline")
    labels = [t.text for t in root.findall(f"{SVG}text")]
    assert len(lines) == 4  # hub, its nats-server, the sites' mean; the sync error
    assert {"hub", "hub/nats-server", "site (mean)", "sync error"} <= set(labels)
    assert "150" in labels  # the minute both sites lost 75 frames is a labelled bar
    assert "citycast bench-city --soak-minutes 3 <test>" in labels  # the title, escaped in the file
    first = [float(p.split(",")[1]) for p in lines[2].get("points", "").split()]
    assert first[0] > first[-1]  # the sites' memory rises: the line climbs (SVG's y grows downwards)


def test_a_plot_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="two samples"):
        soak_svg([_sample(0, 0, 80.0)], "t")
