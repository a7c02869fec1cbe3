"""`citycast bench-sip`: the telephone's figures, every process real and separate.

1. Mouth-to-loudspeaker latency of a phone call: a hub (`citycast serve --sip`, its own process), N enrolled site
   agents in the PIN's zone (one process, each with its own wrong clock and drifting DAC into a timed sink, like
   `citycast simulate`), and a caller: sipp places the call and types the PIN as SIP INFO digits, and this module's
   own RTP sender streams G.711 A-law carrying a marker chirp every period. sipp's pcap play cannot be used for the
   media: it runs in a thread of its own, paced from the `exec` action, and logs no send time, so where a chirp
   left would be known to a few ms at best. Our sender reads the true clock just before each `sendto`, and each
   chirp starts exactly on a packet's first sample. Latency = the true time a site's DAC played the chirp (the
   timed sink's sidecar) − the time its packet left the caller.
2. Calls per second: sipp UAC load (INVITE → 180 → 200 → ACK → pause → BYE, no PIN: what the SIP side itself
   costs) at increasing rates, each step bounded in calls and time, until sipp reports a failed call; the hub's
   CPU (by pid) per step.

With `wan` set to a profile of `citycast.tooling.bench.wan`, the caller runs in the "london" namespace and the hub
with its sites in "karachi", joined by the emulated link (needs root). Workers (sites, caller) are this module run as
`python -m citycast.tooling.bench.sip_bench ROLE CONFIG.json`, so they can be started inside a namespace.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import csv
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil

from citycast.bus.server import free_port
from citycast.media.audio import SAMPLE_RATE
from citycast.media.chirp import chirp
from citycast.tooling.bench.analysis import load_trace, summary
from citycast.tooling.bench.fleet import Fleet, citycast_argv
from citycast.tooling.bench.wan import WanError, WanLink, get_profile, ns_command, require_root

PCMA_PT = 8
RTP_RATE = 8000
PACKET_SAMPLES = 160  # 20 ms at 8 kHz
PACKET_S = PACKET_SAMPLES / RTP_RATE
DECIMATE = SAMPLE_RATE // RTP_RATE
LEAD_S = 5.0  # RTP before the first marker: answer, PIN, on air, the sites switching to the call's channel
MAX_CALLS_NOTE = "the telephone refuses calls beyond MAX_CALLS concurrent ones with 486 Busy Here"


class SipBenchError(RuntimeError):
    pass


def scenario_path(name: str) -> Path:
    return Path(str(resources.files("citycast.tooling.bench.sip_scenarios").joinpath(name)))


# -- figures --------------------------------------------------------------------------------------------------
@dataclass
class LatencyFigures:
    sites: int
    markers_sent: int
    markers_heard: int  # (site, marker) pairs found in what the DACs played
    missing: dict[str, int]  # per site: markers it never played
    latency_ms: dict[str, float]  # p50 / p99 / max over every (site, marker)
    skew_ms: dict[str, float]  # per marker heard by every site: latest − earliest
    send_jitter_ms: float  # how late the sender's worst packet left against its 20 ms schedule


@dataclass
class CpsStep:
    rate: float  # calls per second asked of sipp
    calls: int
    successful: int
    failed: int
    failure_kinds: dict[str, int]
    invite_to_180_ms: dict[str, float]  # p50 / p99 / max (sipp's rtd 1, 1 ms resolution: 0 = under 1 ms)
    ringing_to_200_ms: dict[str, float]  # rtd 2: the telephone's ring time (0.5 s in `serve`) and the answer
    hub_cpu_percent: float  # of one core, over the step
    seconds: float


@dataclass
class CpsFigures:
    steps: list[CpsStep]
    max_rate_without_failure: float | None
    pause_ms: int
    note: str = MAX_CALLS_NOTE


@dataclass
class SipBenchResult:
    wan: str
    delay_ms: float
    latency: LatencyFigures | None
    cps: CpsFigures | None
    hub_rss_mb: float
    command: str = ""
    notes: list[str] = field(default_factory=list)
    emulator: str = "none"  # the WAN emulator that ran: netem, relay (no netem in the kernel), none (loopback)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SipBenchOptions:
    sites: int = 20
    markers: int = 20
    period_s: float = 1.0
    wan: str = "none"
    delay_ms: float | None = None
    rates: tuple[float, ...] = (10.0, 20.0, 40.0, 80.0)
    step_s: float = 6.0
    pause_ms: int = 500
    latency: bool = True
    cps: bool = True
    seed: int = 1
    out: Path | None = None
    keep: bool = False

    def check(self) -> None:
        if not 1 <= self.sites <= 200:
            raise SipBenchError("--sites must be between 1 and 200")
        if not 2 <= self.markers <= 600:
            raise SipBenchError("--markers must be between 2 and 600")
        if not 0.2 <= self.period_s <= 10 or round(self.period_s / PACKET_S) * PACKET_S != self.period_s:
            raise SipBenchError("--period must be a multiple of 20 ms between 0.2 and 10 s")
        if any(not 0 < r <= 1000 for r in self.rates) or list(self.rates) != sorted(self.rates):
            raise SipBenchError("rate steps must be increasing, each between 0 and 1000 calls/s")
        if not 1 <= self.step_s <= 30:
            raise SipBenchError("--step-seconds must be between 1 and 30")
        if not 0 <= self.pause_ms <= 10_000:
            raise SipBenchError("--pause-ms must be between 0 and 10000")
        if self.delay_ms is not None and not 0 < self.delay_ms < 1900:
            raise SipBenchError("--delay must be between 0 and 1900 ms")


def default_delay_ms(wan: str) -> float:
    # The caller's side of the WAN is before ingest: D covers only the hub → site hop, which is local here.
    return 80.0


# -- the caller's signal --------------------------------------------------------------------------------------
def alaw_encode(x: npt.ArrayLike) -> bytes:
    """G.711 A-law (ITU-T G.711, even bits inverted) of float samples in [-1, 1]."""
    v = np.clip(np.round(np.asarray(x, dtype=np.float64) * 32767.0), -32768, 32767).astype(np.int32) >> 3
    negative = v < 0
    mag = np.where(negative, -v - 1, v)  # 12-bit magnitude
    seg = np.zeros(mag.shape, np.int32)
    for bound in (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF):
        seg += mag > bound
    mantissa = np.where(seg < 2, mag >> 1, mag >> np.maximum(seg, 1)) & 0x0F
    code = np.where(mag > 0xFFF, 0x7F, (seg << 4) | mantissa)
    out = np.where(negative, code ^ 0x55, code ^ 0xD5).astype(np.uint8)
    return out.tobytes()


def marker_period_8k(period_s: float) -> npt.NDArray[np.float64]:
    """One period at 8 kHz: the marker chirp from sample 0, then silence.

    Band-limited below 4 kHz in the frequency domain (zero phase: the chirp's start does not move) before taking
    every 6th sample, so its first sample is the first sample of the first packet."""
    n48 = round(period_s * SAMPLE_RATE)
    x = np.zeros(n48)
    c = chirp().astype(np.float64)
    x[: c.size] = c
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(n48, 1 / SAMPLE_RATE)
    # A raised-cosine edge from 3.4 to 3.9 kHz instead of a brick wall: less ringing before the chirp's start.
    edge = np.clip((freqs - 3400.0) / 500.0, 0.0, 1.0)
    spectrum *= 0.5 + 0.5 * np.cos(np.pi * edge)
    y: npt.NDArray[np.float64] = np.fft.irfft(spectrum, n48)[::DECIMATE]
    return y


def rtp_packet(seq: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | PCMA_PT, seq & 0xFFFF, timestamp & 0xFFFFFFFF,
                       ssrc) + payload  # fmt: skip


def send_markers(
    sock: socket.socket, dest: tuple[str, int], *, lead_s: float, markers: int, period_s: float, tail_s: float = 1.5
) -> tuple[list[int], float]:
    """Stream PCMA at a 20 ms pace: `lead_s` of silence, `markers` chirps `period_s` apart, `tail_s` of silence.

    Returns the true time (ns) each chirp's packet was handed to the kernel, and the worst lateness (ms) of any
    packet against the schedule."""
    period = marker_period_8k(period_s)
    per_period = period.size // PACKET_SAMPLES
    chirp_payloads = [alaw_encode(period[i * PACKET_SAMPLES : (i + 1) * PACKET_SAMPLES]) for i in range(per_period)]
    silence = alaw_encode(np.zeros(PACKET_SAMPLES))
    lead = round(lead_s / PACKET_S)
    total = lead + markers * per_period + round(tail_s / PACKET_S)
    ssrc = secrets.randbits(32)
    seq0, ts0 = secrets.randbits(16), secrets.randbits(32)
    sent: list[int] = []
    worst = 0.0
    start = time.monotonic()
    for i in range(total):
        due = start + i * PACKET_S
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        k = i - lead
        payload = chirp_payloads[k % per_period] if 0 <= k < markers * per_period else silence
        pkt = rtp_packet(seq0 + i, ts0 + i * PACKET_SAMPLES, ssrc, payload, marker=i == 0)
        worst = max(worst, (time.monotonic() - due) * 1000)
        now_ns = time.time_ns()
        with contextlib.suppress(OSError):  # ICMP unreachable from an earlier packet: keep the pace
            sock.sendto(pkt, dest)
        if 0 <= k < markers * per_period and k % per_period == 0:
            sent.append(now_ns)
    return sent, worst


# -- analysis -------------------------------------------------------------------------------------------------
def pair_markers(
    heard: dict[str, list[float]], sent_ns: list[int], period_s: float
) -> tuple[list[float], list[float], dict[str, int], int]:
    """(latencies ms, skews ms, missing per site, pairs): each heard marker goes with the last one sent before it,
    if less than a period earlier (latency must stay below one period). Of two in one period the first is the
    marker, the later an echo of it from Opus's concealment of lost frames (`analysis.analyse`)."""
    period_ns = period_s * 1e9
    by_marker: dict[int, dict[str, float]] = {}
    for site, times in heard.items():
        for t in sorted(times):
            k = bisect.bisect_right(sent_ns, t) - 1
            if k >= 0 and t - sent_ns[k] < period_ns:
                by_marker.setdefault(k, {}).setdefault(site, t)
    latencies = [(t - sent_ns[k]) / 1e6 for k, got in by_marker.items() for t in got.values()]
    skews = [
        (max(got.values()) - min(got.values())) / 1e6
        for got in by_marker.values()
        if len(got) == len(heard) and len(heard) > 1
    ]
    missing = {s: sum(1 for k in range(len(sent_ns)) if s not in by_marker.get(k, {})) for s in heard}
    return latencies, skews, {s: n for s, n in missing.items() if n}, len(latencies)


# -- workers --------------------------------------------------------------------------------------------------
async def _sites_worker(cfg: dict[str, Any]) -> None:
    """In the hub's namespace: zone, sites, enrolment, the PIN, then N agents into timed sinks until told to stop."""
    import httpx

    from citycast.media.sinks import TimedSink
    from citycast.site.agent import SiteAgent
    from citycast.site.enrol import enrol
    from citycast.site.run import SiteOptions, build_site
    from citycast.tooling.sim.simulate import plan_sites

    base, out = str(cfg["http"]), Path(cfg["out"])
    password_file = Path(cfg["admin_password_file"])
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=base, timeout=30) as api:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await api.get("/api/health")).status_code == 200 and password_file.exists():
                    break
            if time.monotonic() > deadline:
                raise SipBenchError("the hub did not answer /api/health in 60 s")
            await asyncio.sleep(0.2)
        r = await api.post("/api/login", json={"username": "admin", "password": password_file.read_text().strip()})
        r.raise_for_status()
        api.headers["Authorization"] = f"Bearer {r.json()['token']}"
        r = await api.post("/api/zones", json={"name": "bench-sip", "channel": 7})
        r.raise_for_status()
        zone = r.json()["id"]
        r = await api.post("/api/pins", json={"label": "bench caller", "pin": cfg["pin"], "zone_ids": [zone]})
        r.raise_for_status()
        plan = plan_sites(int(cfg["sites"]), seed=int(cfg["seed"]), prefix="sip-site")
        creds = []
        for i, s in enumerate(plan):
            body = {"name": s.name, "lat": 24.86 + i * 1e-3, "lon": 67.02, "zone_id": zone}
            r = await api.post("/api/sites", json=body)
            r.raise_for_status()
            path = out / f"{s.name}.json"
            creds.append((await enrol(base, r.json()["enrol_token"], path), path))
    agents: list[SiteAgent] = []
    for s, (cred, path) in zip(plan, creds, strict=True):
        opts = SiteOptions(name=s.name, nats_url="", trust=Path("/nonexistent"), sink="timed", credentials=cred,
                           credentials_path=path, sim_clock_offset_ms=s.clock.offset_ns / 1e6,
                           sim_clock_ppm=s.clock.ppm)  # fmt: skip
        agent = build_site(opts)
        agent.sink = TimedSink(agent.clock, dac_ppm=s.dac_ppm, block=480, wav_path=out / f"{s.name}.wav")
        await agent.start()
        agents.append(agent)
    try:
        deadline = time.monotonic() + 60
        while not all(a.broadcast_now() is not None for a in agents):
            if time.monotonic() > deadline:
                raise SipBenchError("the sites did not sync their clocks in 60 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)  # the drift fit settles before anyone measures
        Path(cfg["ready"]).write_text("ready\n")
        stop = Path(cfg["stop"])
        deadline = time.monotonic() + float(cfg["max_s"])
        while not stop.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        results = [{"name": p.name, "dac_ppm": p.dac_ppm, "telemetry": json.loads(a.telemetry().to_json())}
                   for p, a in zip(plan, agents, strict=False)]  # fmt: skip
        (out / "sites.results.json").write_text(json.dumps(results, indent=1))
        await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)


def _caller_worker(cfg: dict[str, Any]) -> None:
    """In the caller's namespace: sipp places the call and types the PIN; we stream the markers."""
    work = Path(cfg["work"])
    port_file = work / "hub_rtp_port.txt"
    port_file.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((cfg["local_ip"], 0))
    rtp_port = sock.getsockname()[1]
    hold_ms = round((LEAD_S + int(cfg["markers"]) * float(cfg["period_s"]) + 3.0) * 1000)
    pin = str(cfg["pin"])
    argv = ["sipp", f"{cfg['hub_ip']}:{cfg['sip_port']}", "-sf", str(scenario_path("latency_call.xml")),
            "-s", "citycast", "-i", cfg["local_ip"], "-p", str(cfg["sipp_port"]), "-t", "u1", "-m", "1", "-l", "1",
            "-d", str(hold_ms), "-key", "rtp_port", str(rtp_port), "-timeout", f"{hold_ms // 1000 + 30}s",
            "-timeout_error", "-nostdin", "-trace_err", "-error_file", str(work / "latency-sipp.err")]  # fmt: skip
    for i, d in enumerate(pin):
        argv += ["-key", f"pin_{i}", d]
    with open(work / "latency-sipp.log", "wb") as log:
        sipp = subprocess.Popen(argv, cwd=work, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip().isdigit()):
            if sipp.poll() is not None or time.monotonic() > deadline:
                raise SipBenchError("the call was not answered; see " + str(work / "latency-sipp.log"))
            time.sleep(0.01)
        dest = (str(cfg["hub_ip"]), int(port_file.read_text().strip()))
        sent, worst = send_markers(sock, dest, lead_s=LEAD_S, markers=int(cfg["markers"]),
                                   period_s=float(cfg["period_s"]))  # fmt: skip
        code = sipp.wait(timeout=hold_ms / 1000 + 30)
    finally:
        if sipp.poll() is None:
            sipp.kill()
            sipp.wait()
        sock.close()
    Path(cfg["report"]).write_text(json.dumps({"sent_ns": sent, "worst_send_lateness_ms": worst, "sipp_rc": code}))


# -- calls per second -----------------------------------------------------------------------------------------
def _rtd_ms(text: str) -> float:
    h, m, s, us = (int(p) for p in text.split(":"))
    return ((h * 60 + m) * 60 + s) * 1000 + us / 1000


def parse_sipp_stats(stat_csv: Path) -> dict[str, str]:
    """The last row of sipp's `-trace_stat` file, by column name."""
    rows = list(csv.reader(stat_csv.read_text(errors="replace").splitlines(), delimiter=";"))
    if len(rows) < 2:
        raise SipBenchError(f"sipp wrote no statistics to {stat_csv}")
    return dict(zip(rows[0], rows[-1], strict=False))


def parse_sipp_rtt(rtt_csv: Path | None, rtd: int) -> list[float]:
    """Response times (ms) of `rtd` from sipp's `-trace_rtt` file (date_ms;response_time_ms;rtd_no)."""
    if rtt_csv is None or not rtt_csv.exists():
        return []
    out = []
    for row in csv.reader(rtt_csv.read_text(errors="replace").splitlines()[1:], delimiter=";"):
        if len(row) >= 3 and row[2].strip() == str(rtd):
            with contextlib.suppress(ValueError):
                out.append(float(row[1]))
    return out


def _cps_step(
    rate: float, opts: SipBenchOptions, target: str, local_ip: str, prefix: list[str], hub_pid: int, work: Path
) -> CpsStep:
    step = work / f"cps-{rate:g}"
    step.mkdir()
    calls = max(1, round(rate * opts.step_s))
    limit_s = opts.step_s + opts.pause_ms / 1000 + 20
    argv = ["sipp", target, "-sf", str(scenario_path("cps_call.xml")), "-s", "citycast", "-i", local_ip,
            "-p", str(free_port()), "-t", "u1", "-r", f"{rate:g}", "-m", str(calls), "-d", str(opts.pause_ms),
            "-key", "rtp_port", "9", "-timeout", f"{limit_s:.0f}s", "-timeout_error", "-nostdin",
            "-recv_timeout", "10000", "-trace_stat", "-stf", str(step / "stat.csv"), "-fd", "1",
            "-trace_rtt", "-rtt_freq", "1", "-trace_err", "-error_file", str(step / "errors.log")]  # fmt: skip
    proc = psutil.Process(hub_pid)
    c0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
    with open(step / "sipp.log", "wb") as log:
        try:
            subprocess.run([*prefix, *argv], cwd=step, stdout=log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=limit_s + 15, check=False)  # fmt: skip
        except subprocess.TimeoutExpired as e:
            raise SipBenchError(f"sipp at {rate:g} calls/s did not finish in {limit_s + 15:.0f} s") from e
    c1, t1 = sum(proc.cpu_times()[:2]), time.monotonic()
    stats = parse_sipp_stats(step / "stat.csv")
    kinds = {
        k.removesuffix("(C)"): int(v)
        for k, v in stats.items()
        if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)" and v.strip().isdigit() and int(v)
    }
    rtt = next(iter(step.glob("*_rtt.csv")), None)
    return CpsStep(
        rate=rate,
        calls=int(stats.get("OutgoingCall(C)", "0") or 0),
        successful=int(stats.get("SuccessfulCall(C)", "0") or 0),
        failed=int(stats.get("FailedCall(C)", "0") or 0),
        failure_kinds=kinds,
        invite_to_180_ms=summary(parse_sipp_rtt(rtt, 1)),
        ringing_to_200_ms=summary(parse_sipp_rtt(rtt, 2)),
        hub_cpu_percent=round(100 * (c1 - c0) / max(1e-9, t1 - t0), 1),
        seconds=round(t1 - t0, 2),
    )


# -- the run --------------------------------------------------------------------------------------------------
def _worker_argv(role: str, cfg: dict[str, Any], path: Path) -> list[str]:
    path.write_text(json.dumps(cfg))
    return [sys.executable, "-m", "citycast.tooling.bench.sip_bench", role, str(path)]


def _wait_file(path: Path, fleet: Fleet, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        bad = fleet.failed()
        if bad:
            raise SipBenchError(f"{bad[0].name} exited with an error:\n{fleet.log_tail(bad[0], 25)}")
        if time.monotonic() > deadline:
            raise SipBenchError(f"{what} in {timeout:.0f} s; see {fleet.workdir}")
        time.sleep(0.1)


def run_sip_bench(opts: SipBenchOptions) -> SipBenchResult:
    """Run the benchmark (blocking; minutes); raises SipBenchError with the reason if a part cannot run."""
    opts.check()
    if shutil.which("sipp") is None:
        raise SipBenchError("sipp is not installed (Debian package sip-tester)")
    try:
        profile = get_profile(opts.wan)
    except WanError as e:
        raise SipBenchError(str(e)) from e
    work = opts.out if opts.out is not None else Path(tempfile.mkdtemp(prefix="citycast-sipbench-"))
    if opts.out is not None:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            link: WanLink | None = None
            if profile.emulated:
                try:
                    require_root()
                except WanError as e:
                    raise SipBenchError(str(e)) from e
                link = stack.enter_context(WanLink(profile, seed=opts.seed))
            fleet = stack.enter_context(Fleet(work / "logs"))
            return _run(opts, profile.name, link, fleet, work)
        raise AssertionError("unreachable")
    finally:
        if opts.out is None and not opts.keep:
            shutil.rmtree(work, ignore_errors=True)


def _run(opts: SipBenchOptions, wan: str, link: WanLink | None, fleet: Fleet, work: Path) -> SipBenchResult:
    delay_ms = opts.delay_ms if opts.delay_ms is not None else default_delay_ms(wan)
    if link is None:
        hub_prefix: list[str] = []
        caller_prefix: list[str] = []
        hub_ip = caller_ip = "127.0.0.1"
        sip_port, http_port, nats_port = free_port(), free_port(), free_port()
    else:
        hub_prefix, caller_prefix = ns_command(link.east_ns, []), ns_command(link.west_ns, [])
        hub_ip, caller_ip = link.east_ip, link.west_ip
        sip_port, http_port, nats_port = 5060, 8000, 4222  # each namespace has its own ports
    rtp_lo = max(10_000, min(free_port(), 60_000)) & ~1
    data = work / "hub"
    hub = fleet.spawn(
        "hub", "hub",
        citycast_argv("serve", "--data-dir", str(data), "--listen", f"127.0.0.1:{nats_port}",
                      "--http", f"127.0.0.1:{http_port}", "--https", "off", "--sip", f"{hub_ip}:{sip_port}",
                      "--rtp-ports", f"{rtp_lo}-{rtp_lo + 999}", "--delay-ms", f"{delay_ms:g}"),
        hub_prefix,
    )  # fmt: skip
    notes: list[str] = []
    pin = f"{secrets.randbelow(10**6):06d}"
    latency: LatencyFigures | None = None
    if opts.latency:
        latency = _latency(opts, fleet, work, hub_prefix, caller_prefix, hub_ip, caller_ip, sip_port, http_port, pin)
    else:
        _wait_health(fleet, work, hub_prefix, http_port)
    cps: CpsFigures | None = None
    if opts.cps:
        steps: list[CpsStep] = []
        t_start = time.monotonic()
        for rate in opts.rates:
            if time.monotonic() - t_start > 120:
                notes.append(f"calls-per-second steps stopped before {rate:g}/s: 2 minutes used")
                break
            s = _cps_step(rate, opts, f"{hub_ip}:{sip_port}", caller_ip, caller_prefix, hub.pid, work)
            steps.append(s)
            if s.failed or s.successful < s.calls:
                break
            time.sleep(opts.pause_ms / 1000 + 1.5)  # the step's calls are over before the next begins
        ok = [s.rate for s in steps if not s.failed and s.successful == s.calls]
        cps = CpsFigures(steps, max(ok) if ok else None, opts.pause_ms)
        if steps and not steps[-1].failed and steps[-1].rate == opts.rates[-1]:
            notes.append(f"no step failed: the telephone accepts at least {opts.rates[-1]:g} calls/s")
    fleet.sample()
    rss = hub.peak_rss_mb()
    emulator = link.emulator if link is not None else "none"
    return SipBenchResult(wan, delay_ms, latency, cps, round(rss, 1), _argline(opts), notes, emulator)


def _wait_health(fleet: Fleet, work: Path, prefix: list[str], http_port: int) -> None:
    # In a namespace the bench process cannot reach the hub: ask from inside it.
    url = f"http://127.0.0.1:{http_port}/api/health"
    probe = (
        f"import httpx, sys\ntry:\n sys.exit(httpx.get({url!r}).status_code != 200)\n"
        "except httpx.HTTPError:\n sys.exit(1)"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if fleet.failed():
            raise SipBenchError("the hub exited:\n" + fleet.log_tail(fleet.failed()[0], 25))
        r = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, check=False, timeout=20)
        if r.returncode == 0:
            return
        time.sleep(0.5)
    raise SipBenchError(f"the hub did not start in 60 s; see {work / 'logs'}")


def _latency(
    opts: SipBenchOptions,
    fleet: Fleet,
    work: Path,
    hub_prefix: list[str],
    caller_prefix: list[str],
    hub_ip: str,
    caller_ip: str,
    sip_port: int,
    http_port: int,
    pin: str,
) -> LatencyFigures:
    sites_dir = work / "sites"
    sites_dir.mkdir()
    ready, stop = work / "sites.ready", work / "sites.stop"
    call_s = LEAD_S + opts.markers * opts.period_s + 10
    cfg = {"http": f"http://127.0.0.1:{http_port}", "admin_password_file": str(work / "hub" / "initial-admin-password"),
           "sites": opts.sites, "seed": opts.seed, "pin": pin, "out": str(sites_dir), "ready": str(ready),
           "stop": str(stop), "max_s": 120 + call_s}  # fmt: skip
    sites = fleet.spawn("sites", "sites", _worker_argv("sites", cfg, work / "sites.cfg.json"), hub_prefix)
    _wait_file(ready, fleet, 120 + opts.sites * 2, "the sites did not enrol and sync")
    report = work / "caller.json"
    caller_cfg = {"work": str(work), "local_ip": caller_ip, "hub_ip": hub_ip, "sip_port": sip_port,
                  "sipp_port": free_port(), "pin": pin, "markers": opts.markers, "period_s": opts.period_s,
                  "report": str(report)}  # fmt: skip
    fleet.spawn("caller", "caller", _worker_argv("caller", caller_cfg, work / "caller.cfg.json"), caller_prefix)
    _wait_file(report, fleet, call_s + 60, "the call did not finish")
    time.sleep(1.5)  # the last marker reaches every DAC
    stop.write_text("stop\n")
    if sites.popen is not None:
        try:
            sites.popen.wait(timeout=60)
        except subprocess.TimeoutExpired as e:
            raise SipBenchError("the sites did not stop") from e
    caller = json.loads(report.read_text())
    if caller["sipp_rc"] != 0:
        raise SipBenchError(f"sipp's call failed (exit {caller['sipp_rc']}); see {work / 'latency-sipp.log'}")
    heard = {w.stem: load_trace(w).heard_ns for w in sorted(sites_dir.glob("*.wav"))}
    if len(heard) != opts.sites:
        raise SipBenchError(f"{len(heard)} of {opts.sites} sites wrote what they played")
    sent = [int(t) for t in caller["sent_ns"]]
    lat, skew, missing, pairs = pair_markers(heard, sent, opts.period_s)

    def r(d: dict[str, float]) -> dict[str, float]:
        return {k: round(v, 3) for k, v in d.items()}

    return LatencyFigures(opts.sites, len(sent), pairs, missing, r(summary(lat)), r(summary(skew)),
                          round(float(caller["worst_send_lateness_ms"]), 3))  # fmt: skip


def _argline(opts: SipBenchOptions) -> str:
    parts = [f"--sites {opts.sites}", f"--markers {opts.markers}", f"--wan {opts.wan}",
             "--rates " + ",".join(f"{r:g}" for r in opts.rates), f"--step-seconds {opts.step_s:g}",
             f"--pause-ms {opts.pause_ms}"]  # fmt: skip
    if opts.period_s != 1.0:
        parts.append(f"--period {opts.period_s:g}")
    if opts.delay_ms is not None:
        parts.append(f"--delay {opts.delay_ms:g}")
    return "citycast bench-sip " + " ".join(parts)


def _worker_main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("sites", "caller"):
        print("usage: python -m citycast.tooling.bench.sip_bench {sites|caller} CONFIG.json", file=sys.stderr)
        return 2
    cfg = json.loads(Path(argv[1]).read_text())
    if argv[0] == "sites":
        asyncio.run(_sites_worker(cfg))
    else:
        _caller_worker(cfg)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(_worker_main(sys.argv[1:]))
