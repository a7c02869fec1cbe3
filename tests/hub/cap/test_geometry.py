"""Which sites an alert's areas reach: every polygon and circle of every area, careless polygons repaired, and
what is not an area refused with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from citycast.hub.cap.geometry import region, sites_inside
from citycast.hub.cap.parse import Area, CapError, parse_alert

FIXTURES = Path(__file__).parent / "fixtures"
SITES = [("s1", 24.86, 67.03), ("s2", 24.86, 67.04), ("s3", 24.81, 67.03), ("s4", 24.90, 67.10)]


def _areas(name: str) -> list[Area]:
    return [a for i in parse_alert((FIXTURES / name).read_bytes()).infos for a in i.areas]


def test_every_area_counts() -> None:
    reg = region(_areas("flood_alert.xml"))
    assert sites_inside(reg, SITES) == ["s1", "s3"]  # a polygon in Saddar, a circle in Clifton
    assert reg.repairs == ()
    assert reg.geojson()["type"] == "MultiPolygon"


def test_a_circle_is_round_on_the_ground() -> None:
    # 1.5 km around (24.81, 67.03): 1.4 km east is inside, 1.6 km east is not (a degree of longitude is
    # 101 km at this latitude, not 111).
    reg = region([Area("c", (), ("24.81,67.03 1.5",))])
    east = 1 / (111.32 * 0.9077)
    assert sites_inside(reg, [("in", 24.81, 67.03 + 1.4 * east), ("out", 24.81, 67.03 + 1.6 * east)]) == ["in"]


def test_an_unclosed_bow_tie_is_repaired_and_both_lobes_count() -> None:
    reg = region(_areas("bowtie_unclosed.xml"))
    assert sites_inside(reg, SITES) == ["s1", "s2"]
    assert any("not closed" in r for r in reg.repairs) and any("crossed itself" in r for r in reg.repairs)


@pytest.mark.parametrize(
    ("area", "reason"),
    [
        (Area("line", ("24.85,67.02 24.86,67.03 24.87,67.04 24.85,67.02",), ()), "encloses no area"),
        (Area("two", ("24.85,67.02 24.86,67.03",), ()), "three distinct points"),
        (Area("nan", ("24.85,67.02 nan,67.03 24.87,67.04 24.85,67.02",), ()), "lat,lon pair"),
        (Area("far", ("124.85,67.02 24.86,67.03 24.87,67.04 124.85,67.02",), ()), "within range"),
        (Area("junk", ("hello world",), ()), "lat,lon pair"),
        (Area("circle", (), ("24.81,67.03",)), "radius_km"),
        (Area("circle", (), ("24.81,67.03 0",)), "radius"),
        (Area("none", (), ()), "no polygon or circle"),
    ],
)
def test_what_is_not_an_area_is_refused(area: Area, reason: str) -> None:
    with pytest.raises(CapError, match=reason):
        region([area])
