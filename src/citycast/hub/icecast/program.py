"""What each Icecast mount group carries now. Pure: from the addresses on air and the zones, nothing else.

Groups: ``all`` ("everything on air": the address the city hears first, the same pick the zones make: highest
priority, then the newest) and ``zone-<id>`` per zone (the address that zone plays, else the zone's own idle
channel). One address per mount at a time: a mount forwards one channel's packets as they are, so two
addresses at once are not mixed (mixing would mean decoding and re-encoding every mount).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from citycast.hub.db.models import PRIORITY_RANK, Priority

__all__ = ["ALL_GROUP", "IDLE_TITLE", "Program", "ZoneInfo", "programs", "zone_group"]

ALL_GROUP = "all"
IDLE_TITLE = "(nothing on air)"


@dataclass(frozen=True)
class Program:
    channel: int | None  # None: silence
    title: str


@dataclass(frozen=True)
class ZoneInfo:
    id: int
    name: str
    idle_channel: int


def zone_group(zone_id: int) -> str:
    return f"zone-{zone_id}"


def _rank(address: Mapping[str, Any], order: int) -> tuple[int, int]:
    try:
        rank = PRIORITY_RANK[Priority(str(address.get("priority")))]
    except ValueError:
        rank = -1
    return rank, order


def programs(live: Sequence[Mapping[str, Any]], zones: Iterable[ZoneInfo]) -> dict[str, Program]:
    """``live`` is `AddressManager.live()` (in start order, as the console gets it)."""
    best_all: tuple[tuple[int, int], Mapping[str, Any]] | None = None
    best_zone: dict[int, tuple[tuple[int, int], Mapping[str, Any]]] = {}
    for order, a in enumerate(live):
        key = _rank(a, order)
        if best_all is None or key > best_all[0]:
            best_all = (key, a)
        for z in a.get("zone_ids", []):
            if z not in best_zone or key > best_zone[z][0]:
                best_zone[z] = (key, a)
    out = {ALL_GROUP: Program(None, IDLE_TITLE)}
    if best_all is not None:
        out[ALL_GROUP] = Program(int(best_all[1]["channel"]), str(best_all[1].get("title") or ""))
    for zone in zones:
        if zone.id in best_zone:
            a = best_zone[zone.id][1]
            out[zone_group(zone.id)] = Program(int(a["channel"]), str(a.get("title") or ""))
        else:
            out[zone_group(zone.id)] = Program(zone.idle_channel, f"{zone.name}: {IDLE_TITLE}")
    return out
