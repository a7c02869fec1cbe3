"""`citycast bench-city`: fault drills on the deployed shape, during one address of real speech.

The topology (`citycast.tooling.bench.city_rig`): a hub in JWT mode in "london", two city servers in two
"karachi" namespaces behind two emulated long-haul paths, N site agents enrolled through the hub's API, each
playing into a timed sink that writes what it played. An address of the bundled speech (looped) is started
through the API, then the drills run one after another, each followed by a wait until every site plays in sync:

- `city-kill`: city server A is SIGKILLed (with its nats-server) and started again `--cut-seconds` later;
- `path-cut-one`: long-haul path A is black-holed for `--cut-seconds`;
- `path-cut-both`: both paths, for `--cut-seconds`;
- `hub-restart`: the hub is stopped (SIGTERM, as systemd does) and started again; the operator then starts the
  address again (a hub ends its addresses when it stops, docs/operations.md);
- `site-restart`: one site's agent is SIGKILLed and started again at once.

Per drill, read as an operator would from the hub's API (site telemetry, alerts, recordings): each site's new
underruns and concealed frames; `resync_s`, from the fault's end (path back, process back, address back) until
every site reports playing with a sync error ≤ 1 ms (resolution: the telemetry period, 1 s); `alert_s`, from the
fault to the first alert raised (the alert's own `raised_at`); `recording_lost_s`, the seconds of the drill's
window the recordings hold no audio for (the outage itself counts: compare with `outage_s`). And from what the
sites' DACs played: whether the sites that fell back played the fallback (a chirp every second, indexed by the
broadcast clock) in step, as the spread of each chirp across sites.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import shutil
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from citycast.media.audio import SAMPLE_RATE
from citycast.media.chirp import chirp
from citycast.tooling.bench.analysis import load_trace
from citycast.tooling.bench.city_rig import SPEECH_FILE, CityRig, RigError, write_looped_speech
from citycast.tooling.bench.wan import PROFILES, WanError, get_profile, require_root

DRILLS = ("city-kill", "path-cut-one", "path-cut-both", "hub-restart", "site-restart")
IN_SYNC_MS = 1.0  # the design's "in sync"
FALLBACK_STEP_MS = 1.0  # fallback chirps further apart across sites than this are not "in step"
RESYNC_LIMIT_S = 60.0  # a drill whose sites are not back by then is reported as such (resync_s null)
POLL_S = 0.25


class DrillError(RuntimeError):
    pass


@dataclass
class DrillOptions:
    sites: int = 6
    cut_s: float = 30.0
    drills: tuple[str, ...] = DRILLS
    wan: str = "london-karachi"
    delay_ms: float = 490.0
    settle_s: float = 3.0
    out: Path = Path("citycast-out/bench-city")
    json_out: Path | None = None
    keep_wav: bool = False
    seed: int = 1
    uplinks: int | None = None  # None: both city servers if `citycast site` dials several, else one
    resync_limit_s: float = RESYNC_LIMIT_S
    tcp_rto_min_ms: float | None = None  # TCP's lowest retransmission timeout on the long-haul routes
    time_peer: bool = True  # the second city server's time responder follows the first's
    clock_split: bool = False  # odd sites list city server B first (half the sites on each time responder)

    def check(self) -> None:
        if not 2 <= self.sites <= 60:
            raise DrillError("--sites must be between 2 and 60")
        if not 2 <= self.cut_s <= 600:
            raise DrillError("--cut-seconds must be between 2 and 600")
        unknown = [d for d in self.drills if d not in DRILLS]
        if unknown or not self.drills:
            raise DrillError(f"unknown drill(s) {unknown}; known: {', '.join(DRILLS)}")
        if self.wan not in PROFILES or not get_profile(self.wan).emulated:
            raise DrillError(
                f"--wan must be an emulated profile: {', '.join(p for p in PROFILES if PROFILES[p].emulated)}"
            )
        if not 0 < self.delay_ms < 1900:
            raise DrillError("--delay must be between 0 and 1900 ms")
        if not 5 <= self.resync_limit_s <= 600:
            raise DrillError("--resync-limit must be between 5 and 600 s")
        if self.uplinks not in (None, 1, 2):
            raise DrillError("--uplinks must be 1 or 2")


# -- figures (sans-IO: every time is passed in, wall-clock seconds) ----------------------------------------
@dataclass(frozen=True)
class SiteSample:
    """One site as the console showed it at one poll."""

    state: str
    sync_error_ms: float | None
    last_seen_s: float | None
    underruns: int | None
    concealed: int | None
    channel: int | None = None  # what the site plays (the console's view), for the timeline
    rejected: int | None = None


def in_sync(s: SiteSample, after_s: float) -> bool:
    """Playing, within IN_SYNC_MS, on telemetry the hub received after `after_s`."""
    return (
        s.state == "playing"
        and s.sync_error_ms is not None
        and s.sync_error_ms <= IN_SYNC_MS
        and s.last_seen_s is not None
        and s.last_seen_s >= after_s
    )


def resync_seconds(polls: list[tuple[float, dict[str, SiteSample]]], sites: list[str], back_s: float) -> float | None:
    """Seconds from `back_s` until every site had reported playing in sync on telemetry sent after it: the
    latest, over sites, of the hub's receipt of each site's first such report. None if some site never did."""
    first: dict[str, float] = {}
    for _, view in polls:
        for name in sites:
            s = view.get(name)
            if name not in first and s is not None and in_sync(s, back_s):
                assert s.last_seen_s is not None
                first[name] = s.last_seen_s
    if len(first) < len(sites):
        return None
    return max(0.0, max(first.values()) - back_s)


def counter_delta(before: int | None, after: int | None) -> int:
    """New events of a cumulative counter; a restarted agent starts from zero, so a drop means it restarted."""
    if after is None:
        return 0
    if before is None or after < before:
        return after
    return after - before


def first_alert(
    alerts: list[dict[str, Any]], start_s: float, end_s: float
) -> tuple[float | None, list[dict[str, Any]]]:
    """Alerts raised within [start_s, end_s] (wall seconds) and the delay of the first from `start_s`."""
    raised = []
    for a in alerts:
        at = parse_time(str(a["raised_at"]))
        if start_s <= at <= end_s:
            raised.append({"site": a.get("site"), "kind": a["kind"], "severity": a.get("severity"),
                           "after_s": round(at - start_s, 2)})  # fmt: skip
    raised.sort(key=lambda a: float(a["after_s"]))
    return (float(raised[0]["after_s"]) if raised else None), raised


def parse_time(text: str) -> float:
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def covered_seconds(spans: list[tuple[float, float]], start_s: float, end_s: float) -> float:
    """Seconds of [start_s, end_s] covered by the union of `spans`."""
    total, cursor = 0.0, start_s
    for a, b in sorted(spans):
        a, b = max(a, cursor), min(b, end_s)
        if b > a:
            total += b - a
            cursor = b
    return total


def recording_origin(recording: dict[str, Any]) -> float:
    """When second 0 of a recording the hub lists was played: its first sample's broadcast time, or for one the
    hub has not closed (or a hub from before it kept that) the row's start, which precedes the first frame by
    the ingest's start (up to a second, which the drills counted as recording lost)."""
    return parse_time(str(recording.get("first_sample_at") or recording["started_at"]))


def recording_spans(started_s: float, packets: list[tuple[int, int, int]]) -> list[tuple[float, float]]:
    """Wall-clock spans of real audio in a recording: `packets` are (pts, duration, size) in 48 kHz samples;
    a TOC-only packet (size ≤ 1, what the recorder writes for a hole) is no audio."""
    spans: list[tuple[float, float]] = []
    for pts, dur, size in packets:
        if size <= 1:
            continue
        a = started_s + pts / SAMPLE_RATE
        b = a + dur / SAMPLE_RATE
        if spans and abs(spans[-1][1] - a) < 1e-6:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
    return spans


def fallback_step(heard: dict[str, list[float]], start_s: float, end_s: float) -> dict[str, Any]:
    """From the true times (s) each site played a fallback chirp: which sites fell back within [start_s, end_s]
    and how far apart the same chirp (the same broadcast second) was across them."""
    slots: dict[int, dict[str, float]] = {}
    for site, times in heard.items():
        for t in times:
            if start_s <= t <= end_s:
                slots.setdefault(round(t), {})[site] = t
    sites = sorted({s for got in slots.values() for s in got})
    per_site = {s: sum(1 for got in slots.values() if s in got) for s in sites}
    spreads = [(max(g.values()) - min(g.values())) * 1000 for g in slots.values() if len(g) >= 2]
    worst = max(spreads) if spreads else None
    return {
        "sites": sites,
        # Each fallback chirp is one second of fallback (or of silence, for a site that played none).
        "seconds_by_site": per_site,
        "chirps_compared": len(spreads),
        "spread_max_ms": round(worst, 3) if worst is not None else None,
        "in_step": (worst <= FALLBACK_STEP_MS) if worst is not None else None,
    }


# -- the run ------------------------------------------------------------------------------------------------
@dataclass
class DrillRecord:
    name: str
    fault_s: float  # wall clock
    back_s: float = 0.0  # when the fault ended (path back, process back, address back on air)
    end_s: float = 0.0
    before: dict[str, SiteSample] = field(default_factory=dict)
    after: dict[str, SiteSample] = field(default_factory=dict)
    polls: list[tuple[float, dict[str, SiteSample]]] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)


def write_fallback(path: Path) -> None:
    """One second holding the marker chirp at its start: a site's fallback, looped on the broadcast clock."""
    x = np.zeros(SAMPLE_RATE, np.float32)
    c = chirp()
    x[: c.size] = c
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def site_takes_several_uplinks() -> bool:
    """Whether this `citycast site` dials several city servers (its `--nats` repeatable)."""
    p = subprocess.run([sys.executable, "-m", "citycast", "site", "--help"], capture_output=True, text=True,
                       timeout=60, check=False, env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"})  # fmt: skip
    return any("--nats" in line and "repeat" in line.lower() for line in p.stdout.splitlines())


class Drills:
    def __init__(self, rig: CityRig, opts: DrillOptions, progress: Progress) -> None:
        self.rig = rig
        self.opts = opts
        self.progress = progress
        self.address_ids: list[int] = []
        self.records: list[DrillRecord] = []
        self.fallback = opts.out / "fallback.wav"

    # -- console reads ----------------------------------------------------------------------------------
    def sites_now(self) -> dict[str, SiteSample] | None:
        got = self.rig.get("/api/sites")
        if not isinstance(got, list):
            return None
        return {
            str(s["name"]): SiteSample(
                str(s["state"]),
                s.get("sync_error_ms"),
                s.get("last_seen_s"),
                s.get("underruns"),
                s.get("concealed"),
                s.get("channel"),
                s.get("rejected"),
            )
            for s in got
        }

    def wait(self, what: str, cond: Callable[[], bool], timeout: float, rec: DrillRecord | None = None) -> bool:
        task = self.progress.add_task(what, total=timeout)
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < timeout:
                self.rig.check_alive()
                if rec is not None:
                    view = self.sites_now()
                    if view is not None:
                        rec.polls.append((time.time(), view))
                if cond():
                    return True
                self.progress.update(task, completed=time.monotonic() - t0)
                time.sleep(POLL_S)
            return False
        finally:
            self.progress.update(task, completed=timeout, visible=False)

    def all_playing_in_sync(self, after_s: float) -> bool:
        view = self.sites_now()
        return view is not None and len(view) == self.opts.sites and all(in_sync(s, after_s) for s in view.values())

    def start_address(self) -> None:
        assert self.rig.api is not None
        body = {"title": "bench-city drills", "source": f"file:{SPEECH_FILE}", "zone_ids": [self.rig.zone_id],
                "priority": "live"}  # fmt: skip
        r = self.rig.api.post("/api/addresses", json=body)
        if r.status_code != 201:
            raise DrillError(f"the address did not start: {r.status_code} {r.text}")
        self.address_ids.append(int(r.json()["id"]))

    # -- set-up -----------------------------------------------------------------------------------------
    def setup(self, total_s: float) -> None:
        rig = self.rig
        write_fallback(self.fallback)
        write_looped_speech(self.opts.out / "hub" / "media" / SPEECH_FILE, total_s)
        rig.start_hub()
        rig.make_bundles()
        rig.start_city(0)
        rig.start_city(1)
        rig.enrol_sites()
        for sp in rig.site_procs:
            rig.start_site(sp, self.fallback)
        t0 = time.time()
        view_ok = self.wait("sites enrolled, synced and idle",
                            lambda: self._all_state({"idle"}, t0), 120)  # fmt: skip
        if not view_ok:
            raise DrillError(f"the sites did not report in sync through their city servers; see {rig.work / 'logs'}")
        self.start_address()
        t0 = time.time()
        if not self.wait("address on air at every site", lambda: self.all_playing_in_sync(t0), 60):
            raise DrillError(f"the address did not reach every site in sync; see {rig.work / 'logs'}")
        time.sleep(self.opts.settle_s)

    def _all_state(self, states: set[str], after_s: float) -> bool:
        view = self.sites_now()
        return (
            view is not None
            and len(view) == self.opts.sites
            and all(
                s.state in states
                and s.sync_error_ms is not None
                and s.sync_error_ms <= IN_SYNC_MS
                and (s.last_seen_s or 0) >= after_s
                for s in view.values()
            )
        )

    # -- drills -----------------------------------------------------------------------------------------
    def run(self, name: str) -> DrillRecord:
        rig, cut = self.rig, self.opts.cut_s
        before = self.sites_now() or {}
        rec = DrillRecord(name, fault_s=time.time(), before=before, sites=sorted(before))
        if name == "city-kill":
            rig.kill_city(0)
            self.wait(f"{name}: city server A down", lambda: False, cut, rec)
            rig.start_city(0)
        elif name == "path-cut-one":
            rig.cut(0, True)
            self.wait(f"{name}: path A cut", lambda: False, cut, rec)
            rig.cut(0, False)
        elif name == "path-cut-both":
            rig.cut(0, True)
            rig.cut(1, True)
            self.wait(f"{name}: both paths cut", lambda: False, cut, rec)
            rig.cut(0, False)
            rig.cut(1, False)
        elif name == "hub-restart":
            rig.stop_hub()
            rig.start_hub()
            self.start_address()  # the operator puts the address back on air
        elif name == "site-restart":
            sp = rig.site_procs[0]
            rig.kill_site(sp)
            rig.start_site(sp, self.fallback)
        rec.back_s = time.time()
        self.wait(f"{name}: every site back in sync", lambda: self.all_playing_in_sync(rec.back_s),
                  self.opts.resync_limit_s, rec)  # fmt: skip
        self.wait(f"{name}: settling", lambda: False, self.opts.settle_s, rec)
        rec.end_s = time.time()
        rec.after = self.sites_now() or {}
        self.records.append(rec)
        return rec

    def stop_address(self) -> None:
        assert self.rig.api is not None
        for a in self.address_ids[-1:]:
            self.rig.api.post(f"/api/addresses/{a}/stop")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            recs = self.rig.get("/api/recordings")
            if isinstance(recs, list) and all(
                r.get("ended_at") for r in recs if r.get("address_id") in self.address_ids
            ):
                return
            time.sleep(0.5)

    # -- figures ----------------------------------------------------------------------------------------
    def recording_spans(self) -> list[tuple[float, float]]:
        assert self.rig.api is not None
        spans: list[tuple[float, float]] = []
        for r in self.rig.get("/api/recordings") or []:
            if r.get("address_id") not in self.address_ids:
                continue
            resp = self.rig.api.get(f"/api/recordings/{r['id']}/audio")
            if resp.status_code != 200:
                continue
            with av.open(io.BytesIO(resp.content), mode="r", format="ogg") as c:
                pkts = [(int(p.pts or 0), int(p.duration or 0), p.size) for p in c.demux(c.streams.audio[0])
                        if p.pts is not None]  # fmt: skip
            spans += recording_spans(recording_origin(r), pkts)
        return spans

    def heard(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for w in sorted((self.opts.out / "wav").glob("*.wav")):
            site = w.name.split(".")[0]
            out.setdefault(site, []).extend(t / 1e9 for t in load_trace(w).heard_ns)
        return out

    def collect(self) -> None:
        """What the console holds (alerts, recordings): read while the hub still runs."""
        self.alerts: list[dict[str, Any]] = self.rig.get("/api/alerts?limit=1000") or []
        self.spans = self.recording_spans()
        for rec in self.records:
            timeline = [
                {
                    "t": round(t - rec.fault_s, 2),
                    "sites": {
                        n: [s.state, s.sync_error_ms, s.last_seen_s, s.channel, s.rejected] for n, s in v.items()
                    },
                }
                for t, v in rec.polls
            ]
            (self.opts.out / f"timeline-{rec.name}.json").write_text(json.dumps(timeline))

    def figures(self) -> list[dict[str, Any]]:
        alerts, spans = self.alerts, self.spans
        heard = self.heard()
        out = []
        for rec in self.records:
            sites = rec.sites
            alert_s, raised = first_alert(alerts, rec.fault_s, rec.end_s)
            lost = (rec.end_s - rec.fault_s) - covered_seconds(spans, rec.fault_s, rec.end_s)
            out.append({
                "name": rec.name,
                "outage_s": round(rec.back_s - rec.fault_s, 2),
                "underruns": {s: counter_delta(rec.before[s].underruns if s in rec.before else None,
                                               rec.after[s].underruns if s in rec.after else None) for s in sites},
                "concealed": {s: counter_delta(rec.before[s].concealed if s in rec.before else None,
                                               rec.after[s].concealed if s in rec.after else None) for s in sites},
                "resync_s": _round(resync_seconds(rec.polls, sites, rec.back_s)),
                "recording_lost_s": round(max(0.0, lost), 2),
                "alert_s": alert_s,
                "alerts": raised,
                "fallback": fallback_step(heard, rec.fault_s, rec.back_s),
                "states_seen": sorted({s.state for _, v in rec.polls for s in v.values()}),
            })  # fmt: skip
        return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def run_drills(opts: DrillOptions, console: Console) -> dict[str, Any]:
    opts.check()
    try:
        require_root()
    except WanError as e:
        raise DrillError(str(e)) from e
    if shutil.which("nft") is None:
        raise DrillError("bench-city cuts paths with nftables: install the `nft` command (Debian nftables)")
    if opts.out.exists():
        shutil.rmtree(opts.out)
    opts.out.mkdir(parents=True)
    uplinks = opts.uplinks or (2 if site_takes_several_uplinks() else 1)
    # Enough speech for every drill at its longest (the fault, a resync at the limit, the settling) and set-up.
    total_s = 120 + len(opts.drills) * (opts.cut_s + opts.resync_limit_s + opts.settle_s + 10)
    started = time.time()
    with (
        CityRig(get_profile(opts.wan), opts.sites, opts.out, opts.delay_ms, seed=opts.seed,
                multi_uplink=uplinks == 2, rto_min_ms=opts.tcp_rto_min_ms, time_peer=opts.time_peer,
                clock_split=opts.clock_split) as rig,
        Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as progress,
    ):  # fmt: skip
        drills = Drills(rig, opts, progress)
        try:
            drills.setup(total_s)
            overall = progress.add_task("drills", total=len(opts.drills))
            for name in opts.drills:
                drills.run(name)
                progress.advance(overall)
            drills.stop_address()
            drills.collect()
        except RigError as e:
            raise DrillError(str(e)) from e
        assert rig.fleet is not None
        for sp in rig.site_procs:
            rig.fleet.stop(sp.name, timeout=20)  # the sites' WAVs are complete once they have stopped
        rows = drills.figures()
        emulator = rig.links[0].emulator
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
        "cut_s": opts.cut_s,
        "seconds": round(time.time() - started, 1),
        "load": _load(),
        "drills": rows,
    }
    if opts.json_out is not None:
        opts.json_out.write_text(json.dumps(result, indent=1))
    if not opts.keep_wav:
        shutil.rmtree(opts.out / "wav", ignore_errors=True)
    print_table(result, console)
    return result


def _load() -> list[float]:
    import os

    return [round(x, 2) for x in os.getloadavg()]


def argline(opts: DrillOptions) -> str:
    parts = [
        f"--sites {opts.sites}",
        f"--cut-seconds {opts.cut_s:g}",
        f"--wan {opts.wan}",
        f"--delay {opts.delay_ms:g}",
    ]
    if tuple(opts.drills) != DRILLS:
        parts.append("--drills " + ",".join(opts.drills))
    if opts.resync_limit_s != RESYNC_LIMIT_S:
        parts.append(f"--resync-limit {opts.resync_limit_s:g}")
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
    t = Table(title=f"{result['command']} ({result['emulator']}, {result['uplinks_per_site']} uplink(s) per site)")
    for col in ("drill", "outage s", "underruns", "concealed", "resync s", "recording lost s", "first alert s",
                "alerts", "fallback in step (spread ms)"):  # fmt: skip
        t.add_column(col)
    for d in result["drills"]:
        fb = d["fallback"]
        step = "—" if fb["in_step"] is None else f"{'yes' if fb['in_step'] else 'NO'} ({fb['spread_max_ms']})"
        kinds = sorted({a["kind"] for a in d["alerts"]})
        t.add_row(d["name"], f"{d['outage_s']:.1f}", str(sum(d["underruns"].values())),
                  str(sum(d["concealed"].values())), _fmt(d["resync_s"]), f"{d['recording_lost_s']:.2f}",
                  _fmt(d["alert_s"]), ", ".join(f"{k}×{sum(a['kind'] == k for a in d['alerts'])}" for k in kinds),
                  step)  # fmt: skip
    console.print(t)


def _fmt(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"
