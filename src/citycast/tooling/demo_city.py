"""The demo city: Karachi's districts, its zones, and where the demo's loudspeakers stand.

Coordinates are approximate centres of real districts/towns (public map facts), jittered a little per site.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class District:
    name: str
    lat: float
    lon: float
    zone: str


ZONES: dict[str, tuple[int, str]] = {  # zone -> (idle channel, colour)
    "Saddar & Lyari": (1, "#ef4444"),
    "Clifton": (2, "#f59e0b"),
    "Gulshan & Gulberg": (3, "#10b981"),
    "Korangi & Landhi": (4, "#3b82f6"),
    "Orangi & Baldia": (5, "#8b5cf6"),
    "North Nazimabad": (6, "#ec4899"),
    "Malir": (7, "#14b8a6"),
}

DISTRICTS = [
    District("Saddar", 24.8560, 67.0250, "Saddar & Lyari"),
    District("Clifton", 24.8138, 67.0300, "Clifton"),
    District("Gulshan-e-Iqbal", 24.9204, 67.0932, "Gulshan & Gulberg"),
    District("Korangi", 24.8312, 67.1320, "Korangi & Landhi"),
    District("Orangi", 24.9500, 66.9900, "Orangi & Baldia"),
    District("North Nazimabad", 24.9390, 67.0370, "North Nazimabad"),
    District("Lyari", 24.8700, 66.9950, "Saddar & Lyari"),
    District("Malir", 24.8930, 67.2000, "Malir"),
    District("Landhi", 24.8500, 67.2100, "Korangi & Landhi"),
    District("Baldia", 24.9200, 66.9650, "Orangi & Baldia"),
    District("Gulberg", 24.9400, 67.0700, "Gulshan & Gulberg"),
    District("Shah Faisal", 24.8800, 67.1600, "Korangi & Landhi"),
]


@dataclass(frozen=True)
class PlannedSite:
    name: str
    label: str
    lat: float
    lon: float
    zone: str


def plan_city(n: int, rng: random.Random) -> list[PlannedSite]:
    """n sites, spread over the districts in turn (the first 12 cover each district once)."""
    out = []
    for i in range(n):
        d = DISTRICTS[i % len(DISTRICTS)]
        k = i // len(DISTRICTS) + 1
        slug = d.name.lower().replace(" ", "-").replace("-e-", "-")
        out.append(
            PlannedSite(
                name=f"{slug}-{k}",
                label=f"{d.name} #{k}",
                lat=round(d.lat + rng.uniform(-0.008, 0.008), 5),
                lon=round(d.lon + rng.uniform(-0.008, 0.008), 5),
                zone=d.zone,
            )
        )
    return out
