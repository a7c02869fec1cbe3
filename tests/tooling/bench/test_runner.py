"""`citycast bench` end to end, tiny: real processes, real NATS, figures in the promised JSON shape.
The tight numbers are the benchmark's job (docs/benchmarks.md), not this test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_runs_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    p = subprocess.run(
        [sys.executable, "-m", "citycast", "bench", "--sites", "2", "--seconds", "6", "--warmup", "2",
         "--probe-sites", "5", "--json", str(out), "--out", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    f = json.loads(out.read_text())
    for key in ("sites", "seconds", "underruns", "concealed", "rejected"):
        assert key in f
    for key in ("latency_ms", "skew_ms", "probe_delivery_ms"):
        assert set(f[key]) >= {"p50", "p99", "max"}
    assert set(f["cpu_percent"]) >= {"nats", "ingest", "sites", "hub"}
    assert set(f["rss_mb"]) >= {"nats", "ingest", "sites", "hub"}
    assert f["sites"] == 2 and f["markers"] == 5
    assert not f["missing_markers"]
    assert f["rejected"] == 0
    assert 80 < f["latency_ms"]["p50"] < 100  # D = 80 ms plus the codec's look-ahead
    assert f["probe_received"] > 0 and f["probe_gaps"] == 0
    assert not (tmp_path / "work" / "wav").exists()  # WAVs are removed unless --keep-wav


def test_bench_refuses_an_unknown_wan_profile(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "citycast", "bench", "--wan", "mars", "--out", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 2
    assert "unknown --wan" in p.stderr
