"""From what the sites' DACs played to latency and skew, measured on the true clock.

Each timed sink writes a WAV and a sidecar giving the true instant its first sample reached the DAC and the
DAC's rate. A marker found at sample i of a site's WAV was therefore heard at a known true time; the marker left
the speaker's "mouth" at its broadcast timestamp. Latency is the difference; skew is how far apart the sites
heard the same marker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from citycast.tooling.markers import detect_markers_in_wav


@dataclass
class SiteTrace:
    name: str
    heard_ns: list[float]  # true times at which markers were heard


def true_time_of_sample(meta: dict[str, float], i: float) -> float:
    return float(meta["start_true_ns"]) + i * 1e9 / (float(meta["sample_rate"]) * (1 + float(meta["dac_ppm"]) * 1e-6))


def load_trace(wav: Path) -> SiteTrace:
    meta = json.loads(wav.with_name(wav.name + ".json").read_text())
    positions = detect_markers_in_wav(wav)
    return SiteTrace(wav.stem, [true_time_of_sample(meta, p) for p in positions])


def pct(values: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "max": max(values) if values else float("nan")}


@dataclass
class SyncFigures:
    sites: int
    markers_sent: int
    latency_ms: dict[str, float]
    skew_ms: dict[str, float]
    per_site_deviation_ms: dict[str, float]
    missing: dict[str, int] = field(default_factory=dict)
    max_abs_deviation_by_site_ms: dict[str, float] = field(default_factory=dict)
    # Signed offset from the median of all sites, per marker every site heard, in ms, per site.
    offsets_by_site_ms: dict[str, list[float]] = field(default_factory=dict)
    # The sites' median latency per marker heard, in order: how the whole fleet moved against true time.
    latency_by_marker_ms: list[float] = field(default_factory=list)
    # Later detections in a marker's period, per site: echoes of the chirp from Opus's concealment of lost frames.
    echoes: dict[str, int] = field(default_factory=dict)


def analyse(
    traces: list[SiteTrace], *, ts0_ns: int, period_ns: int, markers_sent: int, skip_first: int = 1
) -> SyncFigures:
    """Pair each heard marker with the one sent just before it (latency must stay below one period).

    Of two detections in one period at a site the first is the marker: when the frames right after a chirp are
    lost, Opus's concealment repeats the chirp's last pitch periods, and that echo (28–55 ms later in a test of
    the codec) matches the chirp too. Taking the later one put a site 48 ms off once in CI; the echoes are
    counted apart.

    `skip_first` markers are left out: the first seconds are the sites' clock sync converging, which the
    playout then slews away; a user hears them, so the per-run report states the skip.
    """
    heard: dict[int, dict[str, float]] = {}
    echoes: dict[str, int] = {}
    for tr in traces:
        for t in sorted(tr.heard_ns):
            k = int((t - ts0_ns) // period_ns)
            if k < skip_first or k >= markers_sent:
                continue
            got = heard.setdefault(k, {})
            if tr.name in got:
                echoes[tr.name] = echoes.get(tr.name, 0) + 1
            else:
                got[tr.name] = t
    latencies: list[float] = []
    skews: list[float] = []
    deviations: list[float] = []
    by_site: dict[str, float] = {}
    offsets: dict[str, list[float]] = {}
    by_marker: list[float] = []
    missing = {tr.name: 0 for tr in traces}
    for k in range(skip_first, markers_sent):
        got = heard.get(k, {})
        for tr in traces:
            if tr.name not in got:
                missing[tr.name] += 1
        if not got:
            continue
        sent = ts0_ns + k * period_ns
        latencies.extend((t - sent) / 1e6 for t in got.values())
        by_marker.append(round(float(np.median([(t - sent) / 1e6 for t in got.values()])), 4))
        if len(got) == len(traces) and len(traces) > 1:
            times = np.array(list(got.values()))
            skews.append(float(times.max() - times.min()) / 1e6)
            med = float(np.median(times))
            for name, t in got.items():
                signed = (t - med) / 1e6
                offsets.setdefault(name, []).append(signed)
                d = abs(signed)
                deviations.append(d)
                by_site[name] = max(by_site.get(name, 0.0), d)
    return SyncFigures(
        sites=len(traces),
        markers_sent=markers_sent - skip_first,
        latency_ms=summary(latencies),
        skew_ms=summary(skews),
        per_site_deviation_ms=summary(deviations),
        missing={k: v for k, v in missing.items() if v},
        max_abs_deviation_by_site_ms=by_site,
        offsets_by_site_ms=offsets,
        latency_by_marker_ms=by_marker,
        echoes=echoes,
    )
