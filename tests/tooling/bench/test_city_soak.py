"""`citycast bench-city --soak-minutes M`: the deployed shape left running. A short real run (the hub in
"london", two city servers behind two emulated long-haul paths, enrolled sites, speech with a marker each second)
must report every process's memory every minute, the sites' counters, the skew from the markers and the
recording against the address; the figure functions are tested alone on hand-made input."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from citycast.media.chirp import chirp
from citycast.tooling.bench.analysis import load_trace
from citycast.tooling.bench.city_soak import (
    Sample,
    SampleLog,
    chirp_clusters,
    counter_rise,
    heard_in_wav,
    make_rows,
    rss_drift,
    rss_trend,
    write_speech_with_markers,
)
from citycast.tooling.markers import detect_markers_in_wav

IS_ROOT = os.geteuid() == 0 and os.path.exists("/dev/net/tun")
MINUTES = 2
SITES = 3
BUDGET_S = 420


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="needs root and /dev/net/tun")
def test_a_short_soak_reports_memory_counters_skew_and_the_recording(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    t0 = time.monotonic()
    bench = subprocess.Popen(
        [sys.executable, "-m", "citycast", "bench-city", "--soak-minutes", str(MINUTES), "--sites", str(SITES),
         "--json", str(out), "--out", str(tmp_path / "work")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        log, _ = bench.communicate(timeout=BUDGET_S)
    except subprocess.TimeoutExpired:
        bench.terminate()  # SIGTERM: the bench deletes its namespaces and stops its processes
        log, _ = bench.communicate(timeout=60)
        pytest.fail(f"bench-city --soak-minutes took more than {BUDGET_S} s:\n{log[-3000:]}")
    assert bench.returncode == 0, log[-3000:]
    assert time.monotonic() - t0 < BUDGET_S
    result = json.loads(out.read_text())
    sites = {f"site-{i:03d}" for i in range(SITES)}
    samples = result["samples"]
    assert len(samples) >= MINUTES + 1  # one at the start, one a minute, one at the end
    for s in samples:
        procs = set(s["rss_mb"])
        # every process of the deployed shape, each with its own memory: the hub and city servers with the
        # nats-server each started
        assert {"hub", "hub/nats-server", "city-0", "city-0/nats-server", "city-1", "city-1/nats-server"} <= procs
        assert sites <= procs
        assert all(5 < mb < 2000 for mb in s["rss_mb"].values()), s["rss_mb"]
        assert set(s["underruns"]) == sites and set(s["concealed"]) == sites
    assert samples[-1]["playing"] == SITES
    rows = result["rows"]
    assert len(rows) == 1 and rows[0]["minute"] == 10
    # A marker a second, heard by every site, each matched with itself across sites (a chirp matched with its
    # neighbour would be ~1000 ms off). The product's 1 ms is the benchmark's figure: a 2-minute run on a
    # loaded 2-core box measures the box as much as the sites.
    assert result["markers_all_sites"] >= MINUTES * 60 - 10
    assert rows[0]["skew_p99_ms"] is not None and 0 < rows[0]["skew_p99_ms"] < 20, rows[0]
    assert rows[0]["sync_error_max_ms"] is not None and rows[0]["sync_error_max_ms"] < 5
    assert isinstance(result["underruns"], int) and isinstance(result["concealed"], int)
    # The recording is read back from the hub and set against the address the hub logged (the target, within
    # 1 s, is the benchmark's business: docs/benchmarks.md).
    rec = result["recording"]
    assert "error" not in rec, rec
    assert MINUTES * 60 - 5 < rec["length_s"] <= result["address_s"] + 1, (rec, result["address_s"])
    assert abs(result["recording_minus_address_s"]) < 5
    assert rec["holes"] == 0
    assert set(result["rss_drift_pct"]) >= {"hub", "city-0"}


def test_the_soak_address_carries_a_marker_every_second_under_the_speech(tmp_path: Path) -> None:
    length = write_speech_with_markers(tmp_path / "soak.opus", 30, tmp_path)
    assert length >= 30
    found = detect_markers_in_wav(tmp_path / "soak.opus")
    assert len(found) == round(length)  # every second's chirp, none from the speech
    gaps = [b - a for a, b in itertools.pairwise(found)]
    assert all(47_990 < g < 49_000 for g in gaps)  # a second apart (a loop's seam adds the encoder's padding)


def _sample(t: float, rss: dict[str, float], under: dict[str, int]) -> Sample:
    return Sample(t, rss, under, dict.fromkeys(under, 0), dict.fromkeys(under, 0.1), len(under))


def test_rows_sum_counter_rises_and_take_the_skew_of_chirps_every_site_heard() -> None:
    start = 1_000 * 10**9
    samples = [
        _sample(0, {"hub": 100, "site-000": 50, "site-001": 52}, {"site-000": 3, "site-001": 0}),
        _sample(300, {"hub": 101, "site-000": 50, "site-001": 52}, {"site-000": 4, "site-001": 0}),
        _sample(600, {"hub": 102, "site-000": 51, "site-001": 52}, {"site-000": 4, "site-001": 2}),
        _sample(900, {"hub": 99, "site-000": 51, "site-001": 53}, {"site-000": 1, "site-001": 2}),  # 000 restarted
    ]
    assert counter_rise(samples, "underruns", 0, 2) == 3
    assert counter_rise(samples, "underruns", 2, 3) == 1
    heard = {
        "site-000": [start + 10 * 10**9, start + 700 * 10**9],
        "site-001": [start + 10 * 10**9 + 300_000, start + 700 * 10**9 + 100_000, start + 800 * 10**9],
    }
    clusters = chirp_clusters(heard)
    assert len(clusters) == 3 and len(clusters[2]) == 1
    rows = make_rows(samples, clusters, ["site-000", "site-001"], start, 600)
    assert [r.minute for r in rows] == [10, 20]
    assert (rows[0].underruns, rows[1].underruns) == (3, 1)
    assert rows[0].skew_p99_ms == pytest.approx(0.3) and rows[0].markers == 1
    assert rows[1].skew_p99_ms == pytest.approx(0.1) and rows[1].markers == 1  # 800 s: one site only
    assert rows[1].rss_mb["sites (max)"] == 53 and rows[1].rss_mb["hub"] == 99
    drift = rss_drift(samples, 300)
    assert drift["hub"] == pytest.approx(1.98, abs=0.01)  # the largest departure from 101 MB: 99


def test_markers_read_a_minute_at_a_time_are_those_of_the_whole_file_across_the_seams(tmp_path: Path) -> None:
    sr = 48_000
    x = np.zeros(sr * 130, np.float32)
    c = chirp()
    for k in range(1, 130):
        x[k * sr - 200 : k * sr - 200 + c.size] += c  # the 60th and 120th straddle a minute's seam
    wav = tmp_path / "site.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((x * 0.8 * 32767).astype("<i2").tobytes())
    (tmp_path / "site.wav.json").write_text(json.dumps({"start_true_ns": 10**18, "sample_rate": sr, "dac_ppm": 50}))
    chunked = heard_in_wav(wav)
    whole = load_trace(wav).heard_ns
    assert len(chunked) == len(whole) == 129
    assert max(abs(a - b) for a, b in zip(sorted(chunked), sorted(whole), strict=True)) < 1.0


def test_every_sample_is_on_disk_the_moment_it_is_taken(tmp_path: Path) -> None:
    log = SampleLog(tmp_path / "samples.jsonl")
    log.append(_sample(60.0, {"hub": 160.0}, {"site-000": 0}))
    first = (tmp_path / "samples.jsonl").read_text().splitlines()
    log.append(_sample(120.0, {"hub": 161.5}, {"site-000": 2}))
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(first) == 1 and lines[0] == first[0] and len(lines) == 2 == len(log)
    assert [Sample(**json.loads(line)) for line in lines] == list(log)


def test_rss_trend_tells_a_leak_from_a_collectors_sawtooth() -> None:
    """A nats-server's heap swings ±10 % between collections without growing: the single samples depart by more
    than 5 %, the 10-minute medians do not. A process that grows 1 % every 10 minutes shows it in both."""
    samples = [
        _sample(60 * m, {"nats": 40 * (1.1 if m % 3 == 0 else 0.95), "leaky": 100 * (1 + 0.001 * m)}, {})
        for m in range(0, 60)
    ]
    drift, trend = rss_drift(samples, 600), rss_trend(samples, 600)
    assert drift["nats"] > 10 and trend["nats"] < 1
    assert trend["leaky"] == pytest.approx(3.94, abs=0.01) and drift["leaky"] == pytest.approx(4.85, abs=0.01)
    assert rss_trend(samples[:15], 600) == {}  # one window after warm-up: nothing to compare
