"""`citycast bench-city --soak-minutes M`: the deployed shape left running, no faults, for as long as an address.

The topology is `citycast.tooling.bench.city_rig`'s (a hub in JWT mode in "london", two city servers behind two
emulated long-haul paths, N enrolled site agents each in its own process, playing into timed sinks). The address
is the bundled speech, looped, with a marker chirp mixed in at the start of every second (speech at -9 dB under
it), so the sites' recordings can be searched for the markers as `citycast bench` does: the spread of one chirp
across all sites is the skew.

Every `--sample-seconds` (60 s) the run takes the RSS of every process (the hub and its nats-server, each city
server and its nats-server, every site agent) and each site's counters as the console shows them (underruns,
concealed frames, sync error). At the end it stops the address, reads the recording back from the hub and
compares its duration with the address's, then finds the markers in every site's WAV. Rows per 10 minutes;
the JSON holds the rows, every per-minute sample and the flatness of each process's memory after warm-up.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
import wave
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from citycast.media.audio import SAMPLE_RATE
from citycast.media.chirp import chirp
from citycast.media.sources import read_audio
from citycast.tooling.bench.analysis import true_time_of_sample
from citycast.tooling.bench.city_drills import (
    IN_SYNC_MS,
    parse_time,
    recording_origin,
    recording_spans,
    site_takes_several_uplinks,
    write_fallback,
)
from citycast.tooling.bench.city_rig import CityRig, RigError
from citycast.tooling.bench.wan import PROFILES, WanError, get_profile, require_root
from citycast.tooling.markers import detect_markers

SOAK_FILE = "speech-markers-loop.opus"
SPEECH_GAIN = 0.35  # the speech under the chirps: loud enough to be speech, quiet enough for the matched filter
CLUSTER_S = 0.2  # chirps heard closer than this across sites are the same chirp (they come a second apart)


class SoakError(RuntimeError):
    pass


@dataclass
class SoakOptions:
    minutes: float = 60.0
    sites: int = 20
    wan: str = "london-karachi"
    delay_ms: float = 490.0
    uplinks: int | None = None
    sample_s: float = 60.0
    row_minutes: float = 10.0
    warmup_minutes: float = 10.0  # RSS flatness is judged against the first sample after this
    out: Path = Path("citycast-out/bench-city-soak")
    json_out: Path | None = None
    keep_wav: bool = False
    seed: int = 1
    tcp_rto_min_ms: float | None = None  # TCP's lowest retransmission timeout on the long-haul routes
    time_peer: bool = True  # the second city server's time responder follows the first's
    clock_split: bool = False  # odd sites list city server B first (half the sites on each time responder)

    def check(self) -> None:
        if not 1 <= self.minutes <= 24 * 60:
            raise SoakError("--soak-minutes must be between 1 and 1440")
        if not 2 <= self.sites <= 60:
            raise SoakError("--sites must be between 2 and 60")
        if not 5 <= self.sample_s <= 600:
            raise SoakError("the sample period must be between 5 and 600 s")
        if self.wan not in PROFILES or not get_profile(self.wan).emulated:
            raise SoakError(
                f"--wan must be an emulated profile: {', '.join(p for p in PROFILES if PROFILES[p].emulated)}"
            )
        if not 0 < self.delay_ms < 1900:
            raise SoakError("--delay must be between 0 and 1900 ms")
        if self.uplinks not in (None, 1, 2):
            raise SoakError("--uplinks must be 1 or 2")


# -- the address: speech with a marker every second ---------------------------------------------------------------


def write_speech_with_markers(out: Path, seconds: float, work: Path) -> float:
    """Looped speech with the marker chirp at the start of every second, as Ogg Opus; returns its length (s).

    One whole number of seconds of speech is encoded once (libopus, 64 kbit/s, 20 ms packets) and remuxed in a
    loop, so encoding costs a second whatever the address's length."""
    from importlib import resources

    speech = read_audio(str(resources.files("citycast") / "assets" / "speech.opus")).astype(np.float32)
    unit_s = max(1, math.ceil(speech.size / SAMPLE_RATE))
    x = np.zeros(unit_s * SAMPLE_RATE, np.float32)
    x[: speech.size] = speech * SPEECH_GAIN
    c = chirp().astype(np.float32)
    for k in range(unit_s):
        x[k * SAMPLE_RATE : k * SAMPLE_RATE + c.size] = c
    unit = work / "speech-markers-unit.opus"
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    with av.open(str(unit), "w", format="ogg") as dst:
        stream = dst.add_stream("libopus", rate=SAMPLE_RATE)
        stream.layout = "mono"
        stream.bit_rate = 64_000
        for i in range(0, pcm.size, 960):
            frame = av.AudioFrame.from_ndarray(pcm[None, i : i + 960], format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = i
            for pkt in stream.encode(frame):
                dst.mux(pkt)
        for pkt in stream.encode(None):
            dst.mux(pkt)
    return _loop(unit, out, seconds)


def _loop(clip: Path, out: Path, seconds: float) -> float:
    """`clip` (Ogg Opus) repeated to last at least `seconds`, remuxed; returns the length in seconds."""
    src = av.open(str(clip))
    try:
        stream = src.streams.audio[0]
        packets = [(bytes(p), int(p.duration or 960)) for p in src.demux(stream) if p.size]
        length = sum(d for _, d in packets)
        loops = max(1, int(seconds * SAMPLE_RATE // length) + 1)
        with av.open(str(out), "w", format="ogg") as dst:
            ostream = dst.add_stream_from_template(stream)
            pts = 0
            for _ in range(loops):
                for data, dur in packets:
                    pkt = av.Packet(data)
                    pkt.pts = pkt.dts = pts
                    pkt.duration = dur
                    pkt.time_base = Fraction(1, SAMPLE_RATE)
                    pkt.stream = ostream
                    dst.mux(pkt)
                    pts += dur
    finally:
        src.close()
    return loops * length / SAMPLE_RATE


# -- figures (sans-IO) --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One look at the running system, `t_s` seconds after the address started."""

    t_s: float
    rss_mb: dict[str, float]  # process → MB
    underruns: dict[str, int]  # site → the console's cumulative counter
    concealed: dict[str, int]
    sync_error_ms: dict[str, float]
    playing: int  # sites the console shows playing


@dataclass
class Row:
    minute: float  # end of the row, minutes into the address
    underruns: int = 0
    concealed: int = 0
    sync_error_max_ms: float | None = None
    playing_min: int = 0
    skew_p99_ms: float | None = None
    markers: int = 0
    rss_mb: dict[str, float] = field(default_factory=dict)  # hub, hub/nats-server, city-*, sites (max of sites)


def rss_roles(rss: dict[str, float]) -> dict[str, float]:
    """Per-process RSS folded for a row: every non-site process by name; the sites' mean and max."""
    out = {k: v for k, v in rss.items() if not k.startswith("site-")}
    sites = [v for k, v in rss.items() if k.startswith("site-")]
    if sites:
        out["sites (mean)"] = float(np.mean(sites))
        out["sites (max)"] = max(sites)
    return out


def counter_rise(samples: list[Sample], attr: str, lo: int, hi: int) -> int:
    """New events of a per-site cumulative counter between sample `lo` and sample `hi` (a drop: a restart)."""
    a, b = getattr(samples[lo], attr), getattr(samples[hi], attr)
    total = 0
    for site, after in b.items():
        before = a.get(site, 0)
        total += after - before if after >= before else after
    return int(total)


def chirp_clusters(heard: dict[str, list[float]]) -> list[dict[str, float]]:
    """Group the true times (ns) each site heard a chirp into one chirp each: times within CLUSTER_S of the
    cluster's first."""
    events = sorted((t, site) for site, times in heard.items() for t in times)
    out: list[dict[str, float]] = []
    start = -math.inf
    for t, site in events:
        if t - start > CLUSTER_S * 1e9:
            out.append({})
            start = t
        out[-1].setdefault(site, t)
    return out


def make_rows(
    samples: list[Sample], clusters: list[dict[str, float]], sites: list[str], started_ns: int, row_s: float
) -> list[Row]:
    """Rows of `row_s` seconds from the per-minute samples and the chirps heard by every site."""
    if not samples:
        return []
    n_rows = max(1, math.ceil(samples[-1].t_s / row_s - 1e-9))
    rows = []
    skews: dict[int, list[float]] = {}
    for c in clusters:
        if len(c) == len(sites) and len(sites) > 1:
            i = int((min(c.values()) - started_ns) / 1e9 // row_s)
            skews.setdefault(min(max(i, 0), n_rows - 1), []).append((max(c.values()) - min(c.values())) / 1e6)
    prev = 0
    for i in range(n_rows):
        idx = [k for k, s in enumerate(samples) if i * row_s < s.t_s <= (i + 1) * row_s + 1e-9]
        row = Row(minute=round((i + 1) * row_s / 60, 2))
        if idx:
            last = idx[-1]
            row.underruns = counter_rise(samples, "underruns", prev, last)
            row.concealed = counter_rise(samples, "concealed", prev, last)
            errs = [e for k in idx for e in samples[k].sync_error_ms.values()]
            row.sync_error_max_ms = max(errs) if errs else None
            row.playing_min = min(samples[k].playing for k in idx)
            row.rss_mb = {k: round(v, 1) for k, v in rss_roles(samples[last].rss_mb).items()}
            prev = last
        got = skews.get(i, [])
        row.markers = len(got)
        row.skew_p99_ms = round(float(np.percentile(got, 99)), 4) if got else None
        rows.append(row)
    return rows


def rss_drift(samples: list[Sample], warmup_s: float) -> dict[str, float]:
    """Per process: the largest departure (%) of its RSS from its first sample after warm-up."""
    after = [s for s in samples if s.t_s >= warmup_s] or samples[-1:]
    if not after:
        return {}
    base = after[0].rss_mb
    out = {}
    for name, mb in base.items():
        seen = [s.rss_mb[name] for s in after if name in s.rss_mb]
        if mb > 0 and seen:
            out[name] = round(max(abs(v - mb) for v in seen) / mb * 100, 2)
    return out


def rss_trend(samples: list[Sample], warmup_s: float, window_s: float = 600.0) -> dict[str, float]:
    """Per process: the largest departure (%) of a later window's median RSS from the first window's after
    warm-up. A leak grows window after window; a garbage collector's sawtooth (a nats-server's Go heap swings by
    a tenth between collections) moves the single samples that `rss_drift` reads, not the windows' medians."""
    after = [s for s in samples if s.t_s >= warmup_s]
    windows: dict[int, list[Sample]] = {}
    for s in after:
        windows.setdefault(int((s.t_s - warmup_s) // window_s), []).append(s)
    if len(windows) < 2:
        return {}
    ordered = [windows[k] for k in sorted(windows)]
    out = {}
    for name in ordered[0][0].rss_mb:
        medians = [float(np.median(got)) for w in ordered if (got := [s.rss_mb[name] for s in w if name in s.rss_mb])]
        if len(medians) >= 2 and medians[0] > 0:
            out[name] = round(max(abs(m - medians[0]) for m in medians[1:]) / medians[0] * 100, 2)
    return out


# -- the run ------------------------------------------------------------------------------------------------------


def heard_in_wav(path: Path, chunk_s: float = 60.0) -> list[float]:
    """True times (ns) of every marker a timed sink's WAV holds, read a minute at a time: an hour's WAV is
    345 MB of samples, and the detector works in float64."""
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    core = round(chunk_s * SAMPLE_RATE)
    overlap = SAMPLE_RATE  # far longer than a chirp: one that starts in a chunk's core ends inside its overlap
    out: list[float] = []
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise SoakError(f"{path}: not the timed sink's 16-bit mono WAV")
        total = w.getnframes()
        for start in range(0, total, core):
            w.setpos(start)
            raw = w.readframes(min(core + overlap, total - start))
            x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
            out.extend(true_time_of_sample(meta, start + p) for p in detect_markers(x) if p < core)
    return out


def process_rss(rig: CityRig) -> dict[str, float]:
    """RSS (MB) of every process of the rig: each member, and each child it started (a nats-server)."""
    assert rig.fleet is not None
    out: dict[str, float] = {}
    for m in rig.fleet.members:
        try:
            p = psutil.Process(m.pid)
            out[m.role] = p.memory_info().rss / 2**20
            for child in p.children(recursive=True):
                key = f"{m.role}/{child.name()}"
                out[key] = out.get(key, 0.0) + child.memory_info().rss / 2**20
        except psutil.Error:
            continue
    return out


def take_sample(rig: CityRig, t_s: float) -> Sample:
    got = rig.get("/api/sites")
    sites = got if isinstance(got, list) else []
    return Sample(
        t_s=round(t_s, 1),
        rss_mb={k: round(v, 2) for k, v in process_rss(rig).items()},
        underruns={str(s["name"]): int(s.get("underruns") or 0) for s in sites},
        concealed={str(s["name"]): int(s.get("concealed") or 0) for s in sites},
        sync_error_ms={str(s["name"]): float(s["sync_error_ms"]) for s in sites if s.get("sync_error_ms") is not None},
        playing=sum(1 for s in sites if s.get("state") == "playing"),
    )


def wait_until(rig: CityRig, cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rig.check_alive()
        if cond():
            return True
        time.sleep(0.5)
    return False


def all_sites(rig: CityRig, states: set[str], after_s: float, count: int) -> bool:
    got = rig.get("/api/sites")
    return (
        isinstance(got, list)
        and len(got) == count
        and all(
            s.get("state") in states
            and s.get("sync_error_ms") is not None
            and float(s["sync_error_ms"]) <= IN_SYNC_MS
            and float(s.get("last_seen_s") or 0) >= after_s
            for s in got
        )
    )


def recording_figures(rig: CityRig, address_id: int) -> dict[str, Any]:
    """The address's recording as the hub serves it: its length and how much of it is real audio."""
    assert rig.api is not None
    for r in rig.get("/api/recordings") or []:
        if r.get("address_id") != address_id:
            continue
        resp = rig.api.get(f"/api/recordings/{r['id']}/audio", timeout=120)
        if resp.status_code != 200:
            return {"error": f"audio: HTTP {resp.status_code}"}
        with av.open(io.BytesIO(resp.content), mode="r", format="ogg") as c:
            pkts = [(int(p.pts or 0), int(p.duration or 0), p.size) for p in c.demux(c.streams.audio[0])
                    if p.pts is not None]  # fmt: skip
        length = max((pts + dur for pts, dur, _ in pkts), default=0) / SAMPLE_RATE
        spans = recording_spans(recording_origin(r), pkts)
        return {
            "started_at": r.get("started_at"),
            "first_sample_at": r.get("first_sample_at"),
            "ended_at": r.get("ended_at"),
            "length_s": round(length, 3),
            "audio_s": round(sum(b - a for a, b in spans), 3),
            "holes": max(0, len(spans) - 1),
        }
    return {"error": "no recording of the address"}


class SampleLog(list[Sample]):
    """The samples of a run, each also appended to a JSON-lines file the moment it is taken: an hour-long run that
    is stopped (its shell gone, the machine rebooted) keeps every minute it measured."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def append(self, sample: Sample) -> None:
        super().append(sample)
        with self.path.open("a") as f:
            f.write(json.dumps(asdict(sample)) + "\n")


def run_city_soak(opts: SoakOptions, console: Console) -> dict[str, Any]:
    opts.check()
    try:
        require_root()
    except WanError as e:
        raise SoakError(str(e)) from e
    if opts.out.exists():
        shutil.rmtree(opts.out)
    opts.out.mkdir(parents=True)
    uplinks = opts.uplinks or (2 if site_takes_several_uplinks() else 1)
    load_start = [round(x, 2) for x in os.getloadavg()]
    started = time.time()
    samples = SampleLog(opts.out / "samples.jsonl")
    with (
        CityRig(get_profile(opts.wan), opts.sites, opts.out, opts.delay_ms, seed=opts.seed,
                multi_uplink=uplinks == 2, rto_min_ms=opts.tcp_rto_min_ms, time_peer=opts.time_peer,
                clock_split=opts.clock_split) as rig,
        Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as progress,
    ):  # fmt: skip
        try:
            fallback = opts.out / "fallback.wav"
            write_fallback(fallback)
            (opts.out / "hub" / "media").mkdir(parents=True, exist_ok=True)
            file_s = write_speech_with_markers(opts.out / "hub" / "media" / SOAK_FILE, opts.minutes * 60 + 120,
                                               opts.out)  # fmt: skip
            task = progress.add_task("hub, city servers, sites enrolled and in sync", total=None)
            rig.start_hub()
            rig.make_bundles()
            rig.start_city(0)
            rig.start_city(1)
            rig.enrol_sites()
            for sp in rig.site_procs:
                rig.start_site(sp, fallback)
            t0 = time.time()
            if not wait_until(rig, lambda: all_sites(rig, {"idle"}, t0, opts.sites), 180):
                raise SoakError(f"the sites did not report in sync; see {opts.out / 'logs'}")
            progress.update(task, visible=False)
            assert rig.api is not None
            body = {"title": "bench-city soak", "source": f"file:{SOAK_FILE}", "zone_ids": [rig.zone_id],
                    "priority": "live"}  # fmt: skip
            r = rig.api.post("/api/addresses", json=body)
            if r.status_code != 201:
                raise SoakError(f"the address did not start: {r.status_code} {r.text}")
            address_id = int(r.json()["id"])
            address_started = time.time()
            t1 = time.time()
            if not wait_until(rig, lambda: all_sites(rig, {"playing"}, t1, opts.sites), 90):
                raise SoakError(f"the address did not reach every site in sync; see {opts.out / 'logs'}")
            samples.append(take_sample(rig, time.time() - address_started))
            task = progress.add_task(f"soak: {opts.minutes:g} min, a sample every {opts.sample_s:g} s",
                                     total=opts.minutes * 60)  # fmt: skip
            end = address_started + opts.minutes * 60
            next_sample = address_started + opts.sample_s
            while time.time() < end:
                rig.check_alive()
                time.sleep(min(1.0, max(0.0, end - time.time())))
                now = time.time()
                if now >= next_sample:
                    samples.append(take_sample(rig, now - address_started))
                    next_sample += opts.sample_s
                progress.update(task, completed=now - address_started)
            samples.append(take_sample(rig, time.time() - address_started))
            r = rig.api.post(f"/api/addresses/{address_id}/stop")
            address_stopped = time.time()
            hub_view: dict[str, Any] = r.json() if r.status_code == 200 else {}
            wait_until(rig, lambda: _recording_closed(rig, address_id), 60)
            recording = recording_figures(rig, address_id)
        except RigError as e:
            raise SoakError(str(e)) from e
        assert rig.fleet is not None
        for sp in rig.site_procs:
            rig.fleet.stop(sp.name, timeout=30)  # the WAVs are complete once their sites have stopped
        emulator = rig.links[0].emulator
        site_names = [sp.name for sp in rig.site_procs]
    heard: dict[str, list[float]] = {}
    for w in sorted((opts.out / "wav").glob("*.wav")):
        heard.setdefault(w.name.split(".")[0], []).extend(heard_in_wav(w))
    clusters = chirp_clusters(heard)
    rows = make_rows(samples, clusters, site_names, round(address_started * 1e9), opts.row_minutes * 60)
    # The address as the hub logged it (started when the API took it, ended when it was stopped); our own
    # wall-clock span around the two API calls is kept beside it.
    address_s = address_stopped - address_started
    if hub_view.get("started_at") and hub_view.get("ended_at"):
        address_s = parse_time(str(hub_view["ended_at"])) - parse_time(str(hub_view["started_at"]))
    length = recording.get("length_s")
    result: dict[str, Any] = {
        "command": argline(opts),
        "wan": opts.wan,
        "emulator": emulator,
        "delay_ms": opts.delay_ms,
        "tcp_rto_min_ms": opts.tcp_rto_min_ms,
        "time_peer": opts.time_peer,
        "clock_split": opts.clock_split,
        "sites": opts.sites,
        "uplinks_per_site": uplinks,
        "minutes": opts.minutes,
        "speech_file_s": round(file_s, 1),
        "load_start": load_start,
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.time() - started, 1),
        "address_s": round(address_s, 3),
        "address_wall_s": round(address_stopped - address_started, 3),
        "recording": recording,
        "recording_minus_address_s": round(length - address_s, 3) if isinstance(length, float) else None,
        "underruns": sum(r.underruns for r in rows),
        "concealed": sum(r.concealed for r in rows),
        "markers_all_sites": sum(1 for c in clusters if len(c) == len(site_names)),
        "rss_drift_pct": rss_drift(samples, opts.warmup_minutes * 60),
        "rss_trend_pct": rss_trend(samples, opts.warmup_minutes * 60),
        "rows": [asdict(r) for r in rows],
        "samples": [asdict(s) for s in samples],
    }
    if opts.json_out is not None:
        opts.json_out.write_text(json.dumps(result, indent=1))
    if not opts.keep_wav:
        shutil.rmtree(opts.out / "wav", ignore_errors=True)
    print_table(result, console)
    return result


def _recording_closed(rig: CityRig, address_id: int) -> bool:
    recs = rig.get("/api/recordings")
    return isinstance(recs, list) and any(r.get("address_id") == address_id and r.get("ended_at") for r in recs)


def argline(opts: SoakOptions) -> str:
    parts = [f"--soak-minutes {opts.minutes:g}", f"--sites {opts.sites}", f"--wan {opts.wan}",
             f"--delay {opts.delay_ms:g}"]  # fmt: skip
    if opts.uplinks is not None:
        parts.append(f"--uplinks {opts.uplinks}")
    if opts.tcp_rto_min_ms is not None:
        parts.append(f"--tcp-rto-min {opts.tcp_rto_min_ms:g}")
    if not opts.time_peer:
        parts.append("--no-time-peer")
    if opts.clock_split:
        parts.append("--clock-split")
    return "citycast bench-city " + " ".join(parts)


def print_table(result: dict[str, Any], console: Console) -> None:
    rows = result["rows"]
    procs = sorted({k for r in rows for k in r["rss_mb"]} - {"sites (mean)"})
    t = Table(title=f"{result['command']} ({result['emulator']}, {result['uplinks_per_site']} uplink(s) per site): "
                    "per 10 minutes")  # fmt: skip
    for col in ("min", "under", "conceal", "sync ms", "skew p99", "markers", *[_short(p) for p in procs]):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(f"{r['minute']:g}", str(r["underruns"]), str(r["concealed"]), _fmt(r["sync_error_max_ms"]),
                  _fmt(r["skew_p99_ms"]), str(r["markers"]),
                  *[_fmt(r["rss_mb"].get(p), 0) for p in procs])  # fmt: skip
    console.print(t)
    rec = result["recording"]
    console.print(
        f"address {result['address_s']:.1f} s, recording {rec.get('length_s')} s "
        f"({rec.get('audio_s')} s of audio, {rec.get('holes')} holes): recording − address "
        f"{result['recording_minus_address_s']} s; RSS drift after warm-up (max %): "
        + _by_process(result["rss_drift_pct"])
    )
    trend = result.get("rss_trend_pct") or {}
    if trend:
        console.print("RSS trend (10-minute medians against the first after warm-up, max %): " + _by_process(trend))


def _by_process(pct: dict[str, float]) -> str:
    """Each shared process's figure, then the sites' worst."""
    shared = ", ".join(f"{k} {v}" for k, v in sorted(pct.items()) if not k.startswith("site-"))
    return shared + f", sites ≤ {max((v for k, v in pct.items() if k.startswith('site-')), default=0)}"


def _short(process: str) -> str:
    """A column label for a process's RSS (MB): "city-0/nats-server" → "city-0 nats MB"."""
    return process.replace("/nats-server", " nats").replace("sites (max)", "site max") + " MB"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"
