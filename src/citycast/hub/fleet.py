"""The live state of the fleet, from the telemetry each site sends every second (sans-IO: time is passed in).

The console shows each site in one of six states, derived from what the site last reported and how long ago:

- `offline`: no telemetry for more than 10 s (or never, for an enrolled site);
- `fault`: not synced for more than 30 s, or a sync error above 5 ms (left below 4 ms, so a site hovering at the
  limit does not flap). The sync error (`Telemetry.sync_error_ms`) is how far the site may play from the instant
  its time source names: its clock estimate's own error plus its DAC's tracking error. The asymmetry of the path
  to the time source is not in it: no exchange can see it, it is constant for a path, and across a long haul its
  bound (half the round trip, ≈ 60 ms) would call every site straight on a hub abroad a fault while it plays in
  step; the view shows that bound apart (`clock_asymmetry_ms`);
- `fallback`: the stream stopped and the site plays its fallback audio;
- `muted`: muted by an operator while otherwise playing or idle;
- `playing`, `idle`: as the site's engine says. A site still syncing within its 30 s grace counts as `idle`:
  it is healthy, just not placed in time yet.

Times are wall-clock nanoseconds (`time.time_ns()` in the hub), so `last_seen_s` in a view is Unix seconds that a
browser can turn into "3 s ago" itself. Cost matters: 2,000 sites x 1 message/s go through `on_telemetry` on one
core, so it does a handful of dict operations and builds one small dict.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from citycast.protocol.telemetry import FORGED, Telemetry

OFFLINE_AFTER_NS = 10_000_000_000
UNSYNCED_FAULT_AFTER_NS = 30_000_000_000
SYNC_ERROR_FAULT_MS = 5.0
SYNC_ERROR_CLEAR_MS = 4.0

STATES = ("playing", "idle", "fallback", "muted", "fault", "offline")
ENGINE_STATES = frozenset({"syncing", "idle", "playing", "fallback"})
# Rejection reasons that mean someone put foreign or tampered audio on the bus (not a late or early frame).
FORGED_REASONS = FORGED
LEVEL_FLOOR_DBFS = -180.0  # what the engine reports for silence

SiteView = dict[str, Any]


@dataclass(frozen=True)
class Change:
    """A site's console state changed."""

    site: str
    old: str
    new: str
    at_ns: int
    detail: str = ""


@dataclass(frozen=True)
class Totals:
    """Fleet-wide counters, monotonic: a site that restarts (its counters fall back to 0) adds nothing negative."""

    underruns: int = 0
    concealed: int = 0
    rejected: int = 0
    forged: int = 0


class _Site:
    __slots__ = (
        "forged",
        "last_seen_ns",
        "name",
        "rejected",
        "state",
        "sync_fault",
        "syncing_since_ns",
        "telemetry",
        "view",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.telemetry: Telemetry | None = None
        self.state = "offline"
        self.last_seen_ns: int | None = None
        self.syncing_since_ns: int | None = None
        self.sync_fault = False
        self.rejected = 0
        self.forged = 0
        self.view: SiteView = _empty_view(name)


def _empty_view(name: str) -> SiteView:
    return {
        "name": name,
        "state": "offline",
        "channel": None,
        "level_rms_dbfs": None,
        "level_peak_dbfs": None,
        "buffer_ms": None,
        "sync_error_ms": None,
        "clock_asymmetry_ms": None,
        "underruns": 0,
        "concealed": 0,
        "rejected": 0,
        "forged": 0,
        "volume": None,
        "muted": None,
        "last_seen_s": None,
    }


def _num(x: float, digits: int) -> float | None:
    """Round for display; a non-finite value (a site's bug, or JSON's Infinity) becomes null, never NaN in JSON."""
    return round(x, digits) if math.isfinite(x) else None


def _delta(old: int, new: int) -> int:
    return new - old if new >= old else new


MAX_PATHS_SHOWN = 8


def _paths(value: object) -> dict[str, bool]:
    """The paths a site reports (`Telemetry.paths`), as the console may show them: a site's telemetry is its own
    word, so at most a few, named briefly, each up or not."""
    if not isinstance(value, dict):
        return {}
    items = [(k, v) for k, v in value.items() if isinstance(k, str) and isinstance(v, bool)]
    return {k[:80]: v for k, v in items[:MAX_PATHS_SHOWN]}


def _level(x: float) -> float:
    return round(max(x, LEVEL_FLOOR_DBFS), 1) if math.isfinite(x) else LEVEL_FLOOR_DBFS


class FleetState:
    def __init__(
        self,
        *,
        offline_after_ns: int = OFFLINE_AFTER_NS,
        unsynced_fault_after_ns: int = UNSYNCED_FAULT_AFTER_NS,
    ) -> None:
        self.offline_after_ns = offline_after_ns
        self.unsynced_fault_after_ns = unsynced_fault_after_ns
        self._sites: dict[str, _Site] = {}
        # Sites that are not offline, least recently heard first: `tick` stops at the first recent one.
        self._online: OrderedDict[str, None] = OrderedDict()
        self._dirty: dict[str, None] = {}
        self._counts = dict.fromkeys(STATES, 0)
        self._totals = {"underruns": 0, "concealed": 0, "rejected": 0, "forged": 0}

    # -- enrolment --------------------------------------------------------------------------------------------
    def known(self, names: Iterable[str]) -> None:
        """Register enrolled sites, so they show (as offline) before their first telemetry."""
        for name in names:
            self._get(name)

    def forget(self, name: str) -> None:
        """A deleted site leaves the fleet."""
        site = self._sites.pop(name, None)
        if site is not None:
            self._counts[site.state] -= 1
            self._online.pop(name, None)
            self._dirty.pop(name, None)

    def _get(self, name: str) -> _Site:
        site = self._sites.get(name)
        if site is None:
            site = self._sites[name] = _Site(name)
            self._counts["offline"] += 1
            self._dirty[name] = None
        return site

    # -- input ------------------------------------------------------------------------------------------------
    def on_telemetry(self, t: Telemetry, now_ns: int) -> Change | None:
        """Take one site's report; returns the change of its console state, if any."""
        site = self._get(t.site)
        prev = site.telemetry
        was_offline = site.state == "offline"
        rejected = sum(t.rejected.values())
        forged = sum(v for k, v in t.rejected.items() if k in FORGED_REASONS)
        if prev is not None:
            tot = self._totals
            # A counter that went down means the site restarted: everything it reports now is new.
            tot["underruns"] += _delta(prev.underruns, t.underruns)
            tot["concealed"] += _delta(prev.concealed, t.concealed)
            tot["rejected"] += _delta(site.rejected, rejected)
            tot["forged"] += _delta(site.forged, forged)
        site.rejected, site.forged = rejected, forged
        site.telemetry = t
        site.last_seen_ns = now_ns
        self._online[t.site] = None
        self._online.move_to_end(t.site)

        if t.state == "syncing":
            if site.syncing_since_ns is None or was_offline:
                site.syncing_since_ns = now_ns
        else:
            site.syncing_since_ns = None
        err = t.sync_error_ms
        if t.state == "syncing":
            site.sync_fault = False  # not placed in time yet: its error estimate means nothing
        elif not math.isfinite(err) or err > SYNC_ERROR_FAULT_MS:
            site.sync_fault = True
        elif err < SYNC_ERROR_CLEAR_MS:
            site.sync_fault = False

        state, detail = self._derive(site, t, now_ns)
        view = {
            "name": t.site,
            "state": state,
            "channel": t.channel,
            "level_rms_dbfs": _level(t.level_rms_dbfs),
            "level_peak_dbfs": _level(t.level_peak_dbfs),
            "buffer_ms": _num(t.buffer_ms, 1),
            # While syncing the estimate means nothing (and is large): show none rather than a false alarm.
            "sync_error_ms": None if t.state == "syncing" else _num(err, 3),
            "clock_asymmetry_ms": (
                _num(float(t.clock_asymmetry_ms), 2)
                if t.state != "syncing" and isinstance(t.clock_asymmetry_ms, int | float)
                else None
            ),
            "underruns": t.underruns,
            "concealed": t.concealed,
            "rejected": site.rejected,
            "forged": site.forged,
            "volume": _num(t.volume, 2),
            "muted": t.muted,
            "sink_error": t.sink_error[:200] if t.sink_error else None,
            "clock_step_refused_ms": (
                _num(float(t.clock_step_refused_ms), 1) if isinstance(t.clock_step_refused_ms, int | float) else None
            ),
            "creds_expire_s": t.creds_expire_s if isinstance(t.creds_expire_s, int) else None,
            # each long-haul path (city server) the site is on, up or not: {} for a site on one connection
            "paths": _paths(t.paths),
            "last_seen_s": None,
        }
        old_view = site.view
        old_view["last_seen_s"] = None  # a heartbeat alone is no news to the console; compare the rest
        if view != old_view:
            self._dirty[t.site] = None
        view["last_seen_s"] = round(now_ns / 1e9, 3)
        site.view = view
        return self._set_state(site, state, now_ns, detail)

    def _derive(self, site: _Site, t: Telemetry, now_ns: int) -> tuple[str, str]:
        if t.sink_error:
            return "fault", f"audio output failed: {t.sink_error[:120]}"
        if t.state == "syncing":
            since = site.syncing_since_ns if site.syncing_since_ns is not None else now_ns
            if now_ns - since > self.unsynced_fault_after_ns:
                return "fault", f"not synced for {(now_ns - since) / 1e9:.0f} s"
            return ("muted" if t.muted else "idle"), "syncing"
        if site.sync_fault:
            return "fault", f"sync error {t.sync_error_ms:.1f} ms"
        if t.state == "fallback":
            return "fallback", ""
        if t.state not in ENGINE_STATES:
            return "fault", f"unknown engine state {t.state[:32]!r}"
        if t.muted:
            return "muted", ""
        return t.state, ""

    def _set_state(self, site: _Site, state: str, now_ns: int, detail: str) -> Change | None:
        if state == site.state:
            return None
        old = site.state
        self._counts[old] -= 1
        self._counts[state] += 1
        site.state = state
        site.view["state"] = state
        self._dirty[site.name] = None
        return Change(site.name, old, state, now_ns, detail)

    def tick(self, now_ns: int) -> list[Change]:
        """Sites silent for more than `offline_after_ns` (10 s) go offline."""
        changes: list[Change] = []
        online = self._online
        while online:
            name = next(iter(online))
            site = self._sites[name]
            if site.last_seen_ns is not None and now_ns - site.last_seen_ns <= self.offline_after_ns:
                break
            del online[name]
            silent = (now_ns - site.last_seen_ns) / 1e9 if site.last_seen_ns is not None else 0.0
            change = self._set_state(site, "offline", now_ns, f"no telemetry for {silent:.0f} s")
            if change is not None:
                changes.append(change)
        return changes

    # -- output -----------------------------------------------------------------------------------------------
    def view(self, name: str) -> SiteView:
        """The console's view of one site (a copy). KeyError for a site the fleet does not know."""
        return dict(self._sites[name].view)

    def site(self, name: str) -> SiteView | None:
        site = self._sites.get(name)
        return dict(site.view) if site is not None else None

    def telemetry(self, name: str) -> Telemetry | None:
        site = self._sites.get(name)
        return site.telemetry if site is not None else None

    def names(self) -> list[str]:
        return list(self._sites)

    def snapshot(self) -> list[SiteView]:
        return [dict(s.view) for s in self._sites.values()]

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def totals(self) -> Totals:
        return Totals(**self._totals)

    def dirty(self) -> list[SiteView]:
        """Views changed since the last call (state, levels, counters...; not a bare heartbeat)."""
        sites = self._sites
        out = [dict(sites[n].view) for n in self._dirty if n in sites]
        self._dirty.clear()
        return out

    def sync_errors_ms(self) -> list[float]:
        """Sync error of every site that is online and placed in time, for fleet percentiles."""
        out: list[float] = []
        for name in self._online:
            site = self._sites[name]
            t = site.telemetry
            if t is not None and t.state != "syncing" and math.isfinite(t.sync_error_ms):
                out.append(t.sync_error_ms)
        return out

    def __len__(self) -> int:
        return len(self._sites)

    def __contains__(self, name: object) -> bool:
        return name in self._sites
