"""Sites straight on the hub across the emulated long haul (`citycast bench --wan london-karachi --topology
direct`): real processes in two network namespaces, the hub's NATS and time service in "london", full site
agents in "karachi", every time exchange and frame crossing the WAN emulator (70 ± 10 ms each way, 1 % loss).

After the warm-up no site may be in fault on the console (its reported sync error judged by the hub's own
`FleetState`) and none may refuse a frame. Before issue 10 every such site reported the path's asymmetry bound
(≈ 61 ms) as its sync error, so the console showed the whole city in fault while it played."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from citycast.hub.fleet import FleetState
from citycast.protocol.telemetry import Telemetry
from citycast.tooling.bench.analysis import analyse, load_trace
from citycast.tooling.bench.runner import marker_period_s

IS_ROOT = os.geteuid() == 0 and os.path.exists("/dev/net/tun")


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not IS_ROOT, reason="needs root and /dev/net/tun")
def test_sites_straight_on_the_hub_are_not_in_fault_and_reject_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    work = tmp_path / "work"
    p = subprocess.run(
        [sys.executable, "-m", "citycast", "bench", "--sites", "3", "--seconds", "20", "--warmup", "60",
         "--wan", "london-karachi", "--topology", "direct", "--keep-wav", "--json", str(out), "--out", str(work)],
        capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    f = json.loads(out.read_text())
    assert f["topology"] == "direct" and f["wan"] == "london-karachi"
    assert f["sites"] == 3 and f["markers"] >= 19
    assert f["rejected"] == 0

    reports = [r for fn in sorted((work / "wav").glob("*.results.json")) for r in json.loads(fn.read_text())]
    assert len(reports) == 3
    fleet = FleetState()
    now = 1_000_000_000
    for r in reports:
        t = Telemetry(**r["telemetry"])
        assert t.state != "syncing"
        assert t.rejected == {}
        # the path's asymmetry bound is reported, and apart: half the ≥ 120 ms round trip
        assert 55 < t.clock_asymmetry_ms < 75
        # what the site says of itself is small and the hub reads it so: not a fault
        assert t.sync_error_ms < 2.0
        fleet.on_telemetry(t, now)
        assert fleet.view(t.site)["state"] != "fault", fleet.view(t.site)
    assert fleet.counts()["fault"] == 0
    # and true: the loudspeakers play within a couple of ms of each other (a city server's run gives < 1 ms)
    assert f["skew_ms"]["p99"] < 2.0, _why_apart(f, work, reports)


def _why_apart(f: dict[str, Any], work: Path, reports: list[dict[str, Any]]) -> str:
    """What a skew failure needs to be understood: which site, which markers, and what its clock and its playout
    did. (CI saw 48 ms once: an echo of a chirp from Opus's concealment taken for the marker, since fixed in
    `analysis.analyse`; the JSON's `marker_echoes` counts such echoes.)"""
    traces = [load_trace(w) for w in sorted((work / "wav").glob("*.wav"))]
    period = marker_period_s(float(f["delay_ms"]))
    sync = analyse(
        traces, ts0_ns=int(f["ingest"]["ts0_ns"]), period_ns=int(period * 1e9), markers_sent=int(f["seconds"] / period)
    )
    lines = [f"skew {f['skew_ms']}, missing {f['missing_markers']}, echoes {f.get('marker_echoes')}"]
    for name, offs in sync.offsets_by_site_ms.items():
        lines.append(f"{name} offsets (ms): {[round(x, 2) for x in offs]}")
    for r in reports:
        t = r["telemetry"]
        keys = ("resyncs", "underruns", "concealed", "late", "sink_xruns", "clock_error_ms", "clock_drift_ppm")
        lines.append(f"{r['name']}: { ({k: t.get(k) for k in keys}) } clock {r.get('clock')}")
    return "\n".join(lines)
