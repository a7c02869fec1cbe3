"""Which sites an alert reaches: its `<area>`s' polygons and circles as shapely shapes (x = longitude,
y = latitude, as WGS 84 degrees), repaired when a sender drew them carelessly, then a point-in-shape test per site.

CAP writes points "lat,lon" (latitude first). A polygon must be closed (first point = last); one that is not is
closed here, and a self-intersecting one (a bow tie) is made valid with shapely's `make_valid` (both lobes
count). What cannot be a region at all (fewer than three distinct points, numbers out of range) is a `CapError`.
A circle is "lat,lon radius_km"; at city scale it is drawn as an ellipse in degrees (a degree of longitude is
shorter by cos(latitude)), good to metres over a few tens of kilometres."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from shapely import make_valid
from shapely.affinity import scale
from shapely.geometry import Point, Polygon, mapping
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from citycast.hub.cap.parse import Area, CapError

KM_PER_DEGREE = 111.32
MIN_AREA_DEG2 = 1e-10  # about a square metre: less is a line drawn as a polygon (or rounding error)


@dataclass(frozen=True)
class Region:
    shape: BaseGeometry
    repairs: tuple[str, ...]  # what was fixed, for the audit log and the sender

    def geojson(self) -> dict[str, object]:
        return dict(mapping(self.shape))


def _point(pair: str, where: str) -> tuple[float, float]:
    lat_s, sep, lon_s = pair.partition(",")
    try:
        lat, lon = float(lat_s), float(lon_s)
    except ValueError:
        raise CapError(f"{where}: {pair!r} is not a lat,lon pair") from None
    if not sep or not (-90 <= lat <= 90 and -180 <= lon <= 180) or math.isnan(lat) or math.isnan(lon):
        raise CapError(f"{where}: {pair!r} is not a lat,lon pair within range")
    return lon, lat


def polygon(text: str, where: str) -> tuple[BaseGeometry, list[str]]:
    points = [_point(p, where) for p in text.split()]
    repairs = []
    if len(points) >= 2 and points[0] != points[-1]:
        points.append(points[0])
        repairs.append(f"{where}: the polygon was not closed; closed it")
    if len({*points}) < 3:
        raise CapError(f"{where}: a polygon needs at least three distinct points")
    shape: BaseGeometry = Polygon(points)
    if not shape.is_valid:
        shape = make_valid(shape)
        repairs.append(f"{where}: the polygon crossed itself; repaired (every enclosed part counts)")
    if shape.area < MIN_AREA_DEG2:
        raise CapError(f"{where}: the polygon encloses no area")
    return shape, repairs


def circle(text: str, where: str) -> BaseGeometry:
    centre, _, radius_s = text.strip().partition(" ")
    lon, lat = _point(centre, where)
    try:
        radius_km = float(radius_s)
    except ValueError:
        raise CapError(f"{where}: {text!r} is not 'lat,lon radius_km'") from None
    if not 0 < radius_km <= 1000 or math.isnan(radius_km):
        raise CapError(f"{where}: a circle's radius must be above 0 and at most 1000 km")
    dlat = radius_km / KM_PER_DEGREE
    dlon = dlat / max(0.01, math.cos(math.radians(lat)))
    return scale(Point(lon, lat).buffer(1.0, quad_segs=32), xfact=dlon, yfact=dlat)


def region(areas: Iterable[Area]) -> Region:
    """Every polygon and circle of every area, as one shape."""
    shapes: list[BaseGeometry] = []
    repairs: list[str] = []
    for n, area in enumerate(areas, 1):
        name = f"area {n} ({area.description})" if area.description else f"area {n}"
        for k, text in enumerate(area.polygons, 1):
            shape, fixed = polygon(text, f"{name} polygon {k}")
            shapes.append(shape)
            repairs += fixed
        for k, text in enumerate(area.circles, 1):
            shapes.append(circle(text, f"{name} circle {k}"))
    if not shapes:
        raise CapError("the alert has no polygon or circle: it cannot be placed on the map")
    return Region(unary_union(shapes), tuple(repairs))


def sites_inside(reg: Region, sites: Iterable[tuple[str, float, float]]) -> list[str]:
    """Names of the sites (name, lat, lon) within the region, its edge included."""
    return [name for name, lat, lon in sites if reg.shape.covers(Point(lon, lat))]
