"""`citycast bench-sip`: the caller's G.711 signal is right, marker pairing is right, and a tiny real run (a hub
process with --sip, 3 enrolled sites, sipp placing a PIN call with our RTP markers, then 2 sipp load steps) gives
sane figures."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from citycast.tooling.bench.sip_bench import (
    PACKET_SAMPLES,
    SipBenchError,
    SipBenchOptions,
    alaw_encode,
    marker_period_8k,
    pair_markers,
    run_sip_bench,
    scenario_path,
)
from citycast.tooling.markers import detect_markers


def _alaw_decode(data: bytes) -> np.ndarray:
    ctx = av.CodecContext.create("pcm_alaw", "r")
    ctx.sample_rate = 8000
    ctx.layout = "mono"
    ctx.open()
    frames = ctx.decode(av.Packet(data))
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float64) / 32768


def test_alaw_encoding_matches_ffmpegs_decoder() -> None:
    x = np.linspace(-1, 1, 4001)
    y = _alaw_decode(alaw_encode(x))
    assert y.size == x.size
    # A-law's step is 1/64 of full scale at the top and ~1/4096 near zero.
    assert np.max(np.abs(y - x)) <= 1 / 64 + 1e-9
    small = np.abs(x) < 0.01
    assert np.max(np.abs(y - x)[small]) < 1 / 2048


def test_the_marker_starts_on_the_first_sample_of_a_packet() -> None:
    period = marker_period_8k(1.0)
    assert period.size == 8000 and period.size % PACKET_SAMPLES == 0
    # Upsampled back to 48 kHz (zero-phase), the detector finds the chirp at the period's first sample.
    spectrum = np.fft.rfft(_alaw_decode(alaw_encode(np.tile(period, 3))))
    up = np.fft.irfft(spectrum, 3 * 48000) * 6
    found = detect_markers(up)
    assert len(found) == 3
    for k, pos in enumerate(found):
        assert abs(pos - k * 48000) < 0.5  # well under a 48 kHz sample (21 µs)
    assert np.max(np.abs(period[-PACKET_SAMPLES:])) < 1e-3  # nothing of the chirp leaks before its packet


def test_pairing_heard_markers_with_sent_ones() -> None:
    sent = [1_000_000_000 * k for k in range(1, 5)]
    heard = {
        "a": [sent[0] + 100e6, sent[1] + 101e6, sent[3] + 99e6],
        "b": [sent[0] + 102e6, sent[1] + 100e6, sent[3] + 100e6, 0.5e9],  # 0.5 s: before any marker, ignored
    }
    lat, skew, missing, pairs = pair_markers(heard, sent, 1.0)
    assert pairs == 6
    assert sorted(round(v) for v in lat) == [99, 100, 100, 100, 101, 102]
    assert sorted(round(v) for v in skew) == [1, 1, 2]
    assert missing == {"a": 1, "b": 1}
    # an echo of a marker (Opus concealment after lost frames) 42 ms after it, listed first or not: not the marker
    heard["a"] = [sent[1] + 143e6, *heard["a"]]
    assert sorted(round(v) for v in pair_markers(heard, sent, 1.0)[1]) == [1, 1, 2]


def test_bad_options_are_refused_clearly() -> None:
    with pytest.raises(SipBenchError, match="--sites"):
        run_sip_bench(SipBenchOptions(sites=0))
    with pytest.raises(SipBenchError, match="multiple of 20 ms"):
        run_sip_bench(SipBenchOptions(period_s=1.01))
    with pytest.raises(SipBenchError, match="increasing"):
        run_sip_bench(SipBenchOptions(rates=(20.0, 10.0)))
    with pytest.raises(SipBenchError, match="unknown WAN profile"):
        run_sip_bench(SipBenchOptions(wan="mars"))


def test_scenarios_ship_with_the_package() -> None:
    for name in ("cps_call.xml", "latency_call.xml"):
        assert scenario_path(name).is_file()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed")
def test_a_tiny_run_gives_sane_figures(tmp_path: Path) -> None:
    opts = SipBenchOptions(sites=3, markers=4, rates=(5.0, 10.0), step_s=3, out=tmp_path / "run")
    result = run_sip_bench(opts)
    d = result.as_dict()
    assert d["wan"] == "none" and d["delay_ms"] == 80.0
    lat = result.latency
    assert lat is not None
    # Every site played every marker, once each.
    assert lat.sites == 3 and lat.markers_sent == 4
    assert lat.markers_heard == 12 and lat.missing == {}
    # Mouth to loudspeaker is at least the playout delay D, and well under the one-second pairing window.
    assert 80.0 <= lat.latency_ms["p50"] <= lat.latency_ms["p99"] <= lat.latency_ms["max"] < 1000.0
    assert 0.0 <= lat.skew_ms["p50"] <= lat.skew_ms["max"] < 5.0  # every site plays the same sample together
    cps = result.cps
    assert cps is not None and [s.rate for s in cps.steps] == [5.0, 10.0]
    for step in cps.steps:
        assert step.calls == round(step.rate * 3)
        assert step.successful + step.failed == step.calls
        assert step.hub_cpu_percent > 0.0 and step.seconds > 0.0
        assert not math.isnan(step.ringing_to_200_ms["p50"])
        # `serve` rings for 0.5 s before it answers. Slack: uvloop arms timers from the loop's cached time (a busy
        # iteration makes the sleep end a few ms early in real time) and sipp reads a millisecond clock per loop;
        # one CI run measured 496 ms.
        assert step.ringing_to_200_ms["p50"] >= 450.0
    assert cps.max_rate_without_failure in (None, 5.0, 10.0)
    if all(s.failed == 0 for s in cps.steps):
        assert cps.max_rate_without_failure == 10.0
    assert result.hub_rss_mb > 0
    assert d["command"].startswith("citycast bench-sip --sites 3")
