"""`bench` run again and again: the largest fleet that plays cleanly (`--capacity`), and the smallest CPU budget
a site still plays on (`--cpu-quota`).

Capacity: for each N, the benchmark three times in a row with N full sites and no snapclient, then three times
with N snapclients and no site; a size passes when every run has 0 underruns (for a snapclient: what its own
log reports, see `snapcast`). The answer is the largest N that passes with every smaller N passing too.

CPU quota: each site process (and each snapclient) in a cgroup of its own that allows it `Q` % of one core
(`cpu_quota.CpuQuota`); a quota passes when the sites play every marker with 0 underruns and 0 timed-sink xruns
(a block rendered after its DAC instant: on a real sound card a glitch). The floor is the smallest quota that
passes with every larger one passing too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.table import Table

from citycast.tooling.bench.runner import BenchOptions

Figures = dict[str, Any]  # the JSON object `run_bench` returns


def site_plays_cleanly(f: Figures) -> bool:
    return f["underruns"] == 0 and f["sink_xruns"] == 0 and not f["missing_markers"]


def snapclient_plays_cleanly(f: Figures) -> bool:
    # Its file player has no DAC clock, so a stall shows in its log (a gap or a hard re-sync), not in the file.
    return (
        f.get("snapclient_underruns") == 0
        and f.get("snapclient_hard_syncs") == 0
        and f.get("snapclient_missing_markers") == 0
    )


def floor(results: list[tuple[float, bool]]) -> float | None:
    """The smallest value that passes with every larger one passing too (None when the largest fails)."""
    best = None
    for value, ok in sorted(results, reverse=True):
        if not ok:
            break
        best = value
    return best


def run_capacity(
    base: BenchOptions, sizes: list[int], runs: int, console: Console, bench: Callable[[BenchOptions, Console], Figures]
) -> Figures:
    """`bench --capacity N1,N2,... --runs R`: the largest N clean in R runs in a row (see `site_plays_cleanly`,
    `snapclient_plays_cleanly`), for full sites and for snapclients (each kind unless its count is 0); stops growing
    N for a kind at its first failing size."""
    table = Table(title=f"capacity: {runs} runs in a row per size")
    cols = ("kind", "N", "run", "underruns", "late blocks / re-syncs", "missing markers", "CPU per client (%)", "clean")
    for col in cols:
        table.add_column(col)
    out: Figures = {"runs": runs, "sizes": sorted(sizes)}
    # --sites 0 or --snapclients 0 leaves that kind out (the other's three runs may be all the time there is)
    kinds = (["citycast"] if base.sites else []) + (["snapclient"] if base.snapclients else [])
    for kind in kinds:
        highest = 0
        tried: list[Figures] = []
        for n in sorted(sizes):
            passed = True
            for r in range(runs):
                opts = replace(
                    base,
                    sites=n if kind == "citycast" else 0,
                    snapclients=n if kind == "snapclient" else 0,
                    out=base.out / f"{kind}-{n}-run{r + 1}",
                    json_out=None,
                )
                console.rule(f"capacity: {n} {kind} clients, run {r + 1} of {runs}")
                f = bench(opts, console)
                ok = site_plays_cleanly(f) if kind == "citycast" else snapclient_plays_cleanly(f)
                # glitches: a site's blocks rendered after their DAC instant, a snapclient's hard re-syncs
                if kind == "citycast":
                    counts = {
                        "underruns": f["underruns"],
                        "glitches": f["sink_xruns"],
                        "missing": len(f["missing_markers"]),
                        "cpu": f["site_cpu_percent_per_site"],
                    }
                else:
                    counts = {
                        "underruns": f["snapclient_underruns"],
                        "glitches": f["snapclient_hard_syncs"],
                        "missing": f["snapclient_missing_markers"],
                        "cpu": f["snapclient_cpu_percent"],
                    }
                tried.append({"n": n, "run": r + 1, **counts, "ok": ok})
                table.add_row(kind, str(n), str(r + 1), str(counts["underruns"]), str(counts["glitches"]),
                              str(counts["missing"]), f"{float(counts['cpu']):.3f}", "yes" if ok else "NO")  # fmt: skip
                if not ok:
                    passed = False
                    break
            if not passed:
                break
            highest = n
        out[kind] = {"highest_clean_n": highest, "runs_tried": tried}
    console.print(table)
    console.print(
        "highest N clean in every run (no underrun, late block or re-sync, or missing marker): "
        + ", ".join(f"{k} {out[k]['highest_clean_n']}" for k in kinds)
    )
    return out


def run_quota_sweep(
    base: BenchOptions, quotas: list[float], console: Console, bench: Callable[[BenchOptions, Console], Figures]
) -> Figures:
    """`bench --cpu-quota Q1,Q2,...`: the benchmark once per quota, largest first; the floor is the smallest
    quota at which the sites (and, if any, the snapclients) still play cleanly."""
    table = Table(title="one site process per cgroup, CPU quota in % of one core")
    for col in ("quota", "underruns", "sink xruns", "missing", "CPU used", "throttled periods", "clean"):
        table.add_column(col)
    snap_table = Table(title="snapclients under the same quota")
    for col in ("quota", "underruns", "hard re-syncs", "missing", "CPU used", "clean"):
        snap_table.add_column(col)
    sites: list[tuple[float, bool]] = []
    snaps: list[tuple[float, bool]] = []
    rows: list[Figures] = []
    for q in sorted(quotas, reverse=True):
        console.rule(f"CPU quota {q:g} % of a core")
        f = bench(replace(base, cpu_quota=q, out=base.out / f"quota-{q:g}", json_out=None), console)
        ok = site_plays_cleanly(f)
        sites.append((q, ok))
        throttled = sum(int(s["throttled_periods"]) for s in f["cpu_quota_throttled"].values())
        per_site = float(f["site_cpu_percent_per_site"] or 0.0)
        table.add_row(f"{q:g} %", str(f["underruns"]), str(f["sink_xruns"]), str(len(f["missing_markers"])),
                      f"{per_site:.2f} %", str(throttled), "yes" if ok else "NO")  # fmt: skip
        row: Figures = {"quota_percent": q, "clean": ok, "underruns": f["underruns"], "sink_xruns": f["sink_xruns"],
                        "missing_markers": f["missing_markers"], "site_cpu_percent": per_site,
                        "throttled": f["cpu_quota_throttled"]}  # fmt: skip
        if f.get("snapclients"):
            snap_ok = snapclient_plays_cleanly(f)
            snaps.append((q, snap_ok))
            snap = {k: f[f"snapclient_{k}"] for k in ("underruns", "hard_syncs", "missing_markers", "cpu_percent")}
            snap_table.add_row(f"{q:g} %", str(snap["underruns"]), str(snap["hard_syncs"]),
                               str(snap["missing_markers"]), f"{float(snap['cpu_percent']):.2f} %",
                               "yes" if snap_ok else "NO")  # fmt: skip
            row.update({f"snapclient_{k}": v for k, v in snap.items()}, snapclient_clean=snap_ok)
        rows.append(row)
    console.print(table)
    if snaps:
        console.print(snap_table)
    out: Figures = {"quotas": rows, "site_floor_percent": floor(sites)}
    console.print(f"floor: a site plays cleanly down to {_pct(floor(sites))}")
    if snaps:
        out["snapclient_floor_percent"] = floor(snaps)
        console.print(f"floor: a snapclient plays cleanly down to {_pct(floor(snaps))}")
    return out


def _pct(q: float | None) -> str:
    return "none of the quotas tried" if q is None else f"{q:g} % of one core"
